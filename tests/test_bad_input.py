"""Bad input gets a typed error naming the session, task or key, and the next step."""

from __future__ import annotations

import json
import logging

import pytest

import starburst_executor
from starburst_executor import DetachedExecutor
from starburst_executor._core.codec import encode_call
from starburst_executor._core.layout import task_id
from starburst_executor.errors import (
    ConfigError,
    CorruptObject,
    EnvironmentMismatch,
    SchemaVersionError,
    StarburstError,
)

TIMEOUT = 120


def test_public_names_are_complete_and_sorted():
    assert starburst_executor.__all__ == sorted(starburst_executor.__all__)
    for name in starburst_executor.__all__:
        assert getattr(starburst_executor, name) is not None
    with pytest.raises(AttributeError):
        starburst_executor.NoSuchThing  # noqa: B018


def test_every_error_derives_from_one_base():
    from starburst_executor import errors

    for name in errors.__all__:
        assert issubclass(getattr(errors, name), StarburstError)
        assert name in errors.__doc__


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lease_seconds": 0.5}, "lease_seconds"),
        ({"memory": "lots"}, "invalid memory"),
        ({"backend": "kubernetes"}, "unknown backend 'kubernetes'"),
        ({"endpoint_url": "http://127.0.0.1:9"}, "without a bucket"),
        ({"bucket": "Bad_Bucket"}, "invalid bucket name"),
        ({"prefix": "../escape"}, "invalid key prefix"),
    ],
)
def test_invalid_settings_are_config_errors(prefix, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        DetachedExecutor(**kwargs)


def test_manifest_from_a_newer_release_is_refused(prefix):
    ex = DetachedExecutor(max_workers=1)
    try:
        key = ex._session.layout.manifest
        store = ex._runtime.store
        data = json.loads(ex._runtime.loop.run(store.get(key)).body)
        data["schema_version"] = 99
        ex._runtime.loop.run(store.put(key, json.dumps(data).encode()))
        with pytest.raises(SchemaVersionError, match=r"schema_version 99.*upgrade"):
            DetachedExecutor.attach(ex.session_id)
    finally:
        ex.cleanup(force=True)


def test_a_session_that_cannot_be_read_is_named_not_hidden_by_list_sessions(prefix, caplog):
    # No work, so no worker starts.
    good, bad = DetachedExecutor(max_workers=1), DetachedExecutor(max_workers=1)
    try:
        store = bad._runtime.store
        bad._runtime.loop.run(store.put(bad._session.layout.manifest, b"{not json"))
        with caplog.at_level(logging.WARNING, logger="starburst_executor"):
            ids = {s.session_id for s in starburst_executor.list_sessions()}
        assert good.session_id in ids and bad.session_id not in ids
        assert any(
            bad.session_id in r.getMessage() and "manifest" in r.getMessage()
            for r in caplog.records
        ), [r.getMessage() for r in caplog.records]
    finally:
        good.cleanup(force=True)
        bad.cleanup(force=True)


def test_corrupted_payload_fails_its_task_naming_the_key(prefix):
    ex = DetachedExecutor(max_workers=1)
    sid = ex.session_id
    ex._runtime.loop.run(ex._session.put_tasks(task_id(0), [b"garbage"]))
    ex.detach()
    attached = DetachedExecutor.attach(sid)
    try:
        with pytest.raises(CorruptObject, match=f"{sid}/tasks/t000000000"):
            attached.futures[0].result(timeout=TIMEOUT)
        assert attached.status().failed == 1
    finally:
        attached.cleanup(force=True)


def test_corrupted_result_fails_the_future_naming_the_key(prefix):
    ex = DetachedExecutor(max_workers=1)
    sid = ex.session_id
    session = ex._session
    ex._runtime.loop.run(session.put_tasks(task_id(0), [encode_call(abs, (-1,), {})]))
    ex._runtime.loop.run(session.store.put(session.layout.key("results", task_id(0)), b"junk"))
    ex.detach()
    attached = DetachedExecutor.attach(sid)
    try:
        with pytest.raises(CorruptObject, match=f"{sid}/results/t000000000"):
            attached.futures[0].result(timeout=TIMEOUT)
    finally:
        attached.cleanup(force=True)


def test_worker_with_a_different_environment_fails_each_task_naming_both(prefix):
    ex = DetachedExecutor(max_workers=1)
    sid = ex.session_id
    try:
        key = ex._session.layout.manifest
        store = ex._runtime.store
        data = json.loads(ex._runtime.loop.run(store.get(key)).body)
        data["fingerprint"]["cloudpickle"] = "0.0.1"
        ex._runtime.loop.run(store.put(key, json.dumps(data).encode()))
        future = ex.submit(abs, -1)
        with pytest.raises(EnvironmentMismatch, match=r"cloudpickle 0\.0\.1 on the client but"):
            future.result(timeout=TIMEOUT)
        assert sid in str(future.exception())
    finally:
        ex.cleanup(force=True)


def test_payload_and_result_over_the_object_limit(prefix, monkeypatch):
    from starburst_executor.errors import PayloadTooLarge

    monkeypatch.setenv("STARBURST_MAX_OBJECT_BYTES", str(1024 * 1024))
    ex = DetachedExecutor(max_workers=1)
    try:
        with pytest.raises(PayloadTooLarge, match=r"over the 1,048,576-byte limit"):
            ex.submit(len, b"x" * (2 * 1024 * 1024))
        assert ex.status().total == 0  # nothing half-written
        future = ex.submit(bytes, 2 * 1024 * 1024)  # the result is too big, in the worker
        with pytest.raises(PayloadTooLarge, match=future.task_id):
            future.result(timeout=TIMEOUT)
    finally:
        ex.cleanup(force=True)


@pytest.mark.long
def test_expired_session_refuses_work_and_workers_leave(prefix):
    import time

    from starburst_executor.errors import SessionExpired

    # Long enough for a worker to start and run one call on a loaded machine (beside two
    # suites, at a load of 20, starting two workers took more than 20 s).
    ex = DetachedExecutor(max_workers=1, absolute_timeout=60)
    try:
        assert ex.submit(abs, -2).result(timeout=TIMEOUT) == 2
        deadline = time.monotonic() + 180  # the idle worker polls every 30 s at most
        # Past it on the store's clock too (its Date header has one-second resolution).
        while time.time() <= ex._manifest.deadline + 2:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        with pytest.raises(SessionExpired, match=rf"{ex.session_id}.*extend"):
            ex.submit(abs, -3)
        registry = []
        while time.monotonic() < deadline:
            registry = ex._runtime.loop.run(ex._session.workers())
            if registry and all(w["state"] == "exited" for w in registry):
                break
            time.sleep(0.2)
        assert registry and all("deadline" in str(w.get("reason")) for w in registry)
    finally:
        ex.cleanup(force=True)
