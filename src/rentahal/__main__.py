"""``python -m rentahal``: the ``rentahal`` command."""

from __future__ import annotations

from rentahal.cli import app

app()
