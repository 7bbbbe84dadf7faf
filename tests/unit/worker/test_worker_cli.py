"""``worker_command`` as registered on a typer app (serving is covered by integration)."""

from __future__ import annotations

import typer
from typer.testing import CliRunner

from rentahal.worker.cli import worker_command


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("worker")(worker_command)
    app.command("other")(lambda: None)
    return app


def test_help_lists_every_option() -> None:
    result = CliRunner().invoke(_app(), ["worker", "--help"])
    assert result.exit_code == 0
    options = "host port engine ollama-url openai-url openai-api-key latency-ms max-concurrency"
    for option in [*options.split(), "log-level"]:
        assert f"--{option}" in result.output


def test_bad_settings_are_named() -> None:
    result = CliRunner().invoke(_app(), ["worker", "--engine", "bogus", "--latency-ms", "-1"])
    assert result.exit_code == 2
    assert "--engine" in result.output
    assert "--latency-ms" in result.output
