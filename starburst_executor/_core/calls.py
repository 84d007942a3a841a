"""Wrappers that run inside workers: ``map`` chunks and initializers.

``map`` chunks as the standard library's process pool does, one chunk per remote task.
These functions are pickled by reference, so workers import them from the package.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..errors import InitializerError


def get_chunks(*iterables: Iterable[Any], chunksize: int) -> Iterator[tuple[tuple[Any, ...], ...]]:
    """Tuples of up to ``chunksize`` argument tuples, in order."""
    it = zip(*iterables, strict=False)
    while chunk := tuple(itertools.islice(it, chunksize)):
        yield chunk


def process_chunk(fn: Callable[..., Any], chunk: tuple[tuple[Any, ...], ...]) -> list[Any]:
    """Runs in the worker: one remote task computes a whole chunk."""
    return [fn(*args) for args in chunk]


def chain_results(chunks: Iterator[list[Any]]) -> Iterator[Any]:
    """Flatten chunk results lazily, dropping each list as it is consumed."""
    for element in chunks:
        element.reverse()
        while element:
            yield element.pop()


def initialized_call(
    initializer: Callable[..., Any],
    initargs: tuple[Any, ...],
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    """Runs in the worker: the executor's initializer, then the call (one worker, one call).

    An initializer that raises breaks the executor, as in the standard library: the
    ``InitializerError`` tells the client so, and carries the original as its cause.
    """
    try:
        initializer(*initargs)
    except BaseException as err:
        name = getattr(initializer, "__qualname__", repr(initializer))
        raise InitializerError(
            f"the executor's initializer {name} raised {type(err).__name__}: {err}"
        ) from err
    return fn(*args, **kwargs)
