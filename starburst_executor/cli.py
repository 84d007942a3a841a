"""The ``starburst`` command: thin commands over the public API.

Exit codes: 0 success, 1 a library error (printed as one line) or a failed
``doctor`` check, 2 bad usage, 3 the local S3 server is stopped (``local status``,
and the commands that only look: ``sessions``, ``status``).
``--debug`` (before or after the command) prints tracebacks; ``--json`` prints
machine-readable output.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import ConfigError, SessionNotFound, StarburstError

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_STOPPED = 0, 1, 2, 3


def _print(data: Any, as_json: bool, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if as_json else text)


def _cmd_local(args: argparse.Namespace) -> int:
    from .store.local_server import LocalServer

    server = LocalServer()
    if args.action == "start":
        info = server.ensure_running(announce=False)
        data = {"running": True, "pid": info.pid, "endpoint_url": info.endpoint_url}
        _print(
            data,
            args.json,
            f"local S3 server running: {info.endpoint_url} (pid {info.pid}); it stays up "
            "until `starburst local stop`",
        )
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
            else f"not running (state directory {server.home}); `starburst local start` starts it"
        )
        _print(data, args.json, text)
        return EXIT_OK if running else EXIT_STOPPED
    return EXIT_OK


def _stopped_local_server() -> Path | None:
    """The state directory of the embedded server, when it is what the store would be
    and it is stopped; commands that only look say so rather than start it."""
    from .config import backend_from_env, user_location_overrides
    from .store.local_server import LocalServer

    endpoint, bucket, _ = user_location_overrides()
    if endpoint or bucket or (backend_from_env() or "local") != "local":
        return None
    server = LocalServer()
    return None if server.running() is not None else server.home


def _looking_needs_server(args: argparse.Namespace) -> int | None:
    """EXIT_STOPPED (after saying so) when the local server is stopped, else None."""
    home = _stopped_local_server()
    if home is None:
        return None
    message = (
        f"the local S3 server is stopped (state in {home}); its sessions are kept but "
        "cannot be read until `starburst local start` starts it"
    )
    if args.json:
        print(json.dumps({"running": False, "home": str(home), "message": message}))
    else:
        print(f"starburst: {message}", file=sys.stderr)
    return EXIT_STOPPED


def _cmd_sessions(args: argparse.Namespace) -> int:
    from .detached import list_sessions

    if (stopped := _looking_needs_server(args)) is not None:
        return stopped

    rows = list_sessions()
    if args.json:
        _print([r.to_json() for r in rows], True, "")
        return EXIT_OK
    header = (
        f"{'SESSION':<26}{'MODE':<10}{'BACKEND':<9}{'CREATED':<21}{'LAST ACTIVITY':<21}"
        f"{'TOTAL':>7}{'PEND':>7}{'RUN':>6}{'DONE':>7}{'FAIL':>6}{'COST':>8}"
    )
    print(header)
    for r in rows:
        s = r.status
        last = r.last_activity.strftime("%Y-%m-%d %H:%M:%S") if r.last_activity else "-"
        print(
            f"{r.session_id:<26}{r.mode:<10}{r.backend:<9}"
            f"{r.created.strftime('%Y-%m-%d %H:%M:%S'):<21}{last:<21}"
            f"{s.total:>7}{s.pending:>7}{s.running:>6}{s.completed:>7}{s.failed:>6}"
            f"{'-':>8}"  # local workers cost nothing we can measure; ECS sessions will
        )
    return EXIT_OK


def _attach(session_id: str) -> Any:
    from .detached import DetachedExecutor

    # Looking at a session must never start workers for it.
    return DetachedExecutor.attach(session_id, launch_workers=False)


def _cmd_status(args: argparse.Namespace) -> int:
    if (stopped := _looking_needs_server(args)) is not None:
        return stopped
    if args.watch:
        return _cmd_watch(args)
    ex = _attach(args.session)
    try:
        status = ex.status()
        _print(status.to_json(), args.json, str(status))
    finally:
        ex.detach()
    return EXIT_OK


def _cmd_watch(args: argparse.Namespace) -> int:
    from ._progress import render_bar

    ex = _attach(args.session)
    try:
        started = time.monotonic()
        baseline: int | None = None
        while True:
            status = ex.status()
            if baseline is None:
                baseline = status.finished
            if args.json:
                print(json.dumps(status.to_json()), flush=True)
            else:
                bar = render_bar(
                    status.finished,
                    status.total,
                    time.monotonic() - started,
                    args.session,
                    baseline=baseline,
                )
                tail = f" | {status.running} running, {status.failed} failed"
                print("\r" + bar + tail, end="", flush=True)
            if status.pending == 0 and status.running == 0:
                break
            time.sleep(args.interval)
        if not args.json:
            print()
    finally:
        ex.detach()
    return EXIT_OK


def _cmd_collect(args: argparse.Namespace) -> int:
    import cloudpickle

    if (stopped := _looking_needs_server(args)) is not None:
        return stopped
    ex = _attach(args.session)
    try:
        outcomes = ex.collect(wait=args.wait, timeout=args.timeout)
    finally:
        ex.detach()
    if args.out:
        with open(args.out, "wb") as f:
            cloudpickle.dump(outcomes, f)
        # The file has the outcomes; the terminal gets a count, not every value again.
        counts = {
            state: sum(o.state == state for o in outcomes)
            for state in ("completed", "failed", "cancelled")
        }
        summary = ", ".join(f"{n} {state}" for state, n in counts.items())
        _print(
            {"session_id": args.session, "out": args.out, "outcomes": len(outcomes), **counts},
            args.json,
            f"{len(outcomes)} outcomes ({summary}) written to {args.out} "
            "(a pickled list of TaskOutcome)",
        )
        return EXIT_OK
    rows = [
        {
            "task_id": o.task_id,
            "state": o.state,
            "value": _jsonable(o.value),
            "error": f"{type(o.error).__name__}: {o.error}" if o.error else None,
        }
        for o in outcomes
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            shown = row["error"] if row["error"] else row["value"]
            print(f"{row['task_id']}  {row['state']:<10} {shown}")
    return EXIT_OK


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value


def _cmd_logs(args: argparse.Namespace) -> int:
    if (stopped := _looking_needs_server(args)) is not None:
        return stopped
    ex = _attach(args.session)
    try:
        if args.task:
            return _task_log(ex, args)
        return _worker_logs(ex, args)
    finally:
        ex.detach()


def _task_log(ex: Any, args: argparse.Namespace) -> int:
    future = next((f for f in ex.futures if f.task_id == args.task), None)
    if future is None:
        raise SessionNotFound(
            f"task {args.task} is not in session {args.session}; "
            f"`starburst collect {args.session}` lists its tasks"
        )
    ex.collect(wait=False)  # resolves what has finished
    if not future.done():
        _print(
            {"task_id": args.task, "finished": False},
            args.json,
            f"{args.task} has not finished; its output arrives with its result",
        )
        return EXIT_OK
    error = future.exception() if not future.cancelled() else None
    remote_tb = str(error.__cause__).strip().strip('"').strip() if error is not None else ""
    if args.json:
        data = {
            "task_id": args.task,
            "finished": True,
            "worker_id": future.worker_id,
            "attempt": future.attempt,
            "stdout": future.stdout or "",
            "stderr": future.stderr or "",
            "error": f"{type(error).__name__}: {error}" if error is not None else None,
            "traceback": remote_tb or None,
        }
        print(json.dumps(data, indent=2))
        return EXIT_OK
    print(f"== {args.task} (worker {future.worker_id}, attempt {future.attempt})")
    print("-- stdout --")
    print(future.stdout or "", end="")
    print("-- stderr --")
    print(future.stderr or "", end="")
    if error is not None:
        print("-- error --")
        print(f"{type(error).__name__}: {error}")
        if remote_tb:
            print(remote_tb)
    return EXIT_OK


def _worker_label(location: str) -> str:
    """A short name for a worker's log: the file stem, or the CloudWatch stream's tail."""
    return Path(location).stem


def _worker_logs(ex: Any, args: argparse.Namespace) -> int:
    """Every worker's log. With --follow, lines of several workers interleave, so each
    line carries its worker's label; only whole lines are printed until the end."""
    positions: dict[str, Any] = {}
    partial: dict[str, str] = {}
    printed: set[str] = set()
    records: list[dict[str, str]] = []

    def emit(location: str, lines: list[str]) -> None:
        label = _worker_label(location)
        for line in lines:
            if args.json:
                record = {"worker": label, "log": location, "line": line}
                if args.follow:
                    print(json.dumps(record), flush=True)
                else:
                    records.append(record)
            elif args.follow:
                print(f"[{label}] {line}", flush=True)
            else:
                if location not in printed:
                    printed.add(location)
                    print(f"== {location}")
                print(line)

    while True:
        for location in ex.worker_logs():
            text, positions[location] = ex.read_worker_log(location, positions.get(location))
            if not text:
                continue
            lines = (partial.pop(location, "") + text).split("\n")
            if lines[-1]:
                partial[location] = lines[-1]
            emit(location, lines[:-1])
        if not args.follow:
            break
        status = ex.status()
        if status.pending == 0 and status.running == 0:
            break
        time.sleep(args.interval)
    for location, rest in partial.items():
        emit(location, [rest])
    if args.json and not args.follow:
        print(json.dumps(records, indent=2))
    return EXIT_OK


