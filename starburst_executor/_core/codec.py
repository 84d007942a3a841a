"""Encoding of task payloads and outcomes, and the environment fingerprint.

A payload is ``MAGIC_PAYLOAD + nonce (16 bytes) + length (2 bytes) + header +
cloudpickle((fn, args, kwargs))``, the header being the comma-separated code bundle
digests (often none), then, when the call has big pieces, ``|`` and their digests.
The nonce makes every payload unique, and the worker reads the digests without
unpickling, so it can fetch the user's code first. A piece is the function, an
argument or a keyword argument whose pickle is over ``BLOB_THRESHOLD`` (1 MiB: a
big closure, an array): it is stored apart, once per session and content
(``blobs/<sha256>``), and the payload's pickle refers to it by a persistent id,
so 50 calls closing over 20 MB store the 20 MB once.
``MAGIC_PAYLOAD_V1 + cloudpickle(...)`` (no nonce, no code) is still read. An outcome is
``MAGIC_OUTCOME + pickle(dict)`` whose value and exception are pickled apart, so
a result the client cannot unpickle still arrives as an error that names it,
and a remote exception whose class is missing here arrives as ``RemoteError``
with its type name, message and traceback.

Two changes to what cloudpickle does, both for tracebacks that read like local ones:

- Functions pickled by value (defined in ``__main__`` or a notebook) keep their
  code's file name; cloudpickle writes ``<dynamic-code>`` instead.
- The worker often cannot read that file (another machine, a notebook cell), so the
  client fills the missing source lines of the remote traceback from its own
  ``linecache``, which knows the script and the notebook's cells.

An exception whose ``__init__`` takes other arguments than its ``args`` cannot be
rebuilt by pickle's default (``cls(*args)``); the worker then ships it as
``cls.__new__`` + ``args`` + ``__dict__``, and says why when even that fails.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import linecache
import pickle
import platform
import re
import secrets
import threading
import traceback
import types
import weakref
from collections import ChainMap, OrderedDict
from collections.abc import Callable, Mapping, Sequence

# The standard library's class of a worker's traceback (private there, stable since 3.3).
from concurrent.futures.process import _RemoteTraceback as _StdRemoteTraceback
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import cloudpickle

from .._version import __version__
from ..config import max_object_bytes
from ..errors import CorruptObject, PayloadTooLarge, PicklingError, RemoteError
from .layout import CODE_DIGEST_RE

MAGIC_PAYLOAD_V1 = b"SBP1"  # read only: payloads of sessions from before the nonce
MAGIC_PAYLOAD = b"SBP2"
NONCE_BYTES = 16
MAGIC_OUTCOME = b"SBO1"
MAGIC_BATCH = b"SBB1"  # count (4 bytes), each payload's length (4 bytes each), payloads
BLOBS_SEPARATOR = "|"
BLOB_THRESHOLD = 1 << 20  # pickled pieces over 1 MiB are stored once, by content

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


def _code_at(filename: str, build: Callable[..., types.CodeType], args: tuple[Any, ...]) -> Any:
    """Unpickles a code object with its real file name (see ``_reduce_code``)."""
    return build(*args).replace(co_filename=filename)


_cloudpickle_code_reduce = cloudpickle.Pickler.dispatch_table[types.CodeType]


def _reduce_code(code: types.CodeType) -> tuple[Any, ...]:
    build, args = _cloudpickle_code_reduce(code)
    return (_code_at, (code.co_filename, build, args))


class _CallPickler(cloudpickle.Pickler):  # type: ignore[misc]
    """cloudpickle, with two changes for tracebacks that read like local ones: code
    pickled by value keeps its file name, and a method bound to an importable class (a
    classmethod) travels by reference, as ``pickle`` sends it, instead of by value."""

    dispatch_table: ClassVar[ChainMap[Any, Any]] = ChainMap(
        {types.CodeType: _reduce_code}, cloudpickle.Pickler.dispatch_table
    )

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, types.MethodType) and isinstance(obj.__self__, type):
            owner, name = obj.__self__, obj.__func__.__name__
            if getattr(owner, name, None) == obj:
                return getattr, (owner, name)
        return super().reducer_override(obj)


def dumps_call(
    obj: Any, pieces: dict[int, str] | None = None, used: set[str] | None = None
) -> bytes:
    """Pickle a call (function, arguments) for a worker; the objects in ``pieces`` (by
    id) are pickled as a reference to their digest, and ``used`` collects the digests
    the pickle met."""
    buffer = io.BytesIO()
    pickler = _CallPickler(buffer, protocol=5)
    if pieces:

        def persistent_id(o: Any) -> str | None:
            digest = pieces.get(id(o))
            if digest is not None and used is not None:
                used.add(digest)
            return digest

        pickler.persistent_id = persistent_id
    pickler.dump(obj)
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


def encode_call(
    fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], *, code: tuple[str, ...] = ()
) -> bytes:
    """Pickle a call whole, or raise ``PicklingError`` naming the part that cannot travel.

    ``code`` names the code bundles (digests) the worker must import from first.
    """
    return _payload(code, (), _check_size(fn, _pickle_call(fn, args, kwargs)))


def encode_call_pieces(
    fn: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    code: tuple[str, ...] = (),
    parts: Sequence[Any] | None = None,
    threshold: int = BLOB_THRESHOLD,
    hint: Any = None,
    cache: PieceCache | None = None,
) -> tuple[bytes, dict[str, bytes]]:
    """Pickle a call; each of ``parts`` (default: the function, every argument and
    keyword argument) whose pickle is over ``threshold`` bytes is left out as a piece
    named by its SHA-256.

    Returns the payload, which refers to the pieces, and the pieces by digest: the
    client stores each piece once per session, the worker fetches it once.

    A call is pickled whole first, and its parts only when that is over ``threshold``;
    once a function made a big call, its next calls (``hint``: default ``fn``) skip the
    whole pickle, which for a 20 MB closure is about 40 ms of each submit. With a
    ``cache``, big ``bytes`` and ``str`` in a part, a function's defaults or closure are
    pieces of their own, pickled and hashed once per client (``PieceCache``).
    """
    if parts is None:
        parts = [fn, *args, *kwargs.values()]
    pieces: dict[int, str] = {}
    stored: dict[str, bytes] = {}
    if cache is not None:
        for obj in _big_immutables(parts, threshold):
            digest, data = cache.piece(obj)
            pieces[id(obj)], stored[digest] = digest, data
    blob = None
    used: set[str] = set()  # the pieces a pickle met (a function pickled by name has
    # defaults that travel with it, not in the payload)
    if not _made_big_calls(hint if hint is not None else fn):
        blob = _pickle_call(fn, args, kwargs, pieces, used)
        if len(blob) <= threshold:
            met = {d: stored[d] for d in stored if d in used}
            return _payload(code, tuple(met), _check_size(fn, blob)), met
    immutables = dict(pieces)
    inner: dict[str, set[str]] = {}  # a part's piece -> the pieces it refers to
    for part in parts:
        if id(part) in pieces:
            continue
        refers: set[str] = set()
        try:
            data = dumps_call(part, immutables, refers)  # a piece may refer to those
        except Exception:
            _pickle_call(fn, args, kwargs)  # raises, naming the culprit
            raise
        if len(data) > threshold:
            digest = hashlib.sha256(_check_size(fn, data)).hexdigest()
            pieces[id(part)] = digest
            stored[digest] = data
            inner[digest] = refers
    if not stored:  # many small parts: one payload is all there is to it
        if blob is None:  # the hint was wrong this time
            _BIG_CALLERS.discard(hint if hint is not None else fn)
            blob = _pickle_call(fn, args, kwargs)
        return _payload(code, (), _check_size(fn, blob)), {}
    _remember_big_calls(hint if hint is not None else fn)
    used = set()
    rest = _check_size(fn, dumps_call((fn, args, kwargs), pieces, used))
    for digest in list(used):
        used |= inner.get(digest, set())
    met = {d: stored[d] for d in stored if d in used}
    return _payload(code, tuple(met), rest), met


class PieceCache:
    """Big immutable objects (``bytes``, ``str``) a client already pickled and hashed, by
    identity: the next call holding the same object (a closure over 20 MB of bytes, the
    same big argument) refers to its piece without pickling or hashing it again, about
    40 ms of each such submit. Immutable, so the piece stays true; the cache holds the
    objects (an id is not reused while cached), at most ``size`` of them and
    ``max_bytes`` of pickles. Mutable objects (a numpy array, a list) are pickled at
    every submit, as a process pool does."""

    def __init__(self, size: int = 4, max_bytes: int = 256 * 1024**2) -> None:
        self._size = size
        self._max_bytes = max_bytes  # pickles kept, at most (a bigger one is not kept)
        self._lock = threading.Lock()
        self._entries: OrderedDict[int, tuple[object, str, bytes]] = OrderedDict()

    def piece(self, obj: bytes | str) -> tuple[str, bytes]:
        """The digest and stored bytes of ``obj``'s piece."""
        with self._lock:
            hit = self._entries.get(id(obj))
            if hit is not None and hit[0] is obj:
                self._entries.move_to_end(id(obj))
                return hit[1], hit[2]
        data = dumps_call(obj)
        digest = hashlib.sha256(_check_size(obj, data)).hexdigest()
        if len(data) > self._max_bytes:
            return digest, data
        with self._lock:
            self._entries[id(obj)] = (obj, digest, data)
            while len(self._entries) > self._size or (
                sum(len(e[2]) for e in self._entries.values()) > self._max_bytes
            ):
                self._entries.popitem(last=False)
        return digest, data


