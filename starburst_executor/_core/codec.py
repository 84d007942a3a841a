"""Encoding of task payloads and outcomes, and the environment fingerprint.

A payload is ``MAGIC_PAYLOAD + cloudpickle((fn, args, kwargs))``. An outcome is
``MAGIC_OUTCOME + pickle(dict)`` whose value and exception are pickled apart, so
a result the client cannot unpickle still arrives as an error that names it,
and a remote exception whose class is missing here arrives as ``RemoteError``
with its type name, message and traceback.
"""

from __future__ import annotations

import io
import pickle
import platform
import traceback
import types

# The standard library's class of a worker's traceback (private there, stable since 3.3).
from concurrent.futures.process import _RemoteTraceback as _StdRemoteTraceback
from dataclasses import dataclass, field
from typing import Any, Literal

import cloudpickle

from .._version import __version__
from ..config import max_object_bytes
from ..errors import CorruptObject, PayloadTooLarge, PicklingError, RemoteError

MAGIC_PAYLOAD = b"SBP1"
MAGIC_OUTCOME = b"SBO1"

OutcomeKind = Literal["ok", "error", "cancelled"]


class RemoteTraceback(_StdRemoteTraceback):
    """Carries a worker's formatted traceback; set as ``__cause__`` of remote errors.

    A subclass of the standard library's own, so code that recognises a process
    pool's remote traceback recognises ours.
    """

    def __init__(self, tb: str) -> None:
        Exception.__init__(self, tb)  # typeshed types the parent's tb as a traceback
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


def fingerprint() -> dict[str, str]:
    """What must match between client and worker for pickles to travel."""
    return {
        "python": ".".join(platform.python_version_tuple()[:2]),
        "cloudpickle": str(cloudpickle.__version__),
        "starburst_executor": __version__,
    }


def fingerprint_mismatch(client: dict[str, str], worker: dict[str, str]) -> str | None:
    """A message naming both versions of what differs, or None when compatible."""
    diffs = [
        f"{name} {client.get(name)!s} on the client but {worker.get(name)!s} on the worker"
        for name in ("python", "cloudpickle", "starburst_executor")
        if client.get(name) != worker.get(name)
    ]
    if not diffs:
        return None
    return (
        "; ".join(diffs) + ": rebuild the worker image from the client's environment "
        "(`starburst image build`) or install matching versions on the client"
    )


