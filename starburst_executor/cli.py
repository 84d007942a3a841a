"""The ``starburst`` command: thin commands over the public API.

Exit codes: 0 success, 1 a library error (printed as one line), 2 bad usage.
``--debug`` prints tracebacks; ``--json`` prints machine-readable output.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from .errors import StarburstError

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def _print(data: Any, as_json: bool, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if as_json else text)


def _cmd_local(args: argparse.Namespace) -> int:
    from .store.local_server import LocalServer

    server = LocalServer()
    if args.action == "start":
        info = server.ensure_running()
        data = {"running": True, "pid": info.pid, "endpoint_url": info.endpoint_url}
        _print(data, args.json, f"local S3 server running: {info.endpoint_url} (pid {info.pid})")
    elif args.action == "stop":
        stopped = server.stop()
        _print({"stopped": stopped}, args.json, "stopped" if stopped else "not running")
    else:
        running = server.running()
        data = {
            "running": running is not None,
            "home": str(server.home),
            "endpoint_url": running.endpoint_url if running else None,
            "pid": running.pid if running else None,
        }
        text = (
            f"running: {running.endpoint_url} (pid {running.pid}), state in {server.home}"
            if running
            else f"not running (state directory {server.home})"
        )
        _print(data, args.json, text)
    return EXIT_OK


def _cmd_sessions(args: argparse.Namespace) -> int:
    from .detached import list_sessions

    rows = list_sessions()
    if args.json:
        _print([r.to_json() for r in rows], True, "")
        return EXIT_OK
    header = (
        f"{'SESSION':<26}{'MODE':<10}{'BACKEND':<9}{'CREATED':<21}{'LAST ACTIVITY':<21}"
        f"{'TOTAL':>7}{'PEND':>7}{'RUN':>6}{'DONE':>7}{'FAIL':>6}"
    )
    print(header)
    for r in rows:
        s = r.status
        last = r.last_activity.strftime("%Y-%m-%d %H:%M:%S") if r.last_activity else "-"
        print(
            f"{r.session_id:<26}{r.mode:<10}{r.backend:<9}"
            f"{r.created.strftime('%Y-%m-%d %H:%M:%S'):<21}{last:<21}"
            f"{s.total:>7}{s.pending:>7}{s.running:>6}{s.completed:>7}{s.failed:>6}"
        )
    return EXIT_OK


def _attach(session_id: str) -> Any:
    from .detached import DetachedExecutor

    return DetachedExecutor.attach(session_id)


def _cmd_status(args: argparse.Namespace) -> int:
    ex = _attach(args.session)
    try:
        status = ex.status()
        _print(status.to_json(), args.json, str(status))
    finally:
        ex.detach()
    return EXIT_OK


def _cmd_extend(args: argparse.Namespace) -> int:
    ex = _attach(args.session)
    try:
        deadline = ex.extend(args.seconds)
        _print(
            {"session_id": args.session, "deadline": deadline.isoformat()},
            args.json,
            f"{args.session}: deadline now {deadline.isoformat()}",
        )
    finally:
        ex.detach()
    return EXIT_OK


def _cmd_cleanup(args: argparse.Namespace) -> int:
    ex = _attach(args.session)
    ex.cleanup(stop_workers=True, force=args.force)
    what = "workers stopped, objects deleted" if args.force else "workers stopped"
    _print({"session_id": args.session, "force": args.force}, args.json, f"{args.session}: {what}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="starburst", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        return p

    p = add("local", "start, stop or check the embedded S3 server")
    p.add_argument("action", choices=["start", "stop", "status"])
    p.set_defaults(func=_cmd_local)
    add("sessions", "list sessions with counts per state").set_defaults(func=_cmd_sessions)
    p = add("status", "a session's counts per state")
    p.add_argument("session")
    p.set_defaults(func=_cmd_status)
    p = add("extend", "push a session's deadline later")
    p.add_argument("session")
    p.add_argument("seconds", type=float)
    p.set_defaults(func=_cmd_extend)
    p = add("cleanup", "stop a session's workers (--force: delete its objects too)")
    p.add_argument("session")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=_cmd_cleanup)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except StarburstError as err:
        if args.debug:
            raise
        print(f"starburst: error: {err}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
