"""Every Redis key, stream and channel name of the distributed bus, built in one place.

All names start with :data:`PREFIX`, so one Redis can be shared with other
applications and ``redis-cli --scan --pattern 'rentahal:*'`` lists ours.
"""

from __future__ import annotations

PREFIX = "rentahal"

#: The pseudo-consumer of a queue's consumer group that owns jobs handed back
#: (requeued, skipped by ``accept``, reclaimed from a dead node). Node ids must
#: not take this name.
HELD_CONSUMER = "__held__"


def stream_key(queue: str) -> str:
    """The Redis Stream holding ``queue``'s entries (one field: ``job_id``)."""
    return f"{PREFIX}:queue:{queue}"


def jobs_key(queue: str) -> str:
    """Hash ``job_id -> Job JSON`` of the jobs in ``queue`` (waiting or taken)."""
    return f"{PREFIX}:queue:{queue}:jobs"


def job_index_key(queue: str) -> str:
    """Hash ``job_id -> stream entry id`` of the jobs in ``queue`` (for remove and ack)."""
    return f"{PREFIX}:queue:{queue}:index"


def channel_key(channel: str) -> str:
    """The pub/sub channel carrying the bus channel ``channel``."""
    return f"{PREFIX}:channel:{channel}"


def delivered_key(job_id: str) -> str:
    """The marker set once the result of ``job_id`` was delivered (exactly-once guard)."""
    return f"{PREFIX}:delivered:{job_id}"


def slots_key(worker: str) -> str:
    """Sorted set ``holder -> lease expiry`` of the calls running on ``worker``."""
    return f"{PREFIX}:slots:{worker}"


def leader_key(role: str) -> str:
    """The lock naming the node that performs ``role`` (for example ``health``)."""
    return f"{PREFIX}:leader:{role}"


def mailbox_key(user_guid: str) -> str:
    """List of the user's recent results, for delivery on reconnect."""
    return f"{PREFIX}:mailbox:{user_guid}"


def running_key() -> str:
    """Hash ``job_id -> node_id|user_guid`` of jobs running on any node."""
    return f"{PREFIX}:running"


def share_key(kind: str, subject: str) -> str:
    """Sorted set ``holder -> lease expiry`` counting what ``subject`` holds of a share.

    ``kind`` names the share (``user`` or ``address`` for queued queries).
    """
    return f"{PREFIX}:share:{kind}:{subject}"


#: The bus channel on which a queue's changes wake the ``take`` calls of every node.
WAKE_CHANNEL = "__queue-wake__"


def fair_order_key(queue: str) -> str:
    """Sorted set of ``queue``'s waiting jobs in fair order (``seq:job_id`` by start tag)."""
    return f"{PREFIX}:queue:{queue}:fair"


def fair_tags_key(queue: str) -> str:
    """Hash ``job_id -> "start|cost|seq|user"``: the fair tag of each waiting or taken job."""
    return f"{PREFIX}:queue:{queue}:tags"


def fair_finish_key(queue: str) -> str:
    """Sorted set ``user -> virtual finish`` of each user's last queued job."""
    return f"{PREFIX}:queue:{queue}:finish"


def fair_flows_key(queue: str) -> str:
    """Hash of ``queue``'s virtual ``clock``, enqueue ``seq`` and ``n:<user>`` waiting counts."""
    return f"{PREFIX}:queue:{queue}:flows"
