"""The interface every worker protocol implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import aiohttp

from rentahal.models import AIWorker, Query, ResultType

#: The one pooled HTTP client a node shares between all worker calls.
HttpClient = aiohttp.ClientSession


@dataclass(frozen=True, slots=True)
class WorkerReply:
    """What a worker produced: text, or base64 PNG/WAV without a data-URI prefix."""

    result: str
    result_type: ResultType = "text"


class Backend(Protocol):
    """One worker protocol (``predict``, ``a1111``, ``ollama``, ...).

    Implementations translate HTTP library errors into :mod:`rentahal.errors` types:
    ``WorkerTimeout``, ``WorkerUnavailable`` (connect error, 5xx),
    ``WorkerRateLimited`` (429), ``WorkerRejected`` (other 4xx) and
    ``WorkerBadResponse`` (unparseable answers).
    """

    protocol: str

    async def run(
        self, client: HttpClient, worker: AIWorker, query: Query, timeout_s: float
    ) -> WorkerReply:
        """Run ``query`` on ``worker`` and return its answer."""
        ...

    async def probe(self, client: HttpClient, worker: AIWorker, timeout_s: float) -> int:
        """Cheap health probe (never a billed completion); returns the HTTP status.

        Raises ``WorkerUnavailable`` / ``WorkerTimeout`` when no answer came.
        """
        ...

    async def list_models(
        self, client: HttpClient, worker: AIWorker, timeout_s: float
    ) -> list[str]:
        """Models the worker serves, or ``[]`` when the protocol cannot tell."""
        ...
