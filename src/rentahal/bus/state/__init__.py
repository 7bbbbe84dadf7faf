"""Cluster state behind one ``ClusterState`` interface: in memory or on Redis."""

from __future__ import annotations

from rentahal.bus.state.base import ClusterState
from rentahal.bus.state.memory import MemoryState

__all__ = ["ClusterState", "MemoryState"]
