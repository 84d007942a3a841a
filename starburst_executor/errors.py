"""Every error starburst-executor raises, in one tree.

::

    StarburstError                      base of everything below
    ├── ConfigError                     a setting is invalid or missing
    │   └── InvalidTaskSize             a cpu/memory pair Fargate does not offer
    ├── InvalidSessionId (ValueError)   a session or task id fails the fixed pattern
    ├── SessionNotFound                 no manifest under that session id
    ├── SessionExpired                  the session's deadline has passed
    ├── SchemaVersionError              a manifest written by a newer release
    ├── SubmitConflict                  another client wrote the task id this submit drew
    ├── EnvironmentMismatch             worker and client differ in Python/cloudpickle/package
    ├── PicklingError (pickle.PicklingError)
    │   │                               a function, argument or result cannot be pickled
    │   └── PayloadTooLarge             a pickled call or result is over the object limit
    ├── CorruptObject (BrokenProcessPool)
    │                                   a payload or result object cannot be decoded
    ├── RemoteError                     a remote exception whose class cannot be rebuilt here
    ├── WorkerLost (BrokenProcessPool)  a task's worker died more than ``max_retries`` times
    ├── WorkerDied (BrokenProcessPool)  an ephemeral task's worker exited without a result
    ├── BrokenExecutor (BrokenProcessPool)
    │   │                               the executor takes no more work
    │   └── InitializerError            the executor's initializer raised in a worker
    ├── CostLimitExceeded               launching would pass ``max_hourly_cost``
    ├── WorkersCannotStart              new workers keep stopping before they run
    ├── StoreError                      the object store refused or failed a request
    │   ├── AccessDenied                credentials lack a permission (names the action)
    │   ├── CredentialsMissing          no credentials were found for the store
    │   ├── EndpointUnreachable         the store's endpoint does not answer
    │   ├── BucketNotFound              the bucket does not exist
    │   ├── ObjectNotFound              no object under that key
    │   └── PreconditionFailed          a conditional write lost its race (412)
    └── LocalServerError                the embedded S3 server cannot start or be reached

Messages name the session, task or key involved and say what to do next.

Code written for the standard library catches ours the standard way, as loky's
``TerminatedWorkerError`` is a ``BrokenProcessPool``: a dead worker, a lost task, a
broken executor or an object that cannot be decoded are each a
``concurrent.futures.process.BrokenProcessPool`` (so also a
``concurrent.futures.BrokenExecutor``), and ``PicklingError`` is a
``pickle.PicklingError``. The semantics stay ours: only the dead worker's future
fails, and pickling fails at ``submit``, naming the argument.
"""

from __future__ import annotations

import pickle
from concurrent.futures.process import BrokenProcessPool

__all__ = [
    "AccessDenied",
    "BrokenExecutor",
    "BucketNotFound",
    "ConfigError",
    "CorruptObject",
    "CostLimitExceeded",
    "CredentialsMissing",
    "EndpointUnreachable",
    "EnvironmentMismatch",
    "InitializerError",
    "InvalidSessionId",
    "InvalidTaskSize",
    "LocalServerError",
    "ObjectNotFound",
    "PayloadTooLarge",
    "PicklingError",
    "PreconditionFailed",
    "RemoteError",
    "SchemaVersionError",
    "SessionExpired",
    "SessionNotFound",
    "StarburstError",
    "StoreError",
    "SubmitConflict",
    "WorkerDied",
    "WorkerLost",
    "WorkersCannotStart",
]


class StarburstError(Exception):
    """Base class of every error raised by starburst-executor."""


class ConfigError(StarburstError):
    """A setting is invalid or missing."""


class InvalidTaskSize(ConfigError):
    """Fargate does not offer this cpu/memory pair; ``nearest`` lists valid ones."""

    def __init__(self, message: str, *, nearest: list[tuple[float, int]]) -> None:
        super().__init__(message)
        self.nearest = nearest


class InvalidSessionId(StarburstError, ValueError):
    """A session or task id does not match its fixed pattern."""


class SessionNotFound(StarburstError):
    """No session manifest exists under the given id."""


class SessionExpired(StarburstError):
    """The session's deadline has passed; workers no longer serve it."""


class SchemaVersionError(StarburstError):
    """The manifest was written by a newer release of starburst-executor."""


