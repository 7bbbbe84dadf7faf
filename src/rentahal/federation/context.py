"""The job whose worker is being chosen or called, for federation routing decisions.

Set by the realm processor while it checks and reserves a worker for a job, and
by the executor while the job runs; read by the federation gate and backend,
which need the job's id, age and route (hops, visited installations).
"""

from __future__ import annotations

from contextvars import ContextVar

from rentahal.models import Job

ROUTING_JOB: ContextVar[Job | None] = ContextVar("routing_job", default=None)
