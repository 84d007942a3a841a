"""Conditional writes that survive retries.

A conditional PUT whose response is lost (a reset, a 503 after the server applied it)
is retried and then answers 412 against *our own* write. So every 412 is read back
once: when the object holds exactly our bytes, the write was ours and succeeded;
otherwise somebody else won. This makes every create-only and IfMatch write idempotent.
(The SDK's retry count cannot decide it: a dropped pooled connection is retried below
it, unreported.)
"""

from __future__ import annotations

from ..errors import ObjectNotFound, PreconditionFailed
from ..store.base import ObjectStore


async def conditional_put(
    store: ObjectStore,
    key: str,
    body: bytes,
    *,
    if_none_match: bool = False,
    if_match: str | None = None,
) -> str | None:
    """The new ETag, or None when another writer's object is there."""
    try:
        put = await store.put(key, body, if_none_match=if_none_match, if_match=if_match)
    except PreconditionFailed:
        try:
            current = await store.get(key)
        except ObjectNotFound:
            return None
        return current.etag if current.body == body else None
    return put.etag