class SubmitConflict(StarburstError):
    """Two clients attached to one session drew the same task id; this submit lost."""


class EnvironmentMismatch(StarburstError):
    """The worker's environment differs from the client's."""


class PicklingError(StarburstError, pickle.PicklingError):
    """A function, argument, result or exception cannot be pickled."""


class PayloadTooLarge(PicklingError):
    """A pickled call or result is larger than one S3 object may be."""


class CorruptObject(StarburstError, BrokenProcessPool):
    """A stored payload or result cannot be decoded."""


class RemoteError(StarburstError):
    """A task raised an exception that could not be rebuilt on the client.

    Attributes:
        type_name: the qualified name of the remote exception's class.
        remote_message: ``str()`` of the remote exception.
        remote_traceback: the formatted remote traceback.
        reason: why it could not be rebuilt, and what to do about it.
    """

    def __init__(
        self,
        type_name: str,
        remote_message: str,
        remote_traceback: str,
        reason: str = "its class could not be unpickled here; install the module that defines it",
    ) -> None:
        super().__init__(f"task raised {type_name}: {remote_message} ({reason})")
        self.type_name = type_name
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback
        self.reason = reason

    def __reduce__(self) -> tuple[type[RemoteError], tuple[str, str, str, str]]:
        return (
            RemoteError,
            (self.type_name, self.remote_message, self.remote_traceback, self.reason),
        )


class WorkerLost(StarburstError, BrokenProcessPool):
    """The worker running a task vanished (killed, out of memory) too many times."""


class WorkerDied(StarburstError, BrokenProcessPool):
    """The worker of an ephemeral task exited without writing its result.

    Attributes:
        task_id: the task.
        exit_status: the worker's exit code, negative for a signal.
        logs: where the worker's output is.
        stop_code, stopped_reason: what ECS said (None and "" for local workers).
        out_of_memory: the worker was stopped for using too much memory.
    """

    def __init__(
        self,
        message: str,
        *,
        task_id: str,
        exit_status: int | None,
        logs: str,
        stop_code: str | None = None,
        stopped_reason: str = "",
        out_of_memory: bool = False,
    ) -> None:
        super().__init__(message)
        self.task_id = task_id
        self.exit_status = exit_status
        self.logs = logs
        self.stop_code = stop_code
        self.stopped_reason = stopped_reason
        self.out_of_memory = out_of_memory

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_worker_died, (str(self), dict(self.__dict__)))


def _rebuild_worker_died(message: str, fields: dict[str, object]) -> WorkerDied:
    err = WorkerDied.__new__(WorkerDied)
    Exception.__init__(err, message)
    err.__dict__.update(fields)
    return err


class BrokenExecutor(StarburstError, BrokenProcessPool):
    """The executor takes no more work: its initializer failed in a worker.

    As with the standard library, the future whose worker hit the failure, every
    queued one and every later ``submit`` raise it.
    """


class InitializerError(BrokenExecutor):
    """The executor's ``initializer`` raised in a worker (the cause says how)."""


class CostLimitExceeded(StarburstError):
    """Launching another worker would pass the session's ``max_hourly_cost``."""


class WorkersCannotStart(StarburstError):
    """The session's last workers all stopped before running anything (the image cannot
    be pulled, the task cannot reach S3 or its secrets; locally, a worker failing at
    start): launching more would only repeat it. ``stopped_reason`` is ECS's own words
    for the last one, or the local worker's exit code."""

    def __init__(self, message: str, *, stopped_reason: str = "") -> None:
        super().__init__(message)
        self.stopped_reason = stopped_reason


class StoreError(StarburstError):
    """The object store refused or failed a request."""


class AccessDenied(StoreError):
    """The credentials in use lack a permission."""


class CredentialsMissing(StoreError):
    """No credentials were found for the object store (none in the AWS chain)."""


class EndpointUnreachable(StoreError):
    """The object store's endpoint did not answer (connection refused, timeout, DNS)."""


class BucketNotFound(StoreError):
    """The configured bucket does not exist."""


class ObjectNotFound(StoreError):
    """No object exists under the key."""


class PreconditionFailed(StoreError):
    """A conditional write lost its race (HTTP 412; a 409 overlap is retried instead)."""


class LocalServerError(StarburstError):
    """The embedded local S3 server could not be started or reached."""
