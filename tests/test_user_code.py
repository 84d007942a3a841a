"""The user's own modules travel with the session (real workers, real local S3 server).

The user modules live in a temporary folder that only the client has on its
``sys.path``: the workers' working directory and ``PYTHONPATH`` do not include it.
"""

from __future__ import annotations

import hashlib
import importlib
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from starburst_executor import DetachedExecutor, StarburstExecutor
from starburst_executor._core.codec import decode_call, encode_call, payload_code
from starburst_executor._core.layout import code_key
from starburst_executor._core.usercode import (
    build_bundle,
    find_user_modules,
    upload_bundle,
)
from starburst_executor.errors import CorruptObject, ObjectNotFound
from starburst_executor.worker.code import prepare_user_code

TIMEOUT = 120

MODEL = """\
from mylib_helpers import scale

VERSION = {version!r}


def fit(x):
    import mylib
    return VERSION, scale(x), __file__, mylib.__file__
"""


def write_project(root: Path, version: str) -> None:
    (root / "mylib").mkdir(parents=True, exist_ok=True)
    (root / "mylib" / "__init__.py").write_text('"""A user package."""\n')
    (root / "mylib" / "model.py").write_text(MODEL.format(version=version))
    (root / "mylib_helpers.py").write_text("def scale(x):\n    return 2 * x\n")


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    """A user project importable by the client only; forgotten again afterwards."""
    root = tmp_path / "userproj"
    write_project(root, "v1")
    sys.path.insert(0, str(root))
    yield root
    sys.path.remove(str(root))
    for name in [n for n in sys.modules if n.partition(".")[0] in {"mylib", "mylib_helpers"}]:
        del sys.modules[name]


def test_a_function_from_a_user_package_runs_on_a_worker_without_the_folder(prefix, project):
    from mylib.model import fit

    ex = DetachedExecutor(max_workers=1)
    try:
        version, value, model_file, package_file = ex.submit(fit, 21).result(timeout=TIMEOUT)
        bundle = ex.shipped_code
    finally:
        ex.cleanup(force=True)
    assert (version, value) == ("v1", 42)
    # The worker imported the shipped copy, not the client's folder.
    assert str(project) not in model_file
    assert bundle is not None and bundle.digest in model_file
    assert {"mylib", "mylib_helpers"} <= set(bundle.modules)
    assert {"mylib/model.py", "mylib/__init__.py", "mylib_helpers.py"} <= set(bundle.files)
    assert bundle.digest in package_file


def test_an_edit_between_sessions_runs_the_new_code(prefix, project):
    import mylib.model

    first = DetachedExecutor(max_workers=1)
    try:
        assert first.submit(mylib.model.fit, 1).result(timeout=TIMEOUT)[0] == "v1"
        first_digest = first.shipped_code.digest  # type: ignore[union-attr]
    finally:
        first.cleanup(force=True)
    write_project(project, "v2")
    importlib.reload(mylib.model)
    second = StarburstExecutor(max_workers=1)
    try:
        version, value, *_ = second.submit(mylib.model.fit, 5).result(timeout=TIMEOUT)
        second_digest = second.shipped_code.digest  # type: ignore[union-attr]
    finally:
        second.shutdown()
    assert (version, value) == ("v2", 10)
    assert second_digest != first_digest


def test_with_shipping_off_the_worker_cannot_import_the_user_module(prefix, project):
    from mylib.model import fit

    ex = DetachedExecutor(max_workers=1, ship_code=False)
    try:
        error = ex.submit(fit, 1).exception(timeout=TIMEOUT)
        assert ex.shipped_code is None
    finally:
        ex.cleanup(force=True)
    assert isinstance(error, CorruptObject)
    assert "No module named 'mylib'" in str(error)


def test_the_environment_variable_turns_shipping_off(prefix, project, monkeypatch):
    monkeypatch.setenv("STARBURST_SHIP_CODE", "0")
    ex = DetachedExecutor(max_workers=1)
    try:
        assert ex.shipped_code is None
    finally:
        ex.cleanup(force=True)


