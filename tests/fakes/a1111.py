"""AUTOMATIC1111 WebUI ``--api`` shape: txt2img, options, sd-models.

Options: ``data_uri`` answers the image with a ``data:image/png;base64,`` prefix.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ._server import PNG_B64, FakeState, Recorded, recording

SD_MODELS = [
    {
        "title": "v1-5-pruned-emaonly.safetensors [6ce0161689]",
        "model_name": "v1-5-pruned-emaonly",
        "hash": "cc6cb27103",
        "filename": "/models/Stable-diffusion/v1-5-pruned-emaonly.safetensors",
    },
    {"title": "sdxl_base.safetensors [31e35c80fc]", "model_name": "sdxl_base"},
]


def create_app(state: FakeState) -> Starlette:
    """The fake WebUI."""

    async def txt2img(request: Request, recorded: Recorded) -> Response:
        image = PNG_B64
        if state.options.get("data_uri"):
            image = f"data:image/png;base64,{PNG_B64}"
        return JSONResponse({"images": [image], "parameters": recorded.json, "info": "{}"})

    async def options(request: Request, recorded: Recorded) -> Response:
        return JSONResponse({"sd_model_checkpoint": SD_MODELS[0]["title"], "samples_save": True})

    async def sd_models(request: Request, recorded: Recorded) -> Response:
        return JSONResponse(SD_MODELS)

    return Starlette(
        routes=[
            Route("/sdapi/v1/txt2img", recording(state, txt2img), methods=["POST"]),
            Route("/sdapi/v1/options", recording(state, options), methods=["GET"]),
            Route("/sdapi/v1/sd-models", recording(state, sd_models), methods=["GET"]),
        ]
    )
