"""``rentahal worker``: run the reference worker node with uvicorn."""

from __future__ import annotations

import logging

import typer
import uvicorn
from pydantic import ValidationError

from rentahal.lifecycle import exit_on_signals
from rentahal.worker.app import create_app
from rentahal.worker.settings import WorkerSettings


def worker_command(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(8000, help="TCP port to listen on."),
    engine: str = typer.Option("demo", help="demo, ollama or openai."),
    ollama_url: str = typer.Option("http://127.0.0.1:11434", help="Ollama server (engine ollama)."),
    openai_url: str = typer.Option(
        "http://127.0.0.1:8080", help="OpenAI-compatible server (engine openai)."
    ),
    openai_api_key: str | None = typer.Option(
        None, envvar="OPENAI_API_KEY", help="Bearer key for the OpenAI-compatible server."
    ),
    latency_ms: float = typer.Option(0.0, help="Simulated model time added to every call."),
    max_concurrency: int = typer.Option(0, help="Parallel model calls; 0 is unlimited."),
    log_level: str = typer.Option("info", help="debug, info, warning or error."),
    broker: str | None = typer.Option(None, "--broker", help="Register with this broker URL."),
    token: str | None = typer.Option(
        None, "--token", envvar="RENTAHAL_WORKER_TOKEN", help="Worker token for --broker."
    ),
    worker_type: str = typer.Option("chat", "--type", help="chat, vision, imagine or speech."),
    name: str | None = typer.Option(None, "--name", help="Name to register (default host-port)."),
    advertise: str | None = typer.Option(
        None, "--advertise", help="host:port the broker calls (default: this port)."
    ),
) -> None:
    """Serve the reference worker: /predict, /sdapi, /v1 and /api with the chosen engine."""
    try:
        settings = WorkerSettings.model_validate(
            {
                "host": host,
                "port": port,
                "engine": engine,
                "ollama_url": ollama_url,
                "openai_url": openai_url,
                "openai_api_key": openai_api_key,
                "latency_ms": latency_ms,
                "max_concurrency": max_concurrency,
                "broker_url": broker,
                "token": token,
                "worker_type": worker_type,
                "name": name,
                "advertise": advertise,
            }
        )
    except ValidationError as exc:
        problems = [
            "--" + "-".join(map(str, error["loc"])).replace("_", "-") + ": " + error["msg"]
            for error in exc.errors()
        ]
        raise typer.BadParameter("; ".join(problems)) from None
    if (broker is None) != (token is None):
        raise typer.BadParameter("--broker and --token go together")
    level = log_level.upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with exit_on_signals():  # SIGTERM/SIGINT: graceful shutdown, exit code 0
        uvicorn.run(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            log_level=log_level.lower(),
        )
