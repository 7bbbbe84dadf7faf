"""Dependencies shared by the route modules."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from rentahal.worker.gate import WorkerState


def get_state(request: Request) -> WorkerState:
    """The worker state the lifespan stored on the app."""
    state: WorkerState = request.app.state.worker
    return state


State = Annotated[WorkerState, Depends(get_state)]
