"""Queue and broadcast transports behind one ``Bus`` interface."""

from __future__ import annotations

from rentahal.bus.base import Bus
from rentahal.bus.memory import MemoryBus

__all__ = ["Bus", "MemoryBus"]