def _cmd_cancel(args: argparse.Namespace) -> int:
    ex = _attach(args.session)
    try:
        if args.task:
            future = next((f for f in ex.futures if f.task_id == args.task), None)
            if future is None:
                raise SessionNotFound(
                    f"task {args.task} is not in session {args.session}; "
                    f"`starburst collect {args.session}` lists its tasks"
                )
            count = 1 if future.cancel() else 0
            reason = "" if count else _why_not_cancelled(ex, future)
        else:
            count = ex.cancel_pending()
            reason = "" if count else "no task was waiting for a worker"
    finally:
        ex.detach()
    what = f"{args.task} cancelled" if args.task and count else f"{count} task(s) cancelled"
    text = f"{args.session}: {what}"
    text += f": {reason}" if reason else " (running tasks finish)"
    _print({"session_id": args.session, "cancelled": count, "reason": reason}, args.json, text)
    return EXIT_OK


def _why_not_cancelled(ex: Any, future: Any) -> str:
    """Why ``cancel()`` refused: the task finished already, or a worker is running it."""
    ex.collect(wait=False)  # resolves the futures of finished tasks
    if future.done():
        state = (
            "cancelled"
            if future.cancelled()
            else ("failed" if future.exception() is not None else "completed")
        )
        return f"it already finished ({state}); nothing to cancel"
    return (
        "a worker is running it (or claimed it to run next), and a claimed task cannot be "
        "cancelled; "
        f"`starburst cleanup {ex.session_id}` stops the session's workers"
    )


