"""The user's own code travels by value: which modules, zipped, content-addressed.

cloudpickle pickles a function by reference (``mylib.model.fit``) whenever its
module can be imported, so a worker needs the module itself. Modules installed
from a registry reach the worker through the image (its lock); the user's own
ones do not: the script's folder, the project being worked on, editable
installs. Those are zipped here and uploaded once per content::

    client                                           S3                       worker
    ──────                                           ──                       ──────
    scan sys.modules: module files outside the       <prefix>/code/<sha>.zip
    stdlib and site-packages ──▶ zip (sorted,  ──PUT IfNoneMatch (HEAD first)──▶
    fixed timestamps) ──▶ sha256 = its key
    payload = SBP2 + <sha> + pickle ─────────────▶ tasks/<t> ──GET──▶ prepare_user_code:
                                                                      GET the zip once, check
                                                                      its sha, unpack to a cache,
                                                                      put it first on sys.path,
                                                                      then unpickle

What is shipped, per top-level name of a loaded module that lives outside the
library folders: its package folder (every file, less ``__pycache__``, dot
files, compiled extensions and files over ``MAX_FILE_BYTES``), or the single
``.py`` file of a top-level module. ``__main__`` is not shipped (cloudpickle
sends its functions by value) and neither is starburst_executor (the image has
it). A bundle is built when a session first submits, and again only when new
modules were imported since, so edits reach the next session, not a running one.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import io
import logging
import os
import site
import sys
import sysconfig
import threading
import zipfile
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, PreconditionFailed
from ..store.base import ObjectStore
from .layout import code_key

log = logging.getLogger("starburst_executor")

MAX_FILE_BYTES = 10 * 1024**2  # a bigger file next to the code is data, not code
MAX_BUNDLE_BYTES = 100 * 1024**2
NOT_SHIPPED_NAMES = frozenset({"__main__", "__mp_main__", "starburst_executor"})
_EXTENSIONS = tuple(importlib.machinery.EXTENSION_SUFFIXES)
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class CodeBundle:
    """A zip of the user's modules; ``digest`` (its sha256) names it in the store."""

    digest: str
    data: bytes
    modules: tuple[str, ...]
    files: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...] = ()

    def describe(self) -> str:
        shown = ", ".join(self.modules)
        return f"{shown} ({len(self.files)} files, {len(self.data):,} bytes, {self.digest[:12]})"


@dataclass
class _Sources:
    """Top-level name -> the file or folder to ship, and what was left out and why."""

    found: dict[str, tuple[Path, Path]] = field(default_factory=dict)  # name -> (root, source)
    skipped: dict[str, str] = field(default_factory=dict)


def library_roots() -> tuple[str, ...]:
    """Folders whose modules come from the interpreter or a registry, never shipped."""
    roots: set[str] = set()
    bases = [
        {},
        {
            "base": sys.base_prefix,
            "platbase": sys.base_exec_prefix,
            "installed_base": sys.base_prefix,
            "installed_platbase": sys.base_exec_prefix,
        },
    ]
    for variables in bases:
        paths = sysconfig.get_paths(vars=variables)
        roots.update(paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths)
    roots.update(getattr(site, "getsitepackages", list)())
    if site.ENABLE_USER_SITE is not False:
        roots.add(site.getusersitepackages())
    roots.update(p for p in sys.path if Path(p).name in {"site-packages", "dist-packages"})
    return tuple(sorted({os.path.realpath(r) + os.sep for r in roots if r}))


def _under(path: str, roots: tuple[str, ...]) -> bool:
    return any(path.startswith(root) for root in roots)


def _source_of(name: str, file: str) -> tuple[Path, Path] | None:
    """(sys.path root, file or folder to ship) of module ``name`` loaded from ``file``."""
    path = Path(os.path.abspath(file))
    parts = name.split(".")
    if path.stem == "__init__":
        folder, names = path.parent, parts
    else:
        if path.stem != parts[-1]:
            return None
        folder, names = path.parent, parts[:-1]
    for expected in reversed(names):
        if folder.name != expected:
            return None  # loaded under a name its path does not spell: cannot be placed
        folder = folder.parent
    root = folder
    top = root / parts[0]
    return root, (top if top.is_dir() else path)


def find_user_modules(
    modules: Mapping[str, object] | None = None, roots: tuple[str, ...] | None = None
) -> _Sources:
    """The user's own loaded modules, by top-level name."""
    modules = dict(sys.modules if modules is None else modules)
    roots = library_roots() if roots is None else roots
    sources = _Sources()
    for name, module in sorted(modules.items()):
        top = name.partition(".")[0]
        if top in NOT_SHIPPED_NAMES or top in sources.found or top in sources.skipped:
            continue
        file = getattr(module, "__file__", None)
        if not isinstance(file, str) or not os.path.isfile(file):
            continue  # built-in, frozen, namespace package or loaded from an archive
        if _under(os.path.realpath(file), roots):
            continue
        if file.endswith(_EXTENSIONS):
            sources.skipped[top] = "compiled extension module: install it in the image instead"
            continue
        if not file.endswith(".py"):
            continue
        placed = _source_of(name, file)
        if placed is not None and not _under(os.path.realpath(placed[1]), roots):
            sources.found[top] = placed
    return sources


