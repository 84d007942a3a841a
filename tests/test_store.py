"""The object store's contract, against the real SeaweedFS server."""

from __future__ import annotations

import asyncio
import socket

import pytest

from starburst_executor.config import StoreLocation
from starburst_executor.errors import (
    AccessDenied,
    BucketNotFound,
    ConfigError,
    EndpointUnreachable,
    ObjectNotFound,
    PreconditionFailed,
)
from starburst_executor.store.s3 import S3Store, refuse_fast


def test_create_only_put_has_one_winner(store, prefix):
    key = f"{prefix}/x/create"
    first = store.run(store.put(key, b"a", if_none_match=True))
    assert '"' not in first.etag
    with pytest.raises(PreconditionFailed):
        store.run(store.put(key, b"b", if_none_match=True))
    assert store.run(store.get(key)).body == b"a"


def test_if_match_replaces_only_the_current_version(store, prefix):
    key = f"{prefix}/x/match"
    first = store.run(store.put(key, b"v1"))
    second = store.run(store.put(key, b"v2", if_match=first.etag))
    assert second.etag != first.etag
    with pytest.raises(PreconditionFailed):
        store.run(store.put(key, b"v3", if_match=first.etag))
    # quoted and unquoted ETags compare the same
    store.run(store.put(key, b"v3", if_match=f'"{second.etag}"'))
    assert store.run(store.get(key)).body == b"v3"


def test_if_match_on_missing_key_fails(store, prefix):
    with pytest.raises((PreconditionFailed, ObjectNotFound)):
        store.run(store.put(f"{prefix}/x/missing", b"v", if_match="0123"))


def test_get_missing_and_exists(store, prefix):
    with pytest.raises(ObjectNotFound, match=f"{prefix}/x/nothing"):
        store.run(store.get(f"{prefix}/x/nothing"))
    assert not store.run(store.exists(f"{prefix}/x/nothing"))
    store.run(store.put(f"{prefix}/x/here", b""))
    assert store.run(store.exists(f"{prefix}/x/here"))


def test_listing_is_paginated_and_resumable(store, prefix):
    async def fill() -> None:
        gate = asyncio.Semaphore(32)

        async def one(i: int) -> None:
            async with gate:
                await store.put(f"{prefix}/many/k{i:05d}", b"")

        await asyncio.gather(*(one(i) for i in range(1234)))

    store.run(fill())
    before = store.counter.by_operation.get("ListObjectsV2", 0)
    listing = store.run(store.list_objects(f"{prefix}/many/"))
    assert [o.key for o in listing.objects] == [f"{prefix}/many/k{i:05d}" for i in range(1234)]
    assert store.counter.by_operation["ListObjectsV2"] - before == 2  # 1000 + 234
    tail = store.run(store.list_objects(f"{prefix}/many/", start_after=f"{prefix}/many/k01200"))
    assert [o.key for o in tail.objects] == [f"{prefix}/many/k{i:05d}" for i in range(1201, 1234)]
    assert listing.server_time.tzinfo is not None


def test_delete_prefix_deletes_only_that_prefix(store, prefix):
    for name in ("a/1", "a/2", "ab/1", "b/1"):
        store.run(store.put(f"{prefix}/d/{name}", b""))
    assert store.run(store.delete_prefix(f"{prefix}/d/a/")) == 2
    left = [o.key for o in store.run(store.list_objects(f"{prefix}/d/")).objects]
    assert left == [f"{prefix}/d/ab/1", f"{prefix}/d/b/1"]


def test_unknown_bucket_is_a_typed_error(location):
    loc, creds = location
    other = StoreLocation(bucket="no-such-bucket-here", endpoint_url=loc.endpoint_url)
    s3 = S3Store(other, credentials=creds)

    async def go() -> None:
        try:
            await s3.get("k")
        finally:
            await s3.close()

    with pytest.raises(BucketNotFound, match="no-such-bucket-here"):
        asyncio.run(go())


def test_wrong_credentials_are_a_typed_error(location):
    loc, _ = location
    s3 = S3Store(loc, credentials=("WRONGKEY", "wrong-secret"))

    async def go() -> None:
        try:
            await s3.put(f"{loc.prefix}/k", b"")
        finally:
            await s3.close()

    with pytest.raises(AccessDenied, match="PutObject"):
        asyncio.run(go())