class _CallPickler(cloudpickle.Pickler):  # type: ignore[misc]
    """cloudpickle, but a method bound to an importable class (a classmethod) travels by
    reference, as ``pickle`` sends it: cloudpickle would send its function by value, and
    the worker's traceback would then lose the file name and source line."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, types.MethodType) and isinstance(obj.__self__, type):
            owner, name = obj.__self__, obj.__func__.__name__
            if getattr(owner, name, None) == obj:
                return getattr, (owner, name)
        return super().reducer_override(obj)


def dumps_call(obj: Any) -> bytes:
    """Pickle a call (function, arguments) for a worker."""
    buffer = io.BytesIO()
    _CallPickler(buffer, protocol=5).dump(obj)
    return buffer.getvalue()


def _culprit(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    candidates: list[tuple[str, Any]] = [("the function", fn)]
    candidates += [(f"argument {i}", a) for i, a in enumerate(args)]
    candidates += [(f"keyword argument {k!r}", v) for k, v in kwargs.items()]
    for label, obj in candidates:
        try:
            cloudpickle.dumps(obj)
        except Exception as err:
            return f"{label} ({type(obj).__name__}): {err}"
    return "the call"


def encode_call(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """Pickle a call, or raise ``PicklingError`` naming the part that cannot travel."""
    try:
        blob = dumps_call((fn, args, kwargs))
    except Exception as err:
        raise PicklingError(
            f"cannot pickle {_culprit(fn, args, kwargs)}; pass picklable data "
            "(locks, sockets, generators and open connections cannot be sent to a worker)"
        ) from err
    limit = max_object_bytes()
    if len(blob) > limit:
        raise PayloadTooLarge(
            f"the pickled call to {getattr(fn, '__qualname__', fn)!s} is {len(blob):,} bytes, "
            f"over the {limit:,}-byte limit of one stored object; put large inputs in S3 "
            "yourself and pass their keys"
        )
    return MAGIC_PAYLOAD + blob


def decode_call(data: bytes, *, key: str) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    if not data.startswith(MAGIC_PAYLOAD):
        raise CorruptObject(
            f"payload {key} is not a starburst payload (bad header); resubmit the task"
        )
    try:
        fn, args, kwargs = pickle.loads(data[len(MAGIC_PAYLOAD) :])
    except (Exception, SystemExit) as err:  # a __reduce__ may even call sys.exit
        raise CorruptObject(
            f"payload {key} cannot be unpickled: {type(err).__name__}: {err}; "
            "resubmit the task, and check the worker has the modules it needs"
        ) from err
    return fn, tuple(args), dict(kwargs)


@dataclass
class Outcome:
    """One task's final state as a worker (or a cancel) wrote it."""

    task_id: str
    kind: OutcomeKind
    value: bytes | None = None
    exc: bytes | None = None
    exc_type: str = ""
    exc_message: str = ""
    traceback: str = ""
    worker_id: str = ""
    attempt: int = 0
    started: float = 0.0
    finished: float = 0.0
    stdout: str = ""
    stderr: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def success(cls, task_id: str, value: Any, **meta: Any) -> Outcome:
        """An ok outcome, or an error one when ``value`` cannot be pickled."""
        try:
            blob = cloudpickle.dumps(value, protocol=5)
        except Exception as err:
            wrapped = PicklingError(
                f"task {task_id} returned a {type(value).__name__} that cannot be pickled "
                f"({err}); return plain data instead"
            )
            return cls.failure(task_id, wrapped, **meta)
        except SystemExit as exit_:
            # Raised by the value's __reduce__: the task's outcome, as a process pool
            # sends back what its worker raised while pickling a result.
            return cls.failure(task_id, exit_, **meta)
        limit = max_object_bytes()
        if len(blob) > limit:
            too_big = PayloadTooLarge(
                f"task {task_id} returned {len(blob):,} pickled bytes, over the "
                f"{limit:,}-byte limit of one stored object; write large results to S3 "
                "yourself and return their keys"
            )
            return cls.failure(task_id, too_big, **meta)
        return cls(task_id, "ok", value=blob, **meta)

    @classmethod
    def failure(cls, task_id: str, exc: BaseException, **meta: Any) -> Outcome:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        blob: bytes | None
        try:
            blob = cloudpickle.dumps(exc, protocol=5)
            pickle.loads(blob)  # an exception that pickles but cannot be rebuilt is common
        except Exception:
            blob = None
        return cls(
            task_id,
            "error",
            exc=blob,
            exc_type=f"{type(exc).__module__}.{type(exc).__qualname__}",
            exc_message=str(exc),
            traceback=tb,
            **meta,
        )

    def encode(self) -> bytes:
        return MAGIC_OUTCOME + pickle.dumps(self.__dict__, protocol=5)

    @classmethod
    def decode(cls, data: bytes, *, key: str) -> Outcome:
        if not data.startswith(MAGIC_OUTCOME):
            raise CorruptObject(f"result {key} is not a starburst outcome (bad header)")
        try:
            fields = pickle.loads(data[len(MAGIC_OUTCOME) :])
            return cls(**fields)
        except Exception as err:
            raise CorruptObject(f"result {key} cannot be decoded: {err}") from err

    def result(self) -> Any:
        """The value (kind ``ok``); raises ``CorruptObject`` if it cannot be unpickled."""
        assert self.value is not None
        try:
            return pickle.loads(self.value)
        except (Exception, SystemExit) as err:  # a __reduce__ may even call sys.exit
            raise CorruptObject(
                f"the result of task {self.task_id} cannot be unpickled on the client: "
                f"{type(err).__name__}: {err}; install the modules its type needs"
            ) from err

    def exception(self) -> BaseException:
        """The remote exception with its traceback as ``__cause__`` (kind ``error``)."""
        exc: BaseException
        try:
            if self.exc is None:
                raise ValueError("not picklable")
            loaded = pickle.loads(self.exc)
            if not isinstance(loaded, BaseException):
                raise TypeError("not an exception")
            exc = loaded
        except Exception:
            exc = RemoteError(self.exc_type, self.exc_message, self.traceback)
        exc.__cause__ = RemoteTraceback(f'\n"""\n{self.traceback}"""')
        return exc