def _big_immutables(parts: Sequence[Any], threshold: int) -> list[bytes | str]:
    """The ``bytes`` and ``str`` over ``threshold`` among ``parts``, the defaults and
    closure of a function among them, and the arguments of a ``functools.partial``:
    where a call usually holds big data. (An object that the call's pickle does not
    reach costs a hash, once; the pickle only refers to the ones it meets.)"""
    seen: list[Any] = []
    for part in parts:
        seen.append(part)
        if isinstance(part, types.FunctionType):
            seen += part.__defaults__ or ()
            seen += (part.__kwdefaults__ or {}).values()
            for cell in part.__closure__ or ():
                with contextlib.suppress(ValueError):  # an empty cell
                    seen.append(cell.cell_contents)
        elif isinstance(part, functools.partial):
            seen += [*part.args, *part.keywords.values()]
    found: dict[int, bytes | str] = {}
    for obj in seen:
        # A str of n characters is at least n bytes once pickled.
        if type(obj) in (bytes, str) and len(obj) > threshold:
            found.setdefault(id(obj), obj)
    return list(found.values())


# Functions whose last call had a part over the threshold (weakly: a function is not
# kept alive for this). Only a hint: a wrong one costs a pickle, never a wrong payload.
_BIG_CALLERS: weakref.WeakSet[Any] = weakref.WeakSet()


