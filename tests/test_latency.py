"""Fast at real S3 latency: pipelined submits, direct result reads, pieces stored once."""

from __future__ import annotations

from typing import Any

from starburst_executor.store.s3 import _no_expect_continue


def test_uploads_are_sent_without_expect_100_continue(store):
    sent: list[dict[str, str]] = []

    def capture(request: Any, **_: Any) -> None:
        sent.append({k.lower(): v for k, v in request.headers.items()})

    client = store.run(store._ensure())
    client.meta.events.register("before-send.s3.PutObject", capture)
    store.run(store.put("probe/expect", b"x" * 10_000))
    store.run(store.put("probe/expect-cond", b"y", if_none_match=True))
    assert len(sent) == 2
    assert all("expect" not in headers for headers in sent), sent
    # The handler is what removes it: botocore alone asks for a 100 first.
    client.meta.events.unregister("before-call.s3", _no_expect_continue)
    store.run(store.put("probe/expect", b"x" * 10_000))
    assert sent[-1].get("expect") == b"100-continue"