def _region(args: argparse.Namespace) -> str:
    from .aws.clients import sdk_region
    from .aws.settings import load_config
    from .config import resolve_region

    saved = load_config()
    region = resolve_region(args.region, saved.region if saved else None) or sdk_region()
    if not region:
        raise ConfigError(
            "no AWS region: pass --region, set AWS_DEFAULT_REGION or run "
            "`aws configure set region <region>`"
        )
    return region


def _cmd_setup(args: argparse.Namespace) -> int:
    from .aws.clients import AwsClients
    from .aws.settings import AwsConfig, config_path, load_config, save_config
    from .aws.setup import Setup

    region = _region(args)
    base = load_config() or AwsConfig(region=region)
    base = base.with_overrides(cluster=args.cluster, prefix=args.prefix)
    setup = Setup(AwsClients(region), dry_run=args.dry_run)
    try:
        config = setup.run(
            base,
            bucket=args.bucket,
            expiry_days=args.expiry_days,
            log_retention_days=args.log_retention_days,
            ec2_instance_types=args.ec2 or (),
            ec2_spot=args.ec2_spot,
            ec2_max=args.ec2_max,
            kms_key_arn=args.kms_key,
            subnets=args.subnets.split(",") if args.subnets else (),
            security_groups=args.security_groups.split(",") if args.security_groups else (),
        )
    except StarburstError:
        if setup.created:  # what was made before the failure stays known to teardown
            from dataclasses import replace

            save_config(replace(base, created=[*base.created, *setup.created]))
        raise
    if not args.dry_run:
        save_config(config)
    if args.json:
        print(
            json.dumps(
                {
                    "dry_run": args.dry_run,
                    "steps": [s.__dict__ for s in setup.steps],
                    "config": config.to_json(),
                },
                indent=2,
            )
        )
    else:
        for step in setup.steps:
            print(step)
        if args.dry_run:
            print("dry run: nothing was created")
        else:
            print(f"configuration saved to {config_path()}")
    return EXIT_OK


