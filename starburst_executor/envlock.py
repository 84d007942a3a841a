"""The client's environment as a lock, and this package as a wheel: what the image holds.

::

    importlib.metadata ──▶ every installed distribution, exact version
                           minus: this package (its wheel goes in the build context),
                                  pip (the image's Python has one),
                                  editable / local / VCS installs (no registry has them;
                                  editable ones travel with sessions as code),
                                  packages only other platforms need (markers)
                       ──▶ requirements.lock  ("name==version" lines; Python minor on top)
    this package ──────▶ starburst_executor-<v>-py3-none-any.whl, built byte for byte
                         the same from the same files (fixed timestamps, sorted entries)
    tag = py<minor>-sha256(lock + wheel)[:16]: any change of either is a new image

``requirements`` (``starburst image build --requirements``) narrows the lock to
the distributions it names and what they need, plus what this package needs,
each pinned to the version installed here; a name not installed here is kept as
written. cloudpickle is pinned to the client's version either way, since a payload
pickled by one cloudpickle release is read by the same release.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import io
import json
import os
import platform
import re
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._version import __version__
from .errors import ConfigError

SELF = "starburst-executor"
ALWAYS_LEFT_OUT = {"pip": "the image's Python provides pip"}
LINUX_MARKERS = {"sys_platform": "linux", "platform_system": "Linux", "os_name": "posix"}
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_EXTRA_RE = re.compile(r"""extra\s*==\s*['"]([^'"]+)['"]""")


def canonical(name: str) -> str:
    from packaging.utils import canonicalize_name

    return str(canonicalize_name(name))


def python_minor() -> str:
    return ".".join(platform.python_version_tuple()[:2])


@dataclass(frozen=True)
class LeftOut:
    """A distribution installed here that the lock does not pin, and why."""

    name: str
    version: str
    reason: str


@dataclass(frozen=True)
class EnvLock:
    """What the image installs: Python minor and ``name==version`` pins."""

    python: str
    pins: tuple[str, ...]
    left_out: tuple[LeftOut, ...] = ()

    def text(self) -> str:
        """``requirements.lock``: pip reads it; its bytes are part of the image tag."""
        header = f"# starburst-executor environment lock\n# python {self.python}\n"
        return header + "".join(f"{pin}\n" for pin in self.pins)

    def to_json(self) -> dict[str, Any]:
        return {
            "python": self.python,
            "pins": list(self.pins),
            "left_out": [vars(item) for item in self.left_out],
        }


def _installed() -> dict[str, importlib.metadata.Distribution]:
    """One distribution per canonical name: the first on ``sys.path``, as imports see it."""
    found: dict[str, importlib.metadata.Distribution] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(canonical(name), dist)
    return found


def _not_from_registry(dist: importlib.metadata.Distribution) -> str | None:
    """Why a distribution cannot be installed from a registry (PEP 610), or None."""
    raw = dist.read_text("direct_url.json")
    if not raw:
        return None
    try:
        info = json.loads(raw)
    except ValueError:
        return "installed from a direct URL: not from a registry"
    url = str(info.get("url", ""))
    if info.get("dir_info", {}).get("editable"):
        return (
            f"editable install ({url}): not in the image; its modules travel with each "
            "session as code (pure Python only)"
        )
    if "vcs_info" in info:
        return f"installed from version control ({url}): not from a registry; add it yourself"
    if url.startswith("file:"):
        return f"installed from a local file or folder ({url}): not from a registry"
    return f"installed from a direct URL ({url}): not from a registry"


def _requirements(dist: importlib.metadata.Distribution) -> list[Any]:
    from packaging.requirements import InvalidRequirement, Requirement

    parsed = []
    for line in dist.requires or []:
        try:
            parsed.append(Requirement(line))
        except InvalidRequirement:
            continue
    return parsed


def _on_linux(requirement: Any, extras: Iterable[str] = ("",)) -> bool:
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({**LINUX_MARKERS, "extra": e}) for e in extras)


def _closure(
    roots: Mapping[str, set[str]], installed: Mapping[str, importlib.metadata.Distribution]
) -> set[str]:
    """Names of the installed distributions ``roots`` (name -> extras) need on Linux."""
    wanted: dict[str, set[str]] = {}
    queue = [(name, extras) for name, extras in roots.items()]
    while queue:
        name, extras = queue.pop()
        if name not in installed:
            continue
        known = wanted.setdefault(name, set())
        new = (extras | {""}) - known
        if not new:
            continue
        known.update(new)
        for requirement in _requirements(installed[name]):
            if _on_linux(requirement, sorted(new)):
                queue.append((canonical(requirement.name), set(requirement.extras)))
    return set(wanted)


def _platform_only(requirement: Any) -> bool:
    """True when the requirement's marker names a platform and is false on Linux
    whatever extra the requirer was installed with."""
    marker = str(requirement.marker or "")
    if not any(variable in marker for variable in LINUX_MARKERS):
        return False
    extras = ["", *_EXTRA_RE.findall(marker)]
    return not any(requirement.marker.evaluate({**LINUX_MARKERS, "extra": e}) for e in extras)


def _other_platform_only(
    installed: Mapping[str, importlib.metadata.Distribution],
) -> dict[str, str]:
    """Installed names that every installed requirer needs only off Linux."""
    requirers: dict[str, list[tuple[str, bool, str]]] = {}
    for name, dist in installed.items():
        for requirement in _requirements(dist):
            requirers.setdefault(canonical(requirement.name), []).append(
                (name, _platform_only(requirement), str(requirement.marker or ""))
            )
    found = {}
    for name, entries in requirers.items():
        if name in installed and entries and all(only for _, only, _ in entries):
            by, _, marker = entries[0]
            found[name] = f"needed only on other platforms ({by}: {marker})"
    return found


def _parse_requirements(text: str) -> list[Any]:
    from packaging.requirements import InvalidRequirement, Requirement

    parsed = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-"):
            raise ConfigError(
                f"requirements line {number} ({line!r}): options and editable lines are not "
                "supported; list distribution names (and versions) only"
            )
        try:
            parsed.append(Requirement(line))
        except InvalidRequirement as err:
            raise ConfigError(f"requirements line {number} ({line!r}): {err}") from None
    return parsed


def capture_lock(requirements: str | None = None) -> EnvLock:
    """Lock the running environment, or the part of it ``requirements`` names."""
    installed = _installed()
    left_out: dict[str, str] = {}
    kept_as_written: list[str] = []
    if requirements is None:
        candidates = set(installed)
        left_out.update(_other_platform_only(installed))
    else:
        roots: dict[str, set[str]] = {SELF: set(), "cloudpickle": set()}
        for requirement in _parse_requirements(requirements):
            name = canonical(requirement.name)
            if name in installed:
                roots.setdefault(name, set()).update(requirement.extras)
            else:
                kept_as_written.append(str(requirement))
        candidates = _closure(roots, installed)
    pins = []
    for name in sorted(candidates):
        dist = installed[name]
        reason = (
            "built into the build context as a wheel of the running code"
            if name == SELF
            else ALWAYS_LEFT_OUT.get(name) or left_out.get(name) or _not_from_registry(dist)
        )
        if reason:
            left_out[name] = reason
        else:
            pins.append(f"{name}=={dist.version}")
    if "cloudpickle" not in installed:
        raise ConfigError("cloudpickle is not installed here: pip install starburst-executor")
    return EnvLock(
        python=python_minor(),
        pins=tuple(sorted(pins + kept_as_written)),
        left_out=tuple(
            LeftOut(name, installed[name].version if name in installed else "", why)
            for name, why in sorted(left_out.items())
            if name in candidates
        ),
    )


@dataclass(frozen=True)
class Wheel:
    """This package as a wheel: its file name, bytes and sha256."""

    filename: str
    data: bytes
    digest: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "digest", hashlib.sha256(self.data).hexdigest())


def _self_metadata() -> tuple[str, str | None]:
    """METADATA and entry_points.txt of the installed package (an editable one too)."""
    for dist in importlib.metadata.distributions(name=SELF):
        text = dist.read_text("METADATA") or dist.read_text("PKG-INFO")
        if text:
            return text, dist.read_text("entry_points.txt")
    raise ConfigError(
        "starburst-executor has no installed metadata: install it (pip install -e . in a "
        "source checkout) before building an image"
    )


def _record_hash(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def build_wheel() -> Wheel:
    """A pure-Python wheel of the running package, from its files on disk."""
    package = Path(__file__).resolve().parent
    files: dict[str, bytes] = {}
    for folder, dirs, names in os.walk(package):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith("."))
        for name in sorted(names):
            if name.startswith(".") or name.endswith((".pyc", ".pyo")):
                continue
            path = Path(folder) / name
            files[f"{package.name}/{path.relative_to(package).as_posix()}"] = path.read_bytes()
    metadata, entry_points = _self_metadata()
    info = f"starburst_executor-{__version__}.dist-info"
    files[f"{info}/METADATA"] = metadata.encode()
    if entry_points:
        files[f"{info}/entry_points.txt"] = entry_points.encode()
    files[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: starburst-executor\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n"
    )
    record = "".join(f"{arc},sha256={_record_hash(d)},{len(d)}\n" for arc, d in files.items())
    files[f"{info}/RECORD"] = (record + f"{info}/RECORD,,\n").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for arc in sorted(files):  # RECORD is written last by convention; order is free
            entry = zipfile.ZipInfo(arc, date_time=_ZIP_TIME)
            entry.external_attr = 0o644 << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(entry, files[arc])
    return Wheel(f"starburst_executor-{__version__}-py3-none-any.whl", buffer.getvalue())


def image_tag(lock: EnvLock, wheel: Wheel) -> str:
    """The image's tag: it changes whenever the lock or the package's code changes."""
    digest = hashlib.sha256(f"{lock.text()}\nwheel={wheel.digest}\n".encode()).hexdigest()
    return f"py{lock.python.replace('.', '')}-{digest[:16]}"
