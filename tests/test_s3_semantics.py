"""What real S3 answers that SeaweedFS does not: 409 on overlapping conditional writes
and 403 for a missing key. The fault proxy plays both in front of the real server."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tasks
from fault_proxy import FaultProxy

from starburst_executor import DetachedExecutor
from starburst_executor._core.loop import LoopThread
from starburst_executor.config import StoreLocation
from starburst_executor.errors import ObjectNotFound, PreconditionFailed, StoreError
from starburst_executor.store.local_server import LocalServer, read_credentials
from starburst_executor.store.s3 import S3Store

TIMEOUT = 180


@pytest.fixture
def proxied(starburst_home: Path, prefix: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Start a proxy with the given modes and route the library and its workers through it."""
    info = LocalServer(starburst_home).ensure_running()
    access, secret = read_credentials(starburst_home)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", access)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    started: list[FaultProxy] = []

    def start(**modes: Any) -> FaultProxy:
        proxy = FaultProxy(info.endpoint_url, 0.0, seed=7, **modes).__enter__()
        started.append(proxy)
        monkeypatch.setenv("STARBURST_S3_ENDPOINT", proxy.url)
        monkeypatch.setenv("STARBURST_BUCKET", "starburst")
        return proxy

    yield start
    for proxy in started:
        proxy.__exit__()


def _store(proxy: FaultProxy, starburst_home: Path, **kwargs: Any) -> tuple[S3Store, LoopThread]:
    location = StoreLocation(bucket="starburst", region="us-east-1", endpoint_url=proxy.url)
    store = S3Store(location, credentials=read_credentials(starburst_home), **kwargs)
    return store, LoopThread("s3-semantics")


def test_409_on_conditional_writes_is_retried_not_a_lost_race(proxied, starburst_home, prefix):
    proxy = proxied(conflict_fraction=0.4)
    store, loop = _store(proxy, starburst_home)
    try:
        for i in range(20):
            put = loop.run(store.put(f"{prefix}/c/{i}", b"x", if_none_match=True))
            loop.run(store.put(f"{prefix}/c/{i}", b"y", if_match=put.etag))
        assert proxy.injected["conflict409"] >= 10, proxy.injected
        # A real lost race still is one.
        with pytest.raises(PreconditionFailed):
            loop.run(store.put(f"{prefix}/c/0", b"z", if_none_match=True))
    finally:
        loop.run(store.close())
        loop.close()


def test_409_that_never_clears_is_a_store_error_naming_the_key(proxied, starburst_home, prefix):
    proxy = proxied(conflict_fraction=1.0)
    store, loop = _store(proxy, starburst_home, conflict_attempts=3)
    try:
        with pytest.raises(StoreError, match=f"{prefix}/c/never.*409") as info:
            loop.run(store.put(f"{prefix}/c/never", b"x", if_none_match=True))
        assert not isinstance(info.value, PreconditionFailed)
        assert proxy.injected["conflict409"] == 3
    finally:
        loop.run(store.close())
        loop.close()


@pytest.mark.long
def test_tasks_run_exactly_once_with_409s_on_claims_renewals_and_results(proxied, tmp_path):
    proxy = proxied(conflict_fraction=0.3)
    path = tmp_path / "ran.txt"
    ex = DetachedExecutor(max_workers=3, lease_seconds=3)
    try:
        # Each task outlives two leases: it finishes once only if every renewal lands.
        futures = [ex.submit(tasks.append_index_slowly, str(path), i, 7.0) for i in range(6)]
        assert [f.result(timeout=TIMEOUT) for f in futures] == list(range(6))
        assert ex.status().reexecuted == 0
    finally:
        ex.cleanup(force=True)
    assert {"claim", "renewal", "result"} <= set(proxy.conflicts), proxy.conflicts
    assert Counter(int(x) for x in path.read_text().split()) == Counter(range(6))


def test_missing_keys_answered_403_read_as_missing(proxied, starburst_home, prefix):
    proxy = proxied(missing_as_403=True)
    store, loop = _store(proxy, starburst_home)
    try:
        assert not loop.run(store.exists(f"{prefix}/m/nothing"))
        with pytest.raises(ObjectNotFound, match=f"{prefix}/m/nothing"):
            loop.run(store.get(f"{prefix}/m/nothing"))
        loop.run(store.put(f"{prefix}/m/here", b"1"))
        assert loop.run(store.exists(f"{prefix}/m/here"))
        assert loop.run(store.get(f"{prefix}/m/here")).body == b"1"
        assert proxy.injected["missing403"] == 2
    finally:
        loop.run(store.close())
        loop.close()


def test_takeover_completes_when_missing_keys_answer_403(proxied, tmp_path):
    proxy = proxied(missing_as_403=True)
    ex = DetachedExecutor(max_workers=1, lease_seconds=2, max_retries=2)
    try:
        future = ex.submit(tasks.kill_worker_first_time, str(tmp_path / "killed"))
        assert future.result(timeout=120) == "survived"
        assert future.attempt == 2
        assert ex.status().reexecuted == 1
    finally:
        ex.cleanup(force=True)
    assert proxy.injected["missing403"] > 0