def _cmd_teardown(args: argparse.Namespace) -> int:
    from .aws.clients import AwsClients
    from .aws.settings import config_path, load_config, save_config
    from .aws.setup import teardown

    config = load_config()
    if config is None:
        raise ConfigError(f"nothing to tear down: no configuration at {config_path()}")
    steps = teardown(
        config, AwsClients(config.region), dry_run=args.dry_run, delete_data=args.delete_data
    )
    if not args.dry_run:
        kept = [
            item
            for item, step in zip(reversed(config.created), steps, strict=True)
            if step.action == "kept"
        ]
        from dataclasses import replace

        save_config(replace(config, created=list(reversed(kept))))
    if args.json:
        print(json.dumps({"dry_run": args.dry_run, "steps": [s.__dict__ for s in steps]}, indent=2))
    else:
        for step in steps:
            print(step)
    return EXIT_OK


def _read_requirements(args: argparse.Namespace) -> str | None:
    if not args.requirements:
        return None
    try:
        return Path(args.requirements).read_text()
    except OSError as err:
        raise ConfigError(f"cannot read --requirements {args.requirements}: {err}") from err


def _cmd_image(args: argparse.Namespace) -> int:
    if args.action == "show":
        return _cmd_image_show(args)
    import tempfile
    from dataclasses import replace

    from .aws.clients import AwsClients
    from .aws.image import build_image, parse_platforms
    from .aws.settings import load_config, save_config

    config = load_config()
    if config is None:
        raise ConfigError("no AWS configuration: run `starburst setup` first")
    requirements = _read_requirements(args)
    platforms = parse_platforms(args.platform) if args.platform else None
    with tempfile.TemporaryDirectory(prefix="starburst-image-") as context:
        result = build_image(
            config,
            AwsClients(config.region),
            requirements=requirements,
            context_dir=Path(context),
            dry_run=args.dry_run,
            platforms=platforms,
        )
    if not args.dry_run:
        save_config(replace(config, image=result.image))
    data = {
        "image": result.image,
        "tag": result.tag,
        "skipped": result.skipped,
        "dry_run": args.dry_run,
        "platforms": list(result.platforms),
        "commands": result.commands,
    }
    if result.skipped:
        text = f"{result.image} already in ECR: nothing to build"
    else:
        shown = "\n".join(" ".join(c) for c in result.commands)
        text = f"{'would run' if args.dry_run else 'ran'}:\n{shown}\nimage: {result.image}"
    _print(data, args.json, text)
    return EXIT_OK


