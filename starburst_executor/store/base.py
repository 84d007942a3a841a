"""The object-store interface the core is written against.

The core never talks to an SDK: it calls these few coroutines. ``S3Store`` in
``store.s3`` is the only implementation that reaches the network.

Contract every implementation keeps:

* ``put(..., if_none_match=True)`` creates the key or raises ``PreconditionFailed``;
  ``put(..., if_match=etag)`` replaces the key only while its ETag is ``etag``
  (a missing key also raises ``PreconditionFailed``).
* ETags are returned without quotes.
* ``list`` is paginated underneath and returns every key, in key order, after
  ``start_after``, plus the server's clock at the time of the listing.
* ``get_if_exists`` answers None for a missing key (404) and raises ``AccessDenied``
  on a 403, which its caller may read as "missing, or not allowed: list instead".
* ``get`` and ``exists`` report a missing key as missing (``ObjectNotFound``/False)
  even where the provider answers 403 for it (S3 without a ListBucket grant that
  applies to object requests).
* A conditional write that overlaps another (S3's 409 ConditionalRequestConflict)
  is retried inside the store; ``PreconditionFailed`` only ever means a lost race.
* Failures raise ``errors.StoreError`` subclasses naming the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True)
class ObjectInfo:
    """One entry of a listing."""

    key: str
    etag: str
    last_modified: datetime
    size: int


@dataclass(frozen=True)
class Listing:
    """Keys under a prefix and the server's clock when they were listed."""

    objects: list[ObjectInfo]
    server_time: datetime


@dataclass(frozen=True)
class Blob:
    """An object's body with its ETag and modification time."""

    body: bytes
    etag: str
    last_modified: datetime


@dataclass(frozen=True)
class PutResult:
    """What a successful PUT tells: the new ETag and the server's clock."""

    etag: str
    server_time: datetime


@dataclass
class RequestCounter:
    """HTTP requests sent to the store, by operation name (retries included)."""

    by_operation: dict[str, int] = field(default_factory=dict)

    def add(self, operation: str) -> None:
        self.by_operation[operation] = self.by_operation.get(operation, 0) + 1

    @property
    def total(self) -> int:
        return sum(self.by_operation.values())

    def snapshot(self) -> Mapping[str, int]:
        return dict(self.by_operation)


class ObjectStore(Protocol):
    """Asynchronous object store: the data plane of sessions."""

    counter: RequestCounter

    async def put(
        self,
        key: str,
        body: bytes,
        *,
        if_none_match: bool = False,
        if_match: str | None = None,
    ) -> PutResult: ...

    async def get(self, key: str) -> Blob: ...

    async def get_if_exists(self, key: str) -> Blob | None:
        """None for a missing key; a provider's 403 for one raises ``AccessDenied``."""
        ...

    async def exists(self, key: str) -> bool: ...

    async def list_objects(
        self,
        prefix: str,
        *,
        start_after: str | None = None,
        end_before: str | None = None,
        max_keys: int | None = None,
    ) -> Listing:
        """Keys under ``prefix`` in order, after ``start_after`` and before
        ``end_before`` (paging stops there), at most ``max_keys`` of them (one page)."""
        ...

    async def list_prefixes(self, prefix: str) -> list[str]: ...

    async def delete(self, key: str, *, if_match: str | None = None) -> None: ...

    async def delete_prefix(self, prefix: str) -> int: ...

    async def close(self) -> None: ...