def test_listing_stops_before_end_before_and_max_keys_is_one_page(store, prefix):
    async def fill() -> None:
        await asyncio.gather(*(store.put(f"{prefix}/r/k{i:03d}", b"") for i in range(40)))

    store.run(fill())
    before = store.counter.by_operation.get("ListObjectsV2", 0)
    middle = store.run(
        store.list_objects(
            f"{prefix}/r/", start_after=f"{prefix}/r/k009", end_before=f"{prefix}/r/k020"
        )
    )
    assert [o.key for o in middle.objects] == [f"{prefix}/r/k{i:03d}" for i in range(10, 20)]
    page = store.run(store.list_objects(f"{prefix}/r/", max_keys=7))
    assert [o.key for o in page.objects] == [f"{prefix}/r/k{i:03d}" for i in range(7)]
    assert store.counter.by_operation["ListObjectsV2"] - before == 2


def test_fast_listing_parse_matches_botocores_own(store, prefix, location):
    """The listing parser (store/fastparse.py) gives what botocore's model-driven
    parser gives, keys that need URL-decoding included."""
    from aiobotocore.session import get_session

    from starburst_executor.store.s3 import botocore_config

    names = ["plain", "with space", "amp&lt<gt>", "ünï/cøde", "plus+sign", "pct%20"]
    for i, name in enumerate(names):
        store.run(store.put(f"{prefix}/f/{name}", b"x" * i))
    loc, creds = location

    async def both() -> tuple[dict, dict]:  # type: ignore[type-arg]
        ours = await store._ensure()
        params = {"Bucket": loc.bucket, "Prefix": f"{prefix}/f/", "MaxKeys": 4}
        async with get_session().create_client(
            "s3",
            region_name=loc.region,
            endpoint_url=loc.endpoint_url,
            aws_access_key_id=creds[0],
            aws_secret_access_key=creds[1],
            config=botocore_config(2),
        ) as plain:
            return await ours.list_objects_v2(**params), await plain.list_objects_v2(**params)

    fast, slow = store.run(both())
    for parsed in (fast, slow):
        parsed.pop("ResponseMetadata")
    assert fast == slow
    assert fast["IsTruncated"] and len(fast["Contents"]) == 4
    assert {c["Key"] for c in fast["Contents"]} <= {f"{prefix}/f/{n}" for n in names}


def test_an_error_or_a_cut_listing_sent_with_status_200_is_retried_as_a_500():
    from starburst_executor.store import fastparse

    class Shape:
        name = "ListObjectsV2Output"

    class Operation:
        output_shape = Shape()

    def status(body: bytes) -> int:
        response = {"status_code": 200, "body": body, "headers": {}}
        fastparse._handle_200_error(response_dict=response, operation_model=Operation())
        return int(response["status_code"])

    error = b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code></Error>'
    listing = b'<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><KeyCount>0</KeyCount></ListBucketResult>'
    assert status(error) == 500
    assert status(listing[:-10]) == 500
    assert status(listing) == 200


def test_stores_with_explicit_credentials_share_one_sdk_session_from_many_threads(location, prefix):
    """One SDK session per process serves every client with explicit credentials (the
    S3 model loads once), also when executors open their stores from 8 threads at once;
    a client that resolves its credentials from the environment keeps its own."""
    from concurrent.futures import ThreadPoolExecutor

    from starburst_executor.store import s3

    loc, creds = location
    made: list[object] = []
    # The SDK makes its model loader lazily; made here, every client must get this one.
    shared_loader = s3.shared_session().get_component("data_loader")

    def one(i: int) -> bytes:
        async def go() -> bytes:
            st = S3Store(loc, credentials=creds)
            try:
                await st.put(f"{prefix}/threads/{i}", b"x%d" % i)
                client = await st._ensure()
                made.append(client)
                return (await st.get(f"{prefix}/threads/{i}")).body
            finally:
                await st.close()

        return asyncio.run(go())

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(one, range(8))) == [b"x%d" % i for i in range(8)]
    assert len(made) == 8
    assert all(c._loader is shared_loader for c in made)  # type: ignore[attr-defined]

    async def from_environment() -> object:
        st = S3Store(loc)
        try:
            return (await st._ensure())._loader
        finally:
            await st.close()

    assert asyncio.run(from_environment()) is not shared_loader