def _made_big_calls(fn: Any) -> bool:
    try:
        return fn in _BIG_CALLERS
    except TypeError:  # not weakly referenceable
        return False


def _remember_big_calls(fn: Any) -> None:
    with contextlib.suppress(TypeError):
        _BIG_CALLERS.add(fn)


def _pickle_call(
    fn: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    pieces: dict[int, str] | None = None,
    used: set[str] | None = None,
) -> bytes:
    try:
        return dumps_call((fn, args, kwargs), pieces, used)
    except Exception as err:
        raise PicklingError(
            f"cannot pickle {_culprit(fn, args, kwargs)}; pass picklable data "
            "(locks, sockets, generators and open connections cannot be sent to a worker)"
        ) from err


def _check_size(fn: Any, blob: bytes) -> bytes:
    limit = max_object_bytes()
    if len(blob) > limit:
        raise PayloadTooLarge(
            f"the pickled call to {getattr(fn, '__qualname__', fn)!s} is {len(blob):,} bytes, "
            f"over the {limit:,}-byte limit of one stored object; put large inputs in S3 "
            "yourself and pass their keys"
        )
    return blob


def _payload(code: tuple[str, ...], blobs: tuple[str, ...], blob: bytes) -> bytes:
    # A nonce makes every payload unique, so the read-back that recognises our own
    # retried write can never mistake another client's identical call for ours.
    header = ",".join(code)
    if blobs:
        header += BLOBS_SEPARATOR + ",".join(blobs)
    encoded = header.encode("ascii")
    return (
        MAGIC_PAYLOAD
        + secrets.token_bytes(NONCE_BYTES)
        + len(encoded).to_bytes(2, "big")
        + encoded
        + blob
    )


