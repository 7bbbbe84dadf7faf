"""AUTOMATIC1111 WebUI's API shape: ``txt2img`` and cheap probes."""

from __future__ import annotations

import base64
import json
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from rentahal.worker.routes._deps import State

router = APIRouter()


class Txt2ImgRequest(BaseModel):
    """The fields of A1111's ``/sdapi/v1/txt2img`` the broker sends."""

    prompt: str
    negative_prompt: str = ""
    steps: int = Field(default=50, ge=1, le=150)
    sampler_name: str = "Euler a"
    cfg_scale: float = Field(default=7.0, ge=0.0, le=30.0)
    width: int = Field(default=512, ge=64, le=2048)
    height: int = Field(default=512, ge=64, le=2048)
    seed: int = -1
    batch_size: int = Field(default=1, ge=1, le=4)


@router.post("/sdapi/v1/txt2img")
async def txt2img(body: Txt2ImgRequest, state: State) -> dict[str, Any]:
    """``{"images": [base64 PNG], "parameters", "info"}`` as A1111 answers."""
    images = []
    async with state.gate.admit():
        for index in range(body.batch_size):
            seed = body.seed + index if body.seed >= 0 else (-1 if index == 0 else index)
            png = await state.engine.imagine(body.prompt, body.width, body.height, seed)
            images.append(base64.b64encode(png).decode("ascii"))
    info: dict[str, Any] = {
        "prompt": body.prompt,
        "negative_prompt": body.negative_prompt,
        "seed": body.seed,
        "width": body.width,
        "height": body.height,
        "engine": state.engine.name,
    }
    if state.engine.name == "demo":
        info["note"] = "demo picture: steps, sampler, cfg_scale and negative_prompt are ignored"
    return {"images": images, "parameters": body.model_dump(), "info": json.dumps(info)}


@router.get("/sdapi/v1/options")
async def options(state: State) -> dict[str, Any]:
    """A cheap probe, as A1111's own options answer (only the checkpoint field)."""
    checkpoint = "demo-imagine" if state.engine.name == "demo" else state.engine.name
    return {"sd_model_checkpoint": checkpoint}


@router.get("/sdapi/v1/sd-models")
async def sd_models(state: State) -> list[dict[str, str]]:
    """The image models of the engine, as A1111 lists checkpoints."""
    cards = [card for card in await state.engine.models() if card.kind == "imagine"]
    return [{"title": card.name, "model_name": card.name} for card in cards]


@router.get("/internal/ping")
async def ping() -> dict[str, str]:
    """The cheapest probe there is."""
    return {}