def test_a_child_forked_while_the_session_lock_is_held_gets_a_free_lock():
    """A fork while another thread makes the shared session must not leave the child a
    lock that nobody will release (``multiprocessing`` forks by default on Linux)."""
    import os

    from starburst_executor.store import s3

    with s3._shared_session_lock:
        pid = os.fork()
        if pid == 0:  # the child: exit at once, 0 only if the lock is free
            os._exit(0 if s3._shared_session_lock.acquire(timeout=10) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_the_loopback_server_gets_a_patient_connect_timeout_and_aws_the_usual_one():
    """A connect to this machine's server is at once (or refused at once); on a loaded
    machine the client's loop can miss 5 s, which failed a listing beside two suites."""
    from starburst_executor.store.s3 import LOOPBACK_CONNECT_TIMEOUT, _client_kwargs

    for url in (
        "http://127.0.0.1:9000",
        "http://localhost",
        "http://[::1]:9000",
        "http://127.0.0.2",
        "http://[::ffff:127.0.0.1]:9000",
    ):
        local = StoreLocation(bucket="bkt", endpoint_url=url)
        timeout = _client_kwargs(local, None, 8)["config"].connect_timeout
        assert timeout == LOOPBACK_CONNECT_TIMEOUT, url
    aws = StoreLocation(bucket="bkt")
    other = StoreLocation(bucket="bkt", endpoint_url="https://minio.example:9000")
    assert _client_kwargs(aws, None, 8)["config"].connect_timeout == 5
    assert _client_kwargs(other, None, 8)["config"].connect_timeout == 5


def test_a_user_agent_is_built_once_per_feature_set_and_sent_as_botocore_builds_it(
    location, prefix, monkeypatch
):
    """botocore builds the header twice per request; the cache builds each distinct
    header once per client, and the headers sent are the ones botocore would send."""
    from botocore.useragent import UserAgentString

    built = []
    build = UserAgentString.to_string

    def counted(self: UserAgentString) -> str:
        built.append(self)
        return build(self)

    monkeypatch.setattr(UserAgentString, "to_string", counted)
    loc, creds = location

    async def sent(cached: bool) -> list[str]:
        st = S3Store(loc, credentials=creds)
        headers: list[str] = []
        try:
            client = await st._ensure()
            if not cached:
                del client._user_agent_creator.to_string  # botocore's own, per request
            client.meta.events.register(
                "before-send.s3", lambda request, **_: headers.append(request.headers["User-Agent"])
            )
            for i in range(3):
                await st.put(f"{prefix}/ua/{i}", b"x", if_none_match=True)
                await st.get(f"{prefix}/ua/{i}")
                await st.delete(f"{prefix}/ua/{i}")
            await st.list_objects(f"{prefix}/ua/")
            return headers
        finally:
            await st.close()

    uncached = asyncio.run(sent(cached=False))
    per_request = len(built)
    built.clear()
    cached = asyncio.run(sent(cached=True))
    assert cached == uncached and len(cached) == 10
    assert per_request >= 2 * len(uncached)  # what the cache saves: two builds a request
    assert 1 <= len(built) <= len(set(cached)) + 1, len(built)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_endpoint_that_keeps_refusing_fails_at_once_unless_a_proxy_carries_it(monkeypatch):
    url = f"http://127.0.0.1:{_closed_port()}"
    there = StoreLocation(bucket="starburst", endpoint_url=url)
    with pytest.raises(EndpointUnreachable, match=f"cannot connect to {url}: connection refused"):
        refuse_fast(there)
    # Through a proxy only the proxy's answer counts (botocore's rule, NO_PROXY included).
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:3128")
    refuse_fast(there)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with pytest.raises(EndpointUnreachable):
        refuse_fast(there)
    # The embedded server is started (and restarted) for the user: never probed here.
    refuse_fast(StoreLocation(bucket="starburst", endpoint_url=url, local_home="/nowhere"))


def test_a_host_name_that_does_not_resolve_is_named(monkeypatch):
    def no_such_name(address: object, timeout: float) -> socket.socket:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "create_connection", no_such_name)
    there = StoreLocation(bucket="starburst", endpoint_url="https://s3.exmaple.com")
    with pytest.raises(EndpointUnreachable, match=r"host name 's3\.exmaple\.com' does not resolve"):
        refuse_fast(there)

    def lookup_failed_for_now(address: object, timeout: float) -> socket.socket:
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "create_connection", lookup_failed_for_now)
    refuse_fast(there)  # botocore's retries decide


@pytest.mark.parametrize(
    "url", ["127.0.0.1:9000", "ftp://127.0.0.1:9000", "http://127.0.0.1:port", "http://:9000"]
)
def test_an_endpoint_that_is_not_a_url_is_a_config_error(url):
    with pytest.raises(ConfigError, match=r"invalid endpoint .*http\(s\)://host\[:port\]"):
        StoreLocation(bucket="starburst", endpoint_url=url)
