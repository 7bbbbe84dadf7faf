"""The original RENT-A-HAL worker protocol (``/predict``, ``/health``) and ``/stats``."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from rentahal.worker.errors import InputError
from rentahal.worker.gate import WorkerState
from rentahal.worker.media import load_images
from rentahal.worker.routes._deps import State

router = APIRouter()


class PredictRequest(BaseModel):
    """What the broker sends to a ``worker_node``."""

    prompt: str
    type: str = "chat"
    model_type: str = "worker_node"
    model_name: str = ""
    image: str | None = None


class PredictResponse(BaseModel):
    """The original worker's answer."""

    response: str


async def answer_predict(state: WorkerState, body: PredictRequest) -> PredictResponse:
    """Chat, or vision when an image comes along (speech queries arrive as chat)."""
    if body.type == "imagine":
        raise InputError("imagine queries go to POST /sdapi/v1/txt2img, not /predict")
    images = await load_images([body.image]) if body.image else []
    if body.type == "vision" and not images:
        raise InputError("a vision query needs an image")
    async with state.gate.admit():
        text = await state.engine.chat(body.prompt, body.model_name, images)
    return PredictResponse(response=text)


@router.post("/predict")
@router.post("/predict/")
async def predict(body: PredictRequest, state: State) -> PredictResponse:
    """Chat, or vision when an image comes along (served by :func:`answer_predict`; the
    app answers this call on its fast route, see :mod:`rentahal.worker.fast_predict`)."""
    return await answer_predict(state, body)


@router.get("/health")
async def health() -> dict[str, str]:
    """Liveness probe of the original protocol."""
    return {"status": "healthy"}


@router.get("/stats")
async def stats(state: State) -> dict[str, int]:
    """Counters of model calls, ``max_in_flight_seen`` measured before the semaphore."""
    return state.gate.snapshot()