def _cmd_image_show(args: argparse.Namespace) -> int:
    from .aws.image import plan_image

    plan = plan_image(_read_requirements(args))
    data = {
        **plan.lock.to_json(),
        "tag": plan.tag,
        "wheel": {"file": plan.wheel.filename, "sha256": plan.wheel.digest},
    }
    if args.json:
        _print(data, True, "")
        return EXIT_OK
    lines = [
        f"tag: {plan.tag}",
        f"python: {plan.lock.python}",
        f"wheel: {plan.wheel.filename} (sha256 {plan.wheel.digest[:16]})",
        f"lock ({len(plan.lock.pins)} packages):",
        *(f"  {pin}" for pin in plan.lock.pins),
        f"left out ({len(plan.lock.left_out)}):",
        *(f"  {item.name} {item.version}: {item.reason}" for item in plan.lock.left_out),
    ]
    print("\n".join(lines))
    return EXIT_OK


def _cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import run_checks

    checks = run_checks()
    if args.json:
        print(json.dumps([c.to_json() for c in checks], indent=2))
    else:
        marks = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}
        for c in checks:
            print(f"[{marks[c.level]}] {c.name}: {c.detail}")
            if c.fix and c.level != "ok":
                print(f"       fix: {c.fix}")
    return EXIT_ERROR if any(c.level == "fail" for c in checks) else EXIT_OK


def _cmd_extend(args: argparse.Namespace) -> int:
    if not args.seconds > 0:  # also refuses NaN
        raise ConfigError(
            f"extend needs a positive number of seconds, got {args.seconds:g}; a deadline "
            f"only moves later (`starburst cleanup {args.session}` ends a session early)"
        )
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


def _cmd_plot(args: argparse.Namespace) -> int:
    if (stopped := _looking_needs_server(args)) is not None:
        return stopped
    ex = _attach(args.session)
    try:
        path = ex.plot(args.out)
    finally:
        ex.detach()
    _print(
        {"session_id": args.session, "path": str(path)}, args.json, f"timeline written to {path}"
    )
    return EXIT_OK


