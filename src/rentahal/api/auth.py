"""Who is calling the HTTP API: ``Authorization: Bearer <api key>`` -> the user.

Every call reads the key afresh, so a revoked key fails on the very next
request; the user comes from the broker's short-lived user cache, which every
ban (on any node) invalidates at once.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from rentahal.broker import Broker
from rentahal.models import User
from rentahal.storage.keys import KeyStore

BANNED_MESSAGE = "You are banned from using this service."


class AuthFailed(Exception):
    """The caller could not be identified (401) or may not use the service (403).

    ``code`` is a short machine-readable reason (``missing_api_key``,
    ``invalid_api_key``, ``user_banned``).
    """

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, else ``None``."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


async def identify(broker: Broker, authorization: str | None) -> User:
    """The user owning the bearer key in ``authorization``; ``AuthFailed`` otherwise."""
    key = bearer_token(authorization)
    if key is None:
        raise AuthFailed(
            401,
            "Missing API key: send 'Authorization: Bearer <key>' "
            "(create a key in the web GUI or with 'rentahal keys create')",
            "missing_api_key",
        )
    guid = await KeyStore(broker.storage).lookup(key)
    user = await broker.cached_user(guid) if guid is not None else None
    if user is None:
        raise AuthFailed(401, "Invalid or revoked API key", "invalid_api_key")
    if user.is_banned:
        raise AuthFailed(403, BANNED_MESSAGE, "user_banned")
    return user


def broker_of(request: Request) -> Broker:
    """The broker serving this request."""
    broker: Broker = request.app.state.broker
    return broker


async def authenticate(request: Request) -> User:
    """FastAPI dependency: the calling user (see :func:`identify`)."""
    return await identify(broker_of(request), request.headers.get("authorization"))


Caller = Annotated[User, Depends(authenticate)]
"""A route parameter of this type receives the authenticated user."""