def _files_of(root: Path, source: Path, skipped: dict[str, str]) -> list[tuple[str, Path]]:
    if source.is_file():
        return [(source.relative_to(root).as_posix(), source)]
    files: list[tuple[str, Path]] = []
    for folder, dirs, names in os.walk(source):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith("."))
        for name in sorted(names):
            path = Path(folder) / name
            arc = path.relative_to(root).as_posix()
            if name.startswith(".") or name.endswith((".pyc", ".pyo")) or not path.is_file():
                continue
            if name.endswith(_EXTENSIONS):
                skipped[arc] = "compiled extension module: install it in the image instead"
            elif path.stat().st_size > MAX_FILE_BYTES:
                skipped[arc] = f"over {MAX_FILE_BYTES // 1024**2} MB: data, not code"
            else:
                files.append((arc, path))
    return files


def build_bundle(sources: _Sources) -> CodeBundle | None:
    """Zip the sources reproducibly: the same files give the same bytes and digest."""
    if not sources.found:
        return None
    skipped = dict(sources.skipped)
    entries: dict[str, Path] = {}
    for root, source in sources.found.values():
        for arc, path in _files_of(root, source, skipped):
            entries.setdefault(arc, path)
    total = sum(p.stat().st_size for p in entries.values())
    if total > MAX_BUNDLE_BYTES:
        largest = sorted(entries, key=lambda a: entries[a].stat().st_size, reverse=True)[:3]
        raise ConfigError(
            f"the user code to ship to workers is {total:,} bytes (largest: "
            f"{', '.join(largest)}), over {MAX_BUNDLE_BYTES:,}: move data files out of the "
            "package folders, or install the code in the image and pass ship_code=False"
        )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for arc in sorted(entries):
            info = zipfile.ZipInfo(arc, date_time=_ZIP_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, entries[arc].read_bytes())
    data = buffer.getvalue()
    return CodeBundle(
        digest=hashlib.sha256(data).hexdigest(),
        data=data,
        modules=tuple(sorted(sources.found)),
        files=tuple(sorted(entries)),
        skipped=tuple(sorted(skipped.items())),
    )


Runner = Callable[[Coroutine[Any, Any, Any]], Any]


class CodeShipper:
    """One session's user code: the bundle its next payload needs, uploaded once.

    Only modules imported since the last look are examined, and only when
    ``sys.modules`` grew, so a submit costs a length comparison once the
    session's modules are known.
    """

    def __init__(self, store: ObjectStore, prefix: str) -> None:
        self._store = store
        self._prefix = prefix
        self._lock = threading.Lock()
        self._seen = -1
        self._examined: set[str] = set()
        self._roots: tuple[str, ...] | None = None
        self._sources = _Sources()
        self._bundle: CodeBundle | None = None
        self._uploaded: set[str] = set()

    def current(self) -> CodeBundle | None:
        """The bundle of the user modules loaded now (cached while none were added)."""
        with self._lock:
            if len(sys.modules) == self._seen:
                return self._bundle
            self._seen = len(sys.modules)
            if self._roots is None:
                self._roots = library_roots()
            new = {n: m for n, m in list(sys.modules.items()) if n not in self._examined}
            self._examined.update(new)
            found = find_user_modules(new, self._roots)
            added = False
            for top, source in found.found.items():
                if top not in self._sources.found:
                    self._sources.found[top] = source
                    added = True
            for top, reason in found.skipped.items():
                self._sources.skipped.setdefault(top, reason)
            if not added and self._bundle is not None:
                return self._bundle
            if not self._sources.found:
                return None
            self._bundle = build_bundle(self._sources)
            if self._bundle is not None:
                log.info("shipping the user's code to workers: %s", self._bundle.describe())
                for what, reason in self._bundle.skipped:
                    log.warning("not shipped to workers: %s (%s)", what, reason)
            return self._bundle

    def digests(self, run: Runner) -> tuple[str, ...]:
        """The digests the next payload names; uploads a bundle the first time (``run``
        drives the store's coroutines)."""
        bundle = self.current()
        if bundle is None:
            return ()
        if bundle.digest not in self._uploaded:
            run(upload_bundle(self._store, self._prefix, bundle))
            self._uploaded.add(bundle.digest)
        return (bundle.digest,)


async def upload_bundle(store: ObjectStore, prefix: str, bundle: CodeBundle) -> bool:
    """Store the bundle unless its key exists already; True when this call wrote it."""
    key = code_key(prefix, bundle.digest)
    if await store.exists(key):
        return False
    try:
        await store.put(key, bundle.data, if_none_match=True)
    except PreconditionFailed:
        return False  # another client shipped the same code at the same moment
    return True