def _cmd_cleanup(args: argparse.Namespace) -> int:
    chosen = [bool(args.session), args.finished, args.all]
    if sum(chosen) != 1:
        raise ConfigError(
            "cleanup takes one of: a SESSION id, --finished [--older-than 7d], or --all"
        )
    if args.older_than is not None and not args.finished:
        raise ConfigError("--older-than goes with --finished")
    if args.session:
        ex = _attach(args.session)
        ex.cleanup(stop_workers=True, force=args.force)
        what = (
            "workers stopped, objects and local logs deleted" if args.force else "workers stopped"
        )
        data = {"session_id": args.session, "force": args.force}
        _print(data, args.json, f"{args.session}: {what}")
        return EXIT_OK
    from .config import parse_duration
    from .detached import cleanup_sessions

    older_than = parse_duration(args.older_than) if args.older_than is not None else None
    deleted = cleanup_sessions(older_than=older_than, everything=args.all, dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    if args.json:
        print(
            json.dumps(
                {"dry_run": args.dry_run, verb.replace(" ", "_"): [d.session_id for d in deleted]},
                indent=2,
            )
        )
    else:
        for info in deleted:
            print(f"{verb} {info.session_id} ({info.status.total} tasks)")
        print(f"{len(deleted)} session(s) {'would be deleted' if args.dry_run else 'deleted'}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="starburst", description=__doc__.splitlines()[0].replace("``", "")
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        # SUPPRESS: a subcommand without --debug keeps what the top level parsed.
        p.add_argument(
            "--debug",
            action="store_true",
            default=argparse.SUPPRESS,
            help="show tracebacks on errors",
        )
        return p

    p = add("local", "start, stop or check the embedded S3 server")
    p.add_argument("action", choices=["start", "stop", "status"])
    p.set_defaults(func=_cmd_local)
    add("sessions", "list sessions with counts per state").set_defaults(func=_cmd_sessions)
    p = add("status", "a session's counts per state (--watch: a live progress bar)")
    p.add_argument("session")
    p.add_argument("--watch", action="store_true", help="follow until every task finished")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between updates")
    p.set_defaults(func=_cmd_status)
    p = add("collect", "the session's finished outcomes")
    p.add_argument("session")
    p.add_argument("--out", help="also write them, pickled, to this file")
    p.add_argument("--wait", action="store_true", help="wait for every task")
    p.add_argument("--timeout", type=float, default=None)
    p.set_defaults(func=_cmd_collect)
    p = add("logs", "worker logs, or one task's captured stdout/stderr")
    p.add_argument("session")
    p.add_argument("--task", help="a task id such as t000000042")
    p.add_argument("--follow", action="store_true", help="keep printing until the work is done")
    p.add_argument("--interval", type=float, default=1.0)
    p.set_defaults(func=_cmd_logs)
    p = add("cancel", "cancel the session's unclaimed tasks, or one task")
    p.add_argument("session")
    p.add_argument("--task")
    p.set_defaults(func=_cmd_cancel)
    p = add("extend", "push a session's deadline later")
    p.add_argument("session")
    p.add_argument("seconds", type=float)
    p.set_defaults(func=_cmd_extend)
    p = add("plot", "draw a session as a timeline PNG (needs the plot extra: matplotlib)")
    p.add_argument("session")
    p.add_argument("--out", help="the image file (default: <session>.png)")
    p.set_defaults(func=_cmd_plot)
    p = add("setup", "create the AWS resources of the ECS backend (idempotent)")
    p.add_argument("--region")
    p.add_argument("--bucket", help="default: starburst-<account>-<region>")
    p.add_argument("--prefix", default=None)
    p.add_argument("--cluster", default=None)
    p.add_argument("--expiry-days", type=int, default=30, help="session data lifetime")
    p.add_argument("--log-retention-days", type=int, default=30)
    p.add_argument("--dry-run", action="store_true", help="print the plan; create nothing")
    p.add_argument(
        "--ec2", action="append", metavar="INSTANCE_TYPE", help="add an EC2 capacity provider"
    )
    p.add_argument("--ec2-spot", action="store_true", help="EC2 capacity on Spot")
    p.add_argument("--ec2-max", type=int, default=10, help="instances per EC2 provider")
    p.add_argument("--subnets", help="subnet ids, comma-separated (default: the default VPC's)")
    p.add_argument("--security-groups", help="security group ids, comma-separated")
    p.add_argument("--kms-key", help="the KMS key ARN of SSE-KMS: workers may use it")
    p.set_defaults(func=_cmd_setup)
    p = add("teardown", "remove what setup created, and only that")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--delete-data", action="store_true", help="also empty the bucket")
    p.set_defaults(func=_cmd_teardown)
    p = add(
        "image",
        "the worker image: show its lock and tag, or build and push it (skipped when ECR "
        "has the tag)",
    )
    p.add_argument("action", choices=["build", "show"])
    p.add_argument(
        "--requirements",
        help="narrow the lock to these distributions and what they need (default: every "
        "installed distribution)",
    )
    p.add_argument(
        "--platform",
        help="amd64, arm64 or both (default: what the configured capacity needs)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the docker commands only")
    p.set_defaults(func=_cmd_image)
    add("doctor", "check versions, the local server and AWS; say what to fix").set_defaults(
        func=_cmd_doctor
    )
    p = add(
        "cleanup",
        "stop a session's workers (--force: delete it too), or delete sessions in bulk",
    )
    p.add_argument("session", nargs="?")
    p.add_argument("--force", action="store_true", help="also delete its objects and logs")
    p.add_argument(
        "--finished",
        action="store_true",
        help="delete every session finished longer ago than --older-than",
    )
    p.add_argument(
        "--older-than",
        metavar="AGE",
        help="e.g. 12h or 7d (default: STARBURST_RETENTION, 7d)",
    )
    p.add_argument("--all", action="store_true", help="delete every session, finished or not")
    p.add_argument("--dry-run", action="store_true", help="list what would be deleted")
    p.set_defaults(func=_cmd_cleanup)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
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
