"""Small real HTTP servers speaking the worker APIs the broker talks to.

Each module has ``create_app(state)`` for one API shape; :class:`FakeServer`
runs such an app with uvicorn on 127.0.0.1 in a background thread. The shared
:class:`FakeState` records every request and can be told to misbehave.
"""

from __future__ import annotations

from ._server import PNG_B64, WAV_BYTES, FakeServer, FakeState, Recorded

__all__ = ["PNG_B64", "WAV_BYTES", "FakeServer", "FakeState", "Recorded"]
