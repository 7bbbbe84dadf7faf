"""The broker: one entry point (``Broker``) and the rooms behind it.

``core`` submits, routes, cancels and finishes; ``queues`` are the queues
this node consumes (legacy and realms); ``direct`` runs the queries that skip
the queue (streamed chats, whisper, bark); ``users`` is the user
directory; ``jobs`` the one record of where each job is; ``delivery`` gets
results to people; ``control`` carries typed messages between nodes;
``fleet`` administers workers; ``notifier`` tells clients how queues move;
``views`` is what the API layer may read.
"""

from __future__ import annotations

from rentahal.broker.core import Broker
from rentahal.broker.queues import LEGACY_QUEUE, WATCHDOG_INTERVAL_S

__all__ = ["LEGACY_QUEUE", "WATCHDOG_INTERVAL_S", "Broker"]
