"""Errors the worker answers with; each carries the HTTP status it maps to::

WorkerNodeError
├── InputError          400: the request is malformed (not an image, not audio, ...)
├── UnsupportedError    501: the configured engine cannot do this
└── UpstreamError       502: the upstream model server failed or answered nonsense
    └── UpstreamTimeout 504: the upstream model server did not answer in time
"""

from __future__ import annotations


class WorkerNodeError(Exception):
    """Base of the errors a worker turns into a JSON error answer."""

    status: int = 500
    kind: str = "server_error"

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class InputError(WorkerNodeError):
    """The client sent something we cannot use; the message says what."""

    status = 400
    kind = "invalid_request_error"


class UnsupportedError(WorkerNodeError):
    """The configured engine has no such capability."""

    status = 501
    kind = "not_supported"


class UpstreamError(WorkerNodeError):
    """The upstream model server failed; ``status`` may carry its 4xx through."""

    status = 502
    kind = "upstream_error"


class UpstreamTimeout(UpstreamError):
    """The upstream model server did not answer within the timeout."""

    status = 504
    kind = "upstream_timeout"
