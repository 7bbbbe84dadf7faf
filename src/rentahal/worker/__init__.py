"""The reference worker node (``rentahal worker``): a small HTTP server that answers
the original ``/predict`` protocol, AUTOMATIC1111's ``/sdapi``, OpenAI's ``/v1`` and
Ollama's ``/api`` with a demo engine or by forwarding to a real model server.
"""

from __future__ import annotations

from rentahal.worker.app import create_app
from rentahal.worker.server import BackgroundWorker
from rentahal.worker.settings import WorkerSettings

__all__ = ["BackgroundWorker", "WorkerSettings", "create_app"]
