"""The hottest HTTP call, ``POST /v1/chat/completions``, served beside the FastAPI stack.

Through FastAPI a request passes about ten ASGI layers (error and telemetry
middlewares, our client-address, body-limit and security-header middlewares,
the exception middleware, an exit stack, the router) before its handler runs.
:class:`BrokerApp` sends this one call to :func:`serve_chat` instead, which
applies the same rules through the same functions those layers use: the client
address (:func:`~rentahal.api.client_address.scope_address`, trusted proxies
included), the body limit while the body arrives
(:func:`~rentahal.api.limits.admit_body`, 413), the security headers
(:func:`~rentahal.api.security.with_security_headers`) and the OpenAI route's
own :func:`~rentahal.api.openai.answer_chat` (key cache, error shapes).
Everything else goes to FastAPI unchanged.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.types import Receive, Scope, Send

from rentahal.api.client_address import scope_address
from rentahal.api.limits import BodyLimits, admit_body, read_body
from rentahal.api.openai import answer_chat
from rentahal.api.security import with_security_headers
from rentahal.networks import IPNetwork
from rentahal.shares import client_address

FAST_PATH = "/v1/chat/completions"


class BrokerApp(FastAPI):
    """The broker's FastAPI app, with ``POST /v1/chat/completions`` on the fast route.

    :meth:`use_fast_route` turns it on with the limits and trusted proxies the
    middlewares got. A middleware added after that turns it off (the fast route
    would bypass it), and so does a mounted ``root_path``.
    """

    _fast: tuple[BodyLimits, tuple[IPNetwork, ...], int] | None = None

    def use_fast_route(self, limits: BodyLimits, networks: tuple[IPNetwork, ...]) -> None:
        """Serve the chat call on the fast route, with these body limits and proxies."""
        self._fast = (limits, networks, len(self.user_middleware))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        fast = self._fast
        if (
            fast is not None
            and scope["type"] == "http"
            and scope["path"] == FAST_PATH
            and scope["method"] == "POST"
            and not self.root_path
            and len(self.user_middleware) == fast[2]
        ):
            scope["app"] = self
            await serve_chat(self, fast[0], fast[1], scope, receive, send)
            return
        await super().__call__(scope, receive, send)


async def serve_chat(
    app: FastAPI,
    limits: BodyLimits,
    networks: tuple[IPNetwork, ...],
    scope: Scope,
    receive: Receive,
    send: Send,
) -> None:
    """One ``POST /v1/chat/completions`` request, under the rules the middlewares apply."""
    token = client_address.set(scope_address(scope, networks))
    try:
        admitted = await admit_body(limits, scope, receive, send)
        if admitted is None:  # answered 413
            return
        receive, send = admitted
        raw = await read_body(receive)
        if raw is None:  # the client went away, or was answered 413
            return
        headers = Headers(scope=scope)
        response = await answer_chat(
            app.state, headers.get("authorization"), headers.get("content-type"), raw
        )
        response.raw_headers = with_security_headers(response.raw_headers, with_csp=True)
        await response(scope, receive, send)
    finally:
        client_address.reset(token)
