"""The one exception hierarchy of the broker.

Third-party errors (httpx, redis, SQLAlchemy) are translated at the layer that
meets them; code above that layer only sees these types::

    BrokerError
    ├── ConfigError              a bad setting, named by its key
    ├── QueryRejected            refused before queueing (message is user-facing)
    │   ├── QueueFull
    │   │   └── ShareFull        the user's own share is full (HTTP callers wait for it)
    │   └── NoWorkerAvailable    no live worker can serve the query type/model
    │       └── WorkerCircuitOpen  every such worker has an open circuit
    ├── WorkerError              a worker call failed
    │   ├── WorkerTimeout        no answer within the deadline
    │   ├── WorkerUnavailable    connect error or 5xx: retry elsewhere
    │   ├── WorkerRateLimited    429: cool the worker down, retry elsewhere
    │   ├── WorkerRejected       4xx: the query itself is bad, never retried
    │   └── WorkerBadResponse    an answer we cannot parse (HTML, truncated JSON)
    ├── RealmNotFound
    ├── PoolNotFound
    ├── StaleVersion             a realm-config edit based on an older version
    ├── BusError                 the queue transport failed
    └── StorageError             the database refused a write
        ├── LedgerDeferred       ... and the ledger row waits in the local spool
        ├── ShardUnavailable     the shard holding the user's data does not answer
        └── PrefixMoving         the user's data is being moved between shards
"""

from __future__ import annotations


class BrokerError(Exception):
    """Base of every error the broker raises on purpose."""


class ConfigError(BrokerError):
    """A configuration value is missing or invalid; the message names the key."""


class QueryRejected(BrokerError):
    """A query was refused before it was queued; ``str(exc)`` is shown to the user."""


class QueueFull(QueryRejected):
    """The queue (global, realm or per-user share) has no room."""


class ShareFull(QueueFull):
    """The user already has their share of queries queued or running."""


class NoWorkerAvailable(QueryRejected):
    """No live worker serves this query type or model."""


class WorkerCircuitOpen(NoWorkerAvailable):
    """Every worker that could serve the query has an open circuit.

    ``workers`` names them; ``retry_in_s`` is when the first is tried again
    (a successful health probe may close a circuit sooner).
    """

    def __init__(self, workers: list[str], worker_type: str, retry_in_s: int) -> None:
        self.workers = workers
        self.retry_in_s = max(0, retry_in_s)
        if len(workers) == 1:
            who = f"{worker_type} worker {workers[0]} is"
        else:
            who = f"{worker_type} workers {', '.join(workers)} are"
        super().__init__(
            f"The {who} not answering (circuit open); it will be tried again in {self.retry_in_s} s"
        )


class WorkerError(BrokerError):
    """A call to an AI worker failed."""

    retryable: bool = True

    def __init__(
        self, message: str, *, worker: str | None = None, status: int | None = None
    ) -> None:
        super().__init__(message)
        self.worker = worker
        self.status = status


class WorkerTimeout(WorkerError):
    """The worker did not answer within the deadline."""


class WorkerUnavailable(WorkerError):
    """The worker could not be reached or answered 5xx."""


class WorkerRateLimited(WorkerError):
    """The worker answered 429; it is cooled down, not blacklisted."""


class WorkerRejected(WorkerError):
    """The worker answered 4xx: the request is at fault, so it is not retried."""

    retryable = False


class WorkerBadResponse(WorkerError):
    """The worker answered something that is not the protocol's shape."""


class RealmNotFound(BrokerError):
    """No realm of that name exists."""


class PoolNotFound(BrokerError):
    """No pool alias of that name exists."""


class StaleVersion(BrokerError):
    """A realm configuration change named a version that is no longer the current one."""

    def __init__(self, expected: int, current: int) -> None:
        super().__init__(
            f"The realm configuration is at version {current}, not {expected}; "
            "reload it and apply the change again"
        )
        self.expected = expected
        self.current = current


class BusError(BrokerError):
    """The queue/broadcast transport failed."""


class StorageError(BrokerError):
    """The database could not be written (for example a read-only file)."""


class PeerLost(WorkerError):
    """A federated peer accepted a query and then failed: it may have run, so no retry."""

    retryable = False


class LedgerDeferred(StorageError):
    """The database refused a ledger row; it is in the local spool and written later."""


class ShardUnavailable(StorageError):
    """The database shard that holds a user's data does not answer; ``str(exc)`` says so."""

    def __init__(self, shard: str) -> None:
        super().__init__(
            "The database holding your account is unavailable right now; "
            "please try again shortly (nothing you did is lost)"
        )
        self.shard = shard


class PrefixMoving(StorageError):
    """The user's data is being moved (or has moved) to another shard: try again soon.

    ``prefixes`` are the GUID prefixes whose writes were refused.
    """

    def __init__(self, prefixes: list[str]) -> None:
        super().__init__(
            "Your account's data is being moved to another database; please try again in a moment"
        )
        self.prefixes = prefixes
