"""The worker side of shipped user code: fetch a session's code bundle, importable.

``prepare_user_code`` runs before a payload is unpickled. For each bundle the
payload names (``_core.codec.payload_code``) it makes sure the bundle is
unpacked in the code cache (downloaded once per machine, its sha256 checked)
and first on ``sys.path``, so ``mylib.model.fit`` pickled by reference on the
client imports here. Calling it again for the same bundle costs a path lookup.
The client side (what is shipped) is ``_core.usercode``.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import os
import shutil
import stat
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from .._core.codec import payload_blobs, payload_code
from .._core.layout import code_key
from ..errors import ConfigError, CorruptObject, ObjectNotFound

COMPLETE = ".complete"
BlobKey = Callable[[str], str]


def default_cache_dir() -> Path:
    """A per-user folder under the temporary directory (container users have no home)."""
    return Path(tempfile.gettempdir()) / f"starburst-code-{os.getuid()}"


def _checked_cache(cache_dir: Path) -> Path:
    cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = cache_dir.stat()
    if info.st_uid != os.getuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(
            f"the code cache {cache_dir} belongs to another user or is writable by others; "
            "remove it (workers recreate it)"
        )
    return cache_dir


def _unpack(data: bytes, target: Path) -> None:
    """Unpack into a fresh folder beside ``target``, then rename: whole or not at all."""
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            archive.extractall(staging)  # extractall drops absolute and '..' parts
        (staging / COMPLETE).touch()
        try:
            os.replace(staging, target)
        except OSError:
            if not (target / COMPLETE).exists():
                raise
            # Another worker on this machine unpacked the same bundle first.
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def prepare_user_code(
    payload: bytes,
    *,
    key: str,
    prefix: str,
    fetch: Callable[[str], bytes],
    cache_dir: Path | None = None,
) -> list[Path]:
    """Make the code bundles payload ``key`` names importable; returns their folders.

    ``fetch(key)`` returns an object's bytes from the session's store. Raises
    ``CorruptObject`` when a bundle is missing or does not match its digest.
    """
    digests = payload_code(payload, key=key)
    if not digests:
        return []
    cache = _checked_cache(cache_dir or default_cache_dir())
    folders = []
    for digest in reversed(digests):  # the first named ends up first on sys.path
        folder = cache / digest
        if not (folder / COMPLETE).exists():
            bundle_key = code_key(prefix, digest)
            data = _fetch_verified(
                fetch,
                bundle_key,
                digest,
                missing=f"payload {key} needs the code bundle {bundle_key}, which is missing; "
                "submit the task again from the client (it uploads its code again)",
                mismatch=f"code bundle {bundle_key} does not match its digest; delete it and "
                "submit again from the client",
            )
            _unpack(data, folder)
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
        folders.append(folder)
    importlib.invalidate_caches()
    return folders


def _fetch_verified(
    fetch: Callable[[str], bytes], key: str, digest: str, *, missing: str, mismatch: str
) -> bytes:
    """A content-addressed object, checked against its name (``CorruptObject`` if not)."""
    try:
        data = fetch(key)
    except ObjectNotFound:
        raise CorruptObject(missing) from None
    if hashlib.sha256(data).hexdigest() != digest:
        raise CorruptObject(mismatch)
    return data


def prepare_pieces(
    payload: bytes, *, key: str, folder: Path, fetch: Callable[[str], bytes], blob_key: BlobKey
) -> dict[str, str]:
    """The files holding the pieces (big closures or arguments) a payload refers to:
    each fetched once into ``folder`` (hash checked, written whole), then reused."""
    out: dict[str, str] = {}
    for digest in payload_blobs(payload, key=key):
        path = folder / digest
        if not path.exists():
            source = blob_key(digest)
            data = _fetch_verified(
                fetch,
                source,
                digest,
                missing=f"payload {key} refers to {source}, which is missing (deleted with "
                "cleanup(force=True)?); resubmit the task",
                mismatch=f"{source} does not hash to its name; resubmit the task",
            )
            staging = path.with_name(f".{digest}.{os.getpid()}")
            staging.write_bytes(data)
            os.replace(staging, path)
        out[digest] = str(path)
    return out
