"""RENT-A-HAL realm broker: one web GUI and API in front of many AI worker nodes."""

from __future__ import annotations

from rentahal.broker import Broker
from rentahal.config import Settings, load_settings
from rentahal.errors import (
    BrokerError,
    BusError,
    ConfigError,
    NoWorkerAvailable,
    QueryRejected,
    QueueFull,
    RealmNotFound,
    StorageError,
    WorkerError,
    WorkerTimeout,
    WorkerUnavailable,
)
from rentahal.models import AIWorker, HuggingFaceModel, Job, Query, Result, User

__all__ = [
    "AIWorker",
    "Broker",
    "BrokerError",
    "BusError",
    "ConfigError",
    "HuggingFaceModel",
    "Job",
    "NoWorkerAvailable",
    "Query",
    "QueryRejected",
    "QueueFull",
    "RealmNotFound",
    "Result",
    "Settings",
    "StorageError",
    "User",
    "WorkerError",
    "WorkerTimeout",
    "WorkerUnavailable",
    "load_settings",
]