def _split_payload(data: bytes, key: str) -> tuple[tuple[str, ...], tuple[str, ...], memoryview]:
    """The code digests and piece digests a payload names, and its pickle."""
    view = memoryview(data)
    if data.startswith(MAGIC_PAYLOAD_V1):
        return (), (), view[len(MAGIC_PAYLOAD_V1) :]
    start = len(MAGIC_PAYLOAD) + NONCE_BYTES
    if data.startswith(MAGIC_PAYLOAD) and len(data) >= start + 2:
        size = int.from_bytes(data[start : start + 2], "big")
        try:
            header = bytes(view[start + 2 : start + 2 + size]).decode("ascii")
        except UnicodeDecodeError:
            header = "\0"
        code_part, _, blob_part = header.partition(BLOBS_SEPARATOR)
        digests = tuple(code_part.split(",")) if code_part else ()
        blobs = tuple(blob_part.split(",")) if blob_part else ()
        if len(data) >= start + 2 + size and all(CODE_DIGEST_RE.match(d) for d in digests + blobs):
            return digests, blobs, view[start + 2 + size :]
    raise CorruptObject(f"payload {key} is not a starburst payload (bad header); resubmit the task")


def payload_nonce(data: bytes) -> str:
    """The hex nonce that tells one stored call from every other ("" for a V1 payload)."""
    if data.startswith(MAGIC_PAYLOAD):
        return data[len(MAGIC_PAYLOAD) : len(MAGIC_PAYLOAD) + NONCE_BYTES].hex()
    return ""


def encode_batch(payloads: Sequence[bytes]) -> bytes:
    """Several payloads in one task object (``layout.SessionLayout.batch``)."""
    head = [MAGIC_BATCH, len(payloads).to_bytes(4, "big")]
    head += [len(p).to_bytes(4, "big") for p in payloads]
    return b"".join([*head, *payloads])


def decode_batch(data: bytes, count: int, *, key: str) -> list[bytes]:
    """The ``count`` payloads of a batch object, in task order."""
    start = len(MAGIC_BATCH) + 4 + 4 * count
    if (
        not data.startswith(MAGIC_BATCH)
        or len(data) < start
        or int.from_bytes(data[4:8], "big") != count
    ):
        raise CorruptObject(
            f"task batch {key} is not a starburst batch of {count} calls (bad header); "
            "its tasks cannot run: resubmit them"
        )
    payloads, offset = [], start
    for i in range(count):
        size = int.from_bytes(data[8 + 4 * i : 12 + 4 * i], "big")
        payloads.append(data[offset : offset + size])
        offset += size
    if offset != len(data):
        raise CorruptObject(
            f"task batch {key} is truncated or padded ({len(data)} bytes, header says "
            f"{offset}); its tasks cannot run: resubmit them"
        )
    return payloads


def payload_code(data: bytes, *, key: str) -> tuple[str, ...]:
    """The code bundle digests a payload needs imported before it is unpickled."""
    return _split_payload(data, key)[0]


def payload_blobs(data: bytes, *, key: str) -> tuple[str, ...]:
    """The digests of the pieces (big closures or arguments) a payload refers to."""
    return _split_payload(data, key)[1]


