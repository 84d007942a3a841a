"""An EC2 Spot interruption notice, read by the worker from instance metadata (issue 13).

A small IMDSv2 server on 127.0.0.1 plays the instance metadata: a session token from
``PUT /latest/api/token``, then ``/latest/meta-data/spot/instance-action`` answering 404
until the test schedules the interruption. Workers find it through the variables the
ECS launcher passes to EC2 workers.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import tasks
from helpers import parent_of, wait_until

from starburst_executor import DetachedExecutor
from starburst_executor.config import ENV_IMDS_ENDPOINT, ENV_SPOT_WATCH
from starburst_executor.worker.spot import SpotWatch

TIMEOUT = 180
NOTICE = {"action": "terminate", "time": "2026-11-26T12:00:00Z"}


class FakeImds(ThreadingHTTPServer):
    """IMDSv2 with a Spot notice served ``notices`` times once scheduled."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.token = "token-" + os.urandom(4).hex()
        self.notices = 0
        self.served = 0
        self.refused = 0
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: FakeImds

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, code: int, body: bytes = b"") -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_PUT(self) -> None:
        if self.path == "/latest/api/token" and self.headers.get(
            "X-aws-ec2-metadata-token-ttl-seconds"
        ):
            self._send(200, self.server.token.encode())
        else:
            self._send(400)

    def do_GET(self) -> None:
        imds = self.server
        if self.headers.get("X-aws-ec2-metadata-token") != imds.token:
            with imds.lock:
                imds.refused += 1
            self._send(401)  # IMDSv2 only, as instances from `starburst setup` are
            return
        if self.path != "/latest/meta-data/spot/instance-action":
            self._send(404)
            return
        with imds.lock:
            due = imds.notices > 0
            if due:
                imds.notices -= 1
                imds.served += 1
        self._send(200, json.dumps(NOTICE).encode()) if due else self._send(404)


@pytest.fixture
def imds() -> Iterator[FakeImds]:
    server = FakeImds()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_the_watch_reports_the_notice_once_it_is_scheduled(imds):
    seen: list[dict[str, str]] = []
    got = threading.Event()
    watch = SpotWatch(
        lambda notice: (seen.append(notice), got.set()), endpoint=imds.url, interval=0.05
    )
    assert watch.check() is None  # nothing scheduled: 404
    watch.start()
    imds.notices = 1
    assert got.wait(60), "the notice was never reported"
    watch.stop()
    assert seen == [NOTICE] and imds.refused == 0


def test_an_unreachable_metadata_service_ends_the_watch_quietly():
    watch = SpotWatch(lambda _n: None, endpoint="http://127.0.0.1:9", interval=0.01)
    with pytest.raises(OSError):
        watch.check()
    watch.start()
    watch._thread.join(60)
    assert not watch._thread.is_alive()


def test_a_spot_notice_hands_the_task_back_and_a_new_worker_finishes_it(
    prefix, tmp_path, monkeypatch, imds
):
    monkeypatch.setenv(ENV_SPOT_WATCH, "1")
    monkeypatch.setenv(ENV_IMDS_ENDPOINT, imds.url)
    monkeypatch.setenv("STARBURST_TERM_GRACE", "1")  # the notice's two minutes, shortened
    started, release = tmp_path / "started", tmp_path / "release"
    ex = DetachedExecutor(max_workers=1, lease_seconds=600)
    try:
        future = ex.submit(tasks.touch_then_wait, str(started), str(release))
        wait_until(started.exists, "the task to start")
        first = parent_of(int(started.read_text()))
        started.unlink()
        imds.notices = 1  # the interruption is scheduled: one worker reads it
        # With a 600 s lease, only a hand-back lets another worker start the task now.
        wait_until(started.exists, "a new worker to take the handed-back task", TIMEOUT)
        second = parent_of(int(started.read_text()))
        assert second != first and imds.served == 1
        release.write_text("go")
        assert future.result(timeout=TIMEOUT) == int(started.read_text())
        registry = ex._runtime.loop.run(ex._session.workers())
        gone = next(w for w in registry if w.get("pid") == first)
        assert gone["state"] == "exited" and "terminated" in str(gone.get("reason"))
    finally:
        release.write_text("go")
        ex.cleanup(force=True)
