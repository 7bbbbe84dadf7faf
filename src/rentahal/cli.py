"""The ``rentahal`` command."""

from __future__ import annotations

import typer

app = typer.Typer(help="RENT-A-HAL realm broker", no_args_is_help=True)
