"""The S3 implementation of ``ObjectStore``: the only module that calls S3 for data.

Every request passes through ``_call``, which counts it, lets botocore retry it
(standard mode: bounded attempts, exponential backoff with jitter) and turns
provider error codes into the library's own exceptions, naming the key.

Uploads go without ``Expect: 100-continue`` (one round trip, not two).

Two answers of real S3 that the local server never gives are handled here:

* **409 ConditionalRequestConflict**: conditional writes to one key overlapped and
  this one was not applied. S3 says to retry, and it is not "lost the race" (412):
  conditional PUTs and DELETEs are re-sent with bounded, jittered backoff; a later
  412 then goes through the caller's read-back as usual.
* **403 for a missing key**: without an ``s3:ListBucket`` grant that applies to the
  request (the task role grants it under an ``s3:prefix`` condition, which an object
  request does not carry), GET and HEAD of a missing key answer 403, not 404. A 403
  is therefore checked with a one-key LIST (which does carry the prefix): no such
  key means ``ObjectNotFound``; otherwise it was a real refusal.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import random
import socket
import threading
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, TypeVar

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    PartialCredentialsError,
)

from ..config import ENV_ENDPOINT, StoreLocation, check_endpoint_url
from ..errors import (
    AccessDenied,
    BucketNotFound,
    CredentialsMissing,
    EndpointUnreachable,
    ObjectNotFound,
    PreconditionFailed,
    StoreError,
)
from .base import Blob, Listing, ObjectInfo, PutResult, RequestCounter

if TYPE_CHECKING:
    from aiobotocore.session import AioSession
    from botocore.config import Config

# aiobotocore (with aiohttp) and botocore's client modules are imported when the first
# client is made, not with this module: a task process imports the user's module, which
# often imports the executors, and should not pay half a second of CPU for an SDK it
# never calls.

T = TypeVar("T")
log = logging.getLogger(__name__)

_CONFLICT_CODES = {"PreconditionFailed", "412"}
_OVERLAP_CODES = {"ConditionalRequestConflict", "409"}
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}
_DENIED_CODES = {"AccessDenied", "403"}
# 409 retries: about 8 s in all before giving up, enough for a burst of racers to clear.
CONFLICT_ATTEMPTS = 8
CONFLICT_BASE_DELAY = 0.05
CONFLICT_MAX_DELAY = 2.0


# A server on this machine answers a connect at once, or refuses it at once when it is
# down; a connect still pending after 5 s means this machine is overloaded (seen at a
# load of 12 on 2 cores: the client's loop did not run for 5 s), and waiting beats
# failing the call.
LOOPBACK_CONNECT_TIMEOUT = 30.0


def botocore_config(max_pool_connections: int = 64, connect_timeout: float = 5) -> Config:
    """The client settings shared by the data plane and the control plane."""
    from botocore.config import Config

    return Config(
        retries={"mode": "standard", "max_attempts": 6},
        connect_timeout=connect_timeout,
        read_timeout=120,
        max_pool_connections=max_pool_connections,
        s3={"addressing_style": "path"},
    )


def strip_etag(etag: str) -> str:
    """ETags compare without quotes (CopyObject returns them bare, PUT quoted)."""
    return etag.strip('"')


def _server_time(response: dict[str, Any]) -> datetime:
    date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    if date:
        return parsedate_to_datetime(date)
    return datetime.now(timezone.utc)


def _error_code(err: ClientError) -> tuple[str, str]:
    code = str(err.response.get("Error", {}).get("Code", ""))
    status = str(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
    return code, status


def is_overlap(err: BaseException) -> bool:
    """409 ConditionalRequestConflict: a concurrent conditional write; retry it."""
    if not isinstance(err, ClientError):
        return False
    code, status = _error_code(err)
    return code in _OVERLAP_CODES or status == "409"


def is_denied(err: BaseException) -> bool:
    if not isinstance(err, ClientError):
        return False
    code, status = _error_code(err)
    return code in _DENIED_CODES or status == "403"


def translate_error(
    err: Exception,
    *,
    operation: str,
    bucket: str,
    key: str,
    location: StoreLocation | None = None,
) -> StoreError:
    """Map an SDK exception onto the library's tree, with the next step in the message."""
    where = f"s3://{bucket}/{key}"
    endpoint = location.endpoint_url if location else None
    embedded = location is not None and location.local_home is not None
    if isinstance(err, (NoCredentialsError, PartialCredentialsError)):
        if embedded:  # its credentials file went missing or unreadable
            fix = "run `starburst local start`, which writes the embedded server's credentials"
        elif endpoint:
            fix = (
                f"set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) to the keys "
                f"of the store at {endpoint}, or unset STARBURST_S3_ENDPOINT and "
                "STARBURST_BUCKET to use the embedded local server"
            )
        else:
            fix = "run `aws configure` or set AWS_PROFILE (`starburst doctor` checks them)"
        return CredentialsMissing(f"no credentials for s3:{operation} on {where} ({err}); {fix}")
    if isinstance(err, ClientError):
        code, status = _error_code(err)
        if code in _CONFLICT_CODES or status == "412":
            return PreconditionFailed(f"conditional {operation} on {where} lost its race ({code})")
        if code in _OVERLAP_CODES or status == "409":
            return StoreError(
                f"conditional {operation} on {where} kept overlapping other writers' "
                f"(409 {code}) after {CONFLICT_ATTEMPTS} attempts; too many workers race "
                "for one key: retry later or use fewer workers"
            )
        if code in _MISSING_CODES or (status == "404" and code != "NoSuchBucket"):
            return ObjectNotFound(f"no object at {where}")
        if code == "NoSuchBucket":
            return BucketNotFound(
                f"bucket {bucket!r} does not exist; check the bucket name and region, "
                "or run `starburst setup`"
            )
        if code in {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"}:
            return AccessDenied(
                f"{code}: s3:{operation} on {where} was refused; grant the action to these "
                "credentials or check which credentials are in use"
            )
        return StoreError(f"s3:{operation} on {where} failed: {code} {err}")
    if embedded:
        fix = (
            "the embedded server may have stopped: `starburst local status` checks it and "
            "`starburst local start` starts it"
        )
    elif endpoint:
        fix = f"check that a server listens at {endpoint} (endpoint_url / STARBURST_S3_ENDPOINT)"
    else:
        fix = "check the network and the region"
    return EndpointUnreachable(
        f"s3:{operation} on {where} failed: cannot reach {endpoint or 'AWS S3'} ({err}); {fix}"
    )


REFUSED_FOR = 2.0  # a server that is starting refuses for a moment; a wrong port for good


def refuse_fast(location: StoreLocation, timeout: float = 2.0) -> None:
    """Raise ``EndpointUnreachable`` at once when an explicit endpoint keeps refusing
    connections (for ``REFUSED_FOR`` seconds) or its host name does not resolve.

    Botocore retries a connect error with backoff, about 30 s before the first error
    reaches a user who mistyped ``endpoint_url``. A connect that is only slow, a
    transient name lookup and an endpoint reached through a proxy (botocore's own rule)
    are left to botocore's retries. Runs in the caller's thread, before its first request.
    """
    url = location.endpoint_url
    if not url or location.local_home is not None:  # AWS, or the server started for us
        return
    from botocore.utils import get_environ_proxies

    host, port = check_endpoint_url(url)
    if get_environ_proxies(url).get(urllib.parse.urlsplit(url).scheme):
        return
    deadline = time.monotonic() + REFUSED_FOR
    cause: OSError
    while True:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            return
        except ConnectionRefusedError as err:
            if time.monotonic() < deadline:
                time.sleep(0.1)  # polling the port with a bounded deadline
                continue
            why, fix, cause = "connection refused", "check that an S3 server listens there", err
        except socket.gaierror as err:
            if err.errno != socket.EAI_NONAME:
                return
            why, fix, cause = (
                f"host name {host!r} does not resolve",
                "check its spelling and the network",
                err,
            )
        except OSError:
            return
        raise EndpointUnreachable(
            f"cannot connect to {url}: {why}; {fix} (endpoint_url / {ENV_ENDPOINT})"
        ) from cause


def _no_expect_continue(params: dict[str, Any], **_: Any) -> None:
    """Send bodies at once: botocore asks for ``Expect: 100-continue`` on uploads, so
    every PUT waits a round trip for the server's 100 before its body (about 49 ms
    instead of 27 ms at 20 ms per request). Our bodies are small or already in memory;
    a refusal costs at most the body sent in vain. Registered after botocore's own
    handler, so it runs after it."""
    headers = params.get("headers")
    if headers is not None:
        headers.pop("Expect", None)


USER_AGENTS_CACHED = 64  # distinct feature sets a client's User-Agent cache holds


def cache_user_agent(client: Any) -> None:
    """Build each of the client's User-Agent headers once, not twice per request.

    botocore assembles the header from a few dozen sanitised parts when it builds each
    request and again once the request is made (its request-created handler): 9% of the
    client's CPU per PUT, measured (2.32 -> 2.12 ms), which bounds one client's submits
    per second. The string depends only on the client (fixed once made) and on the
    feature ids of the client and the request, so it is kept per set of features. A
    botocore without the parts this relies on keeps building it per request."""
    try:
        from botocore.context import get_context
    except ImportError:
        return
    creator: Any = getattr(client, "_user_agent_creator", None)
    build = getattr(creator, "to_string", None)
    if build is None or not hasattr(creator, "_client_features"):
        return
    built: dict[tuple[frozenset[str], frozenset[str]], str] = {}

    def to_string() -> str:
        context = get_context()
        key = (
            frozenset(context.features) if context is not None else frozenset(),
            frozenset(creator._client_features or ()),
        )
        found = built.get(key)
        if found is None:
            if len(built) >= USER_AGENTS_CACHED:
                built.clear()
            found = built[key] = build()
        return found

    creator.to_string = to_string  # the request-created handler calls it on the instance


_prewarmed_session: Any = None  # set in worker template processes only (prewarm)
# The SDK session that clients with explicit credentials share (the embedded server's):
# loading the S3 model and endpoint rules once per process instead of once per client
# saves 130 to 240 ms of CPU per executor. Clients that resolve credentials from the
# environment get a session of their own, so each resolves them afresh.
_shared_session: Any = None
_shared_session_lock = threading.Lock()


def new_session() -> AioSession:
    """An SDK session whose clients parse listings and timestamps fast (fastparse)."""
    from aiobotocore.session import get_session

    from . import fastparse

    session: AioSession = fastparse.install(get_session())
    return session


def shared_session() -> AioSession:
    """The process's session for clients with explicit credentials, made on first use.

    The SDK is imported outside the lock: a fork while another thread held it for that
    long would leave the child a lock nobody releases (reset in the child anyway)."""
    global _shared_session
    if _shared_session is None:
        made = new_session()
        with _shared_session_lock:
            if _shared_session is None:
                _shared_session = made
    session: AioSession = _shared_session
    return session


def _new_lock_in_child() -> None:
    global _shared_session_lock
    _shared_session_lock = threading.Lock()


os.register_at_fork(after_in_child=_new_lock_in_child)


def prewarm() -> None:
    """Load the SDK's data (service model, endpoint rules) into one session that every
    S3Store of this process then uses: for a process that forks workers, which inherit
    it and skip about 200 ms per client. Ordinary processes do not call this."""
    global _prewarmed_session

    async def load(session: Any) -> None:
        async with session.create_client(
            "s3",
            region_name="us-east-1",
            endpoint_url="http://127.0.0.1:9",  # never contacted: creating the client loads
            aws_access_key_id="prewarm",
            aws_secret_access_key="prewarm",
            config=botocore_config(1),
            verify=False,
        ):
            pass

    session = new_session()
    asyncio.run(load(session))
    _prewarmed_session = session


# In a worker template only: S3 clients made (not yet opened) before a fork, by what
# they connect to. A forked worker opens its inherited copy instead of making one,
# about 20 ms of every local per-call worker's start.
_stocked: dict[tuple[object, ...], Any] = {}


def _is_loopback(url: str) -> bool:
    """True for an endpoint on this machine: localhost, 127.0.0.0/8 or ``[::1]``."""
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:  # a name other than localhost
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1
    return (mapped or address).is_loopback


def _client_kwargs(
    location: StoreLocation, credentials: tuple[str, str] | None, pool: int
) -> dict[str, Any]:
    loopback = _is_loopback(location.endpoint_url or "")
    config = botocore_config(pool, LOOPBACK_CONNECT_TIMEOUT) if loopback else botocore_config(pool)
    kwargs: dict[str, Any] = {"region_name": location.region, "config": config}
    if location.endpoint_url:
        kwargs["endpoint_url"] = location.endpoint_url
        if location.endpoint_url.startswith("http://"):
            # Plain HTTP has no certificate to verify; this skips loading the CA
            # bundle, about 80 ms of every client's first request.
            kwargs["verify"] = False
    if credentials:
        kwargs["aws_access_key_id"] = credentials[0]
        kwargs["aws_secret_access_key"] = credentials[1]
    return kwargs


def _stock_key(kwargs: dict[str, Any]) -> tuple[object, ...]:
    return tuple(
        (k, v.max_pool_connections if k == "config" else v) for k, v in sorted(kwargs.items())
    )


def stock_client(
    location: StoreLocation, credentials: tuple[str, str] | None, max_pool_connections: int
) -> None:
    """In a worker template (after ``prewarm``): make the client that workers forked
    later for ``location`` will open. Only with explicit credentials: a client without
    them would resolve the template's environment's, not the worker's."""
    if _prewarmed_session is None or not credentials:
        return
    kwargs = _client_kwargs(location, credentials, max_pool_connections)
    key = _stock_key(kwargs)
    if key in _stocked:
        return

    async def make() -> Any:
        # create_client() returns an async context whose first half makes the client
        # and whose second opens its connection pool, which must not cross a fork.
        return await _prewarmed_session.create_client("s3", **kwargs)._coro

    _stocked[key] = asyncio.run(make())


class S3Store:
    """An ``ObjectStore`` over one bucket, through aiobotocore.

    Create it inside a running event loop and ``await close()`` it on the same loop.
    """

    def __init__(
        self,
        location: StoreLocation,
        *,
        credentials: tuple[str, str] | None = None,
        counter: RequestCounter | None = None,
        max_pool_connections: int = 64,
        conflict_attempts: int = CONFLICT_ATTEMPTS,
    ) -> None:
        self.location = location
        self.conflict_attempts = max(1, conflict_attempts)
        self.bucket = location.bucket
        self.counter = counter if counter is not None else RequestCounter()
        self._credentials = credentials
        self._pool = max_pool_connections
        self._client: Any = None
        self._stack = contextlib.AsyncExitStack()
        self._lock = asyncio.Lock()

    async def _ensure(self) -> Any:
        if self._client is None:
            async with self._lock:
                if self._client is None:
                    kwargs = _client_kwargs(self.location, self._credentials, self._pool)
                    made = _stocked.pop(_stock_key(kwargs), None)
                    if made is not None:
                        log.debug("S3 client for %s made before this fork", self.bucket)
                    else:
                        session = _prewarmed_session or (
                            shared_session() if self._credentials else new_session()
                        )
                        made = session.create_client("s3", **kwargs)
                    client = await self._stack.enter_async_context(made)
                    from . import fastparse

                    fastparse.install_on_client(client)
                    cache_user_agent(client)
                    client.meta.events.register("before-send.s3", self._count)
                    client.meta.events.register("before-call.s3", _no_expect_continue)
                    self._client = client
        return self._client

    def _count(self, event_name: str = "", **_: Any) -> None:
        self.counter.add(event_name.rsplit(".", 1)[-1])

    async def _call(
        self,
        operation: str,
        key: str,
        fn: Callable[[Any], Awaitable[T]],
        *,
        conditional: bool = False,
    ) -> T:
        """One request, translated; a conditional one is re-sent on 409 (see the top)."""
        client = await self._ensure()
        attempt = 0
        while True:
            attempt += 1
            try:
                return await fn(client)
            except (ClientError, BotoCoreError, OSError, asyncio.TimeoutError) as err:
                if conditional and is_overlap(err) and attempt < self.conflict_attempts:
                    cap = min(CONFLICT_MAX_DELAY, CONFLICT_BASE_DELAY * 2 ** (attempt - 1))
                    await asyncio.sleep(random.uniform(cap / 2, cap))
                    continue
                raise translate_error(
                    err, operation=operation, bucket=self.bucket, key=key, location=self.location
                ) from err

    async def _missing_or_denied(self, operation: str, key: str, err: ClientError) -> StoreError:
        """A 403 on GET/HEAD: ObjectNotFound when a one-key LIST shows no such key."""

        async def call(client: Any) -> bool:
            resp = await client.list_objects_v2(
                Bucket=self.bucket, Prefix=key, MaxKeys=1, **self.location.owner_extra()
            )
            return any(item["Key"] == key for item in resp.get("Contents", []))

        try:
            present = await self._call("ListObjectsV2", key, call)
        except AccessDenied:
            return translate_error(
                err, operation=operation, bucket=self.bucket, key=key, location=self.location
            )
        if present:
            return translate_error(
                err, operation=operation, bucket=self.bucket, key=key, location=self.location
            )
        return ObjectNotFound(f"no object at s3://{self.bucket}/{key}")

    async def put(
        self,
        key: str,
        body: bytes,
        *,
        if_none_match: bool = False,
        if_match: str | None = None,
    ) -> PutResult:
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "Body": body}
        if if_none_match:
            params["IfNoneMatch"] = "*"
        if if_match is not None:
            params["IfMatch"] = f'"{strip_etag(if_match)}"'
        params.update(self.location.put_extra())

        async def call(client: Any) -> PutResult:
            resp = await client.put_object(**params)
            return PutResult(strip_etag(resp["ETag"]), _server_time(resp))

        conditional = if_none_match or if_match is not None
        return await self._call("PutObject", key, call, conditional=conditional)

    async def get(self, key: str) -> Blob:
        denied: list[ClientError] = []

        async def call(client: Any) -> Blob | None:
            try:
                resp = await client.get_object(
                    Bucket=self.bucket, Key=key, **self.location.owner_extra()
                )
            except ClientError as err:
                if is_denied(err):
                    denied.append(err)
                    return None
                raise
            async with resp["Body"] as stream:
                body = await stream.read()
            return Blob(body, strip_etag(resp["ETag"]), resp["LastModified"])

        blob = await self._call("GetObject", key, call)
        if blob is None:
            raise await self._missing_or_denied("GetObject", key, denied[0]) from denied[0]
        return blob

    async def get_if_exists(self, key: str) -> Blob | None:
        """The object, or None when it is missing (404). A 403 raises ``AccessDenied``
        at once, without the one-key LIST ``get`` makes: the caller that polls many keys
        is better served by its own listing then."""

        async def call(client: Any) -> Blob | None:
            try:
                resp = await client.get_object(
                    Bucket=self.bucket, Key=key, **self.location.owner_extra()
                )
            except ClientError as err:
                code, status = _error_code(err)
                if code in _MISSING_CODES or (status == "404" and code != "NoSuchBucket"):
                    return None
                raise
            async with resp["Body"] as stream:
                body = await stream.read()
            return Blob(body, strip_etag(resp["ETag"]), resp["LastModified"])

        return await self._call("GetObject", key, call)

    async def exists(self, key: str) -> bool:
        denied: list[ClientError] = []

        async def call(client: Any) -> bool | None:
            try:
                await client.head_object(Bucket=self.bucket, Key=key, **self.location.owner_extra())
            except ClientError as err:
                status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if status == 404:
                    return False
                if is_denied(err):
                    denied.append(err)
                    return None
                raise
            return True

        found = await self._call("HeadObject", key, call)
        if found is None:
            error = await self._missing_or_denied("HeadObject", key, denied[0])
            if isinstance(error, ObjectNotFound):
                return False
            raise error from denied[0]
        return found

    async def list_objects(
        self,
        prefix: str,
        *,
        start_after: str | None = None,
        end_before: str | None = None,
        max_keys: int | None = None,
    ) -> Listing:
        async def call(client: Any) -> Listing:
            objects: list[ObjectInfo] = []
            server_time: datetime | None = None
            params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
            params.update(self.location.owner_extra())
            if start_after:
                params["StartAfter"] = start_after
            if max_keys is not None:
                params["MaxKeys"] = max_keys
            while True:
                resp = await client.list_objects_v2(**params)
                if server_time is None:
                    server_time = _server_time(resp)
                for item in resp.get("Contents", []):
                    if end_before is not None and item["Key"] >= end_before:
                        return Listing(objects, server_time)
                    objects.append(
                        ObjectInfo(
                            item["Key"],
                            strip_etag(item.get("ETag", "")),
                            item["LastModified"],
                            int(item.get("Size", 0)),
                        )
                    )
                if max_keys is not None or not resp.get("IsTruncated"):
                    break
                params["ContinuationToken"] = resp["NextContinuationToken"]
            assert server_time is not None
            return Listing(objects, server_time)

        return await self._call("ListObjectsV2", prefix, call)

    async def list_prefixes(self, prefix: str) -> list[str]:
        async def call(client: Any) -> list[str]:
            out: list[str] = []
            params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix, "Delimiter": "/"}
            params.update(self.location.owner_extra())
            while True:
                resp = await client.list_objects_v2(**params)
                out.extend(p["Prefix"] for p in resp.get("CommonPrefixes", []))
                if not resp.get("IsTruncated"):
                    return out
                params["ContinuationToken"] = resp["NextContinuationToken"]

        return await self._call("ListObjectsV2", prefix, call)

    async def delete(self, key: str, *, if_match: str | None = None) -> None:
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        params.update(self.location.owner_extra())
        if if_match is not None:
            params["IfMatch"] = f'"{strip_etag(if_match)}"'

        async def call(client: Any) -> None:
            await client.delete_object(**params)

        await self._call("DeleteObject", key, call, conditional=if_match is not None)

    async def delete_prefix(self, prefix: str) -> int:
        listing = await self.list_objects(prefix)
        keys = [o.key for o in listing.objects]

        async def call(client: Any) -> int:
            for start in range(0, len(keys), 1000):
                batch = keys[start : start + 1000]
                await client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
                    **self.location.owner_extra(),
                )
            return len(keys)

        return await self._call("DeleteObjects", prefix, call)

    async def close(self) -> None:
        await self._stack.aclose()
        self._client = None