def test_only_modules_outside_the_library_folders_are_found(project):
    import json

    import cloudpickle
    import mylib.model

    import starburst_executor

    found = find_user_modules(
        {
            "mylib": mylib,
            "mylib.model": mylib.model,
            "json": json,
            "cloudpickle": cloudpickle,
            "starburst_executor": starburst_executor,
            "__main__": sys.modules["__main__"],
        }
    ).found
    assert set(found) == {"mylib"}
    assert found["mylib"] == (project, project / "mylib")


def test_the_bundle_is_reproducible_and_skips_caches(project):
    import mylib.model  # noqa: F401

    (project / "mylib" / "__pycache__").mkdir(exist_ok=True)
    (project / "mylib" / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"junk")
    (project / "mylib" / "settings.json").write_text("{}")
    sources = find_user_modules()
    first, second = build_bundle(sources), build_bundle(sources)
    assert first is not None and second is not None
    assert first.data == second.data
    assert first.digest == hashlib.sha256(first.data).hexdigest()
    assert "mylib/settings.json" in first.files
    assert not any("__pycache__" in f for f in first.files)


def test_a_bundle_is_uploaded_once_and_fetched_once(store, project, tmp_path):
    import mylib.model

    bundle = build_bundle(find_user_modules())
    assert bundle is not None
    prefix = "t-code-once"
    assert store.run(upload_bundle(store, prefix, bundle)) is True
    assert store.run(upload_bundle(store, prefix, bundle)) is False
    fetched: list[str] = []

    def fetch(key: str) -> bytes:
        fetched.append(key)
        return store.run(store.get(key)).body

    payload = encode_call(mylib.model.fit, (1,), {}, code=(bundle.digest,))
    assert payload_code(payload, key="k") == (bundle.digest,)
    cache = tmp_path / "cache"
    try:
        for _ in range(3):
            folders = prepare_user_code(
                payload, key="k", prefix=prefix, fetch=fetch, cache_dir=cache
            )
        assert fetched == [code_key(prefix, bundle.digest)]
        assert (folders[0] / "mylib" / "model.py").read_text() == (
            project / "mylib" / "model.py"
        ).read_text()
    finally:
        for folder in {str(cache / bundle.digest)}:
            while folder in sys.path:
                sys.path.remove(folder)


def test_a_tampered_or_missing_bundle_is_a_clear_error(tmp_path):
    digest = hashlib.sha256(b"the real bundle").hexdigest()
    payload = encode_call(len, ((),), {}, code=(digest,))

    def missing(key: str) -> bytes:
        raise ObjectNotFound(key)

    with pytest.raises(CorruptObject, match=rf"needs the code bundle .*{digest}.zip"):
        prepare_user_code(payload, key="tasks/t1", prefix="p", fetch=missing, cache_dir=tmp_path)
    with pytest.raises(CorruptObject, match="does not match its digest"):
        prepare_user_code(
            payload, key="tasks/t1", prefix="p", fetch=lambda _: b"other", cache_dir=tmp_path
        )
    assert not (tmp_path / digest).exists()


def test_payload_headers_name_code_and_differ_by_nonce():
    payload = encode_call(len, ((),), {})
    assert payload_code(payload, key="k") == ()
    assert payload != encode_call(len, ((),), {})  # the nonce: no two payloads alike
    legacy = b"SBP1" + payload[4 + 16 + 2 :]  # sessions from before the nonce still decode
    assert payload_code(legacy, key="k") == () and decode_call(legacy, key="k")[0] is len
    bad_digest = payload[: 4 + 16] + b"\x00\x03abc" + payload[4 + 16 + 2 :]
    with pytest.raises(CorruptObject, match="bad header"):
        payload_code(bad_digest, key="tasks/t9")


def test_user_module_files_are_placed_by_their_dotted_name(tmp_path):
    root = tmp_path / "src"
    (root / "pkg" / "sub").mkdir(parents=True)
    module_file = root / "pkg" / "sub" / "mod.py"
    module_file.write_text(textwrap.dedent("X = 1\n"))

    class Loaded:
        __file__ = str(module_file)

    found = find_user_modules({"pkg.sub.mod": Loaded()}, roots=()).found
    assert found == {"pkg": (root, root / "pkg")}
    # A module loaded under a name its path does not spell cannot be placed.
    assert find_user_modules({"other.mod": Loaded()}, roots=()).found == {}
