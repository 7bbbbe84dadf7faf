"""``python -m rentahal.worker``: the worker command without the rest of the CLI."""

from __future__ import annotations

import typer

from rentahal.worker.cli import worker_command

if __name__ == "__main__":
    typer.run(worker_command)
