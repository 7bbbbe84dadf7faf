"""Security headers on every HTTP response: a strict CSP for the GUI, nosniff, no referrer.

The web GUI loads only its own scripts and styles, shows images and audio from ``data:``
and ``blob:`` URLs, and talks to its own origin over HTTP and WebSocket; the policy allows
exactly that. FastAPI's interactive docs pages load Swagger/ReDoc from a CDN with an inline
script, so they get the other headers but no CSP.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "img-src 'self' data: blob:",
        "media-src 'self' data: blob:",
        "connect-src 'self' ws: wss:",
        "style-src 'self'",
        "script-src 'self'",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
BASE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


_RawHeaders = list[tuple[bytes, bytes]]
_BASE_RAW = tuple((name.lower().encode(), value.encode()) for name, value in BASE_HEADERS.items())
_WITH_CSP = (*_BASE_RAW, (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()))


def with_security_headers(headers: _RawHeaders, with_csp: bool) -> _RawHeaders:
    """``headers`` (raw ASGI pairs) plus each security header they do not set already."""
    wanted = _WITH_CSP if with_csp else _BASE_RAW
    present = {name.lower() for name, _value in headers}
    return [*headers, *(pair for pair in wanted if pair[0] not in present)]


class SecurityHeadersMiddleware:
    """Adds the headers to HTTP responses that do not set them already (WebSockets pass)."""

    def __init__(self, app: ASGIApp, *, csp_exempt_paths: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.csp_exempt_paths = csp_exempt_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with_csp = scope["path"] not in self.csp_exempt_paths

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = with_security_headers(
                    list(message.get("headers", ())), with_csp
                )
            await send(message)

        await self.app(scope, receive, send_with_headers)


def add_security_headers(app: FastAPI) -> None:
    """Install :class:`SecurityHeadersMiddleware` on ``app`` (once; before it starts)."""
    if getattr(app.state, "security_headers", False):
        return
    exempt = {app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url}
    app.add_middleware(
        SecurityHeadersMiddleware,
        csp_exempt_paths=frozenset(path for path in exempt if path),
    )
    app.state.security_headers = True