class _PieceUnpickler(pickle.Unpickler):
    def __init__(
        self,
        data: memoryview | bytes,
        pieces: Mapping[str, bytes],
        loaded: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(io.BytesIO(data))
        self._pieces = pieces
        self._loaded: dict[str, Any] = {} if loaded is None else loaded  # one object per piece

    def persistent_load(self, pid: Any) -> Any:
        if pid not in self._loaded:
            try:
                piece = self._pieces[pid]
            except KeyError:
                raise pickle.UnpicklingError(f"piece {pid} was not fetched") from None
            # A piece may refer to another (a function's piece to the big bytes it
            # closes over, stored once for every call that holds them).
            # From the bytes themselves: BytesIO shares them (a memoryview is copied).
            nested = _PieceUnpickler(piece, self._pieces, self._loaded)
            self._loaded[pid] = nested.load()
        return self._loaded[pid]


def decode_call(
    data: bytes,
    *,
    key: str,
    pieces: Mapping[str, bytes] | None = None,
    immutable: dict[str, Any] | None = None,
) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    """Unpickle a call; ``pieces`` holds the bytes of every piece it refers to.

    ``immutable``: pieces already unpickled that are ``bytes`` or ``str`` (they cannot
    change, so calls may share them), by digest; the ones this call unpickles are added.
    A 20 MB piece then costs its copy once per process, not once per call."""
    _, _, blob = _split_payload(data, key)
    loaded: dict[str, Any] = dict(immutable or {})
    try:
        fn, args, kwargs = _PieceUnpickler(blob, pieces or {}, loaded).load()
    except (Exception, SystemExit) as err:  # a __reduce__ may even call sys.exit
        raise CorruptObject(
            f"payload {key} cannot be unpickled: {type(err).__name__}: {err}; "
            "resubmit the task, and check the worker has the modules it needs (the image's "
            "lock, `starburst image show`; the user's own modules ship unless ship_code=False)"
        ) from err
    if immutable is not None:
        immutable.update((d, o) for d, o in loaded.items() if type(o) in (bytes, str))
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
    call: str = ""  # the nonce of the payload that ran ("": none ran, or an older worker)

    @classmethod
    def success(cls, task_id: str, value: Any, **meta: Any) -> Outcome:
        """An ok outcome, or an error one when ``value`` cannot be pickled. Never raises."""
        try:
            blob = cloudpickle.dumps(value, protocol=5)
        except SystemExit as exit_:
            # Raised by the value's __reduce__: the task's outcome, as a process pool
            # sends back what its worker raised while pickling a result.
            return cls.failure(task_id, exit_, **meta)
        except BaseException as err:
            wrapped = PicklingError(
                f"task {task_id} returned a {type(value).__name__} that cannot be pickled "
                f"({_safe_str(err)}); return plain data instead"
            )
            return cls.failure(task_id, wrapped, **meta)
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
        """An error outcome. Never raises, whatever the exception's own methods do: a
        ``__str__`` that raises or a ``__reduce__`` that calls ``sys.exit`` still gives
        the client an error that names the task's exception."""
        exc_type = f"{type(exc).__module__}.{type(exc).__qualname__}"
        try:
            message = str(exc)
        except BaseException as err:
            message = f"<str() of this {exc_type} raised {type(err).__name__}>"
        try:
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        except BaseException:
            tb = f"{exc_type}: {message}\n(the traceback could not be formatted)\n"
        blob, problem = _pickle_exception(exc)
        outcome = cls(
            task_id,
            "error",
            exc=blob,
            exc_type=exc_type,
            exc_message=message,
            traceback=tb,
            **meta,
        )
        if problem:
            outcome.extra["exc_problem"] = problem
        return outcome

    def encode(self) -> bytes:
        return MAGIC_OUTCOME + pickle.dumps(self.__dict__, protocol=5)

    @classmethod
    def decode(cls, data: bytes, *, key: str) -> Outcome:
        if not data.startswith(MAGIC_OUTCOME):
            raise CorruptObject(f"result {key} is not a starburst outcome (bad header)")
        try:
            fields = pickle.loads(data[len(MAGIC_OUTCOME) :])
            # Fields a newer worker added are dropped, not an error.
            known = cls.__dataclass_fields__
            return cls(**{k: v for k, v in fields.items() if k in known})
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
        tb = fill_source_lines(self.traceback)
        try:
            if self.exc is None:
                raise _NotShipped(self.extra.get("exc_problem") or "it could not be pickled")
            loaded = pickle.loads(self.exc)
            if not isinstance(loaded, BaseException):
                raise TypeError(f"it unpickled as a {type(loaded).__name__}, not an exception")
            exc = loaded
        except (Exception, SystemExit) as err:  # a __reduce__ may even call sys.exit
            exc = RemoteError(self.exc_type, self.exc_message, tb, reason=_why_not_rebuilt(err))
        exc.__cause__ = RemoteTraceback(f'\n"""\n{tb}"""')
        return exc


def _safe_str(obj: object) -> str:
    """``str(obj)``, or a placeholder when its ``__str__`` raises."""
    try:
        return str(obj)
    except BaseException:
        return f"<str() of a {type(obj).__name__} failed>"


class _NotShipped(Exception):
    """The worker could not pickle the exception; the message says why."""


def _why_not_rebuilt(err: BaseException) -> str:
    if isinstance(err, _NotShipped):
        return f"{err}; it arrives as text only"
    if isinstance(err, (ImportError, AttributeError)):
        return (
            f"its class could not be found here ({type(err).__name__}: {err}); "
            "install the module that defines it"
        )
    return f"it could not be rebuilt here ({type(err).__name__}: {err})"


def _rebuild_exception(
    cls: type[BaseException], args: tuple[Any, ...], state: dict[str, Any] | None
) -> BaseException:
    """An exception made without calling its ``__init__``: ``BaseException.__new__``
    sets ``args``, and the instance dict holds what ``__init__`` had set."""
    exc = cls.__new__(cls, *args)
    exc.args = args
    if state:
        exc.__dict__.update(state)
    return exc


class _ByState:
    """Pickles an exception as class + args + ``__dict__`` instead of ``cls(*args)``."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __reduce__(self) -> tuple[Any, ...]:
        state = dict(getattr(self.exc, "__dict__", {}))
        return (_rebuild_exception, (type(self.exc), self.exc.args, state))


def _pickle_exception(exc: BaseException) -> tuple[bytes | None, str]:
    """The pickled exception and "", or None and why it cannot travel.

    Each candidate is unpickled here, as the client will: an exception that pickles but
    cannot be rebuilt (an ``__init__`` taking other arguments than ``args``) is common.
    """
    problems: list[str] = []
    for candidate in (exc, _ByState(exc)):
        try:
            blob: bytes = cloudpickle.dumps(candidate, protocol=5)
            pickle.loads(blob)
        except BaseException as err:  # a __reduce__ may even call sys.exit
            problems.append(f"{type(err).__name__}: {_safe_str(err)}")
            continue
        return blob, ""
    return None, (
        f"the worker could not pickle {type(exc).__qualname__} ({problems[-1]}); "
        "keep an exception's attributes picklable, or define __reduce__ for it"
    )


_FRAME = re.compile(r'^  File "(?P<file>[^"]+)", line (?P<line>\d+), in ')


def fill_source_lines(tb: str) -> str:
    """Add the source line under each frame of a formatted traceback that lacks it,
    from this interpreter's ``linecache`` (the client has the script or the notebook
    cells that the worker could not read)."""
    lines = tb.splitlines(keepends=True)
    out: list[str] = []
    for i, line in enumerate(lines):
        out.append(line)
        match = _FRAME.match(line)
        if match is None:
            continue
        following = lines[i + 1] if i + 1 < len(lines) else ""
        if following.startswith("    "):
            continue  # the worker had the source
        source = linecache.getline(match["file"], int(match["line"])).strip()
        if source:
            out.append(f"    {source}\n")
    return "".join(out)
