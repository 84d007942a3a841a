"""Conditional writes that survive retries.

A conditional PUT whose response is lost (a reset, a 503 after the server applied it)
is retried by the SDK and then answers 412 against *our own* write. So a 412 after a
retry is read back once: when the object holds exactly our bytes, the write was ours and
succeeded; otherwise somebody else won. A 412 on the first attempt is a plain lost race
and costs nothing more. This makes every create-only and IfMatch write idempotent.
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
    except PreconditionFailed as err:
        if not err.retried:
            return None
        try:
            current = await store.get(key)
        except ObjectNotFound:
            return None
        return current.etag if current.body == body else None
    return put.etag
