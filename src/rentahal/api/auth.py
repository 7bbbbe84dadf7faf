"""Who is calling the HTTP API: ``Authorization: Bearer <api key>`` -> the user.

The key's owner comes from a short-lived key cache (``api/key_cache.py``) and
the user from the broker's short-lived user cache; a revoke or a ban on any node
clears both at once, so a revoked key or banned user fails on the very next
request. The original's ``/api/*`` routes also
accept the ``user_guid`` cookie the original web client holds
(:data:`KeyOrCookieCaller`).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from rentahal.broker import Broker
from rentahal.models import User, is_valid_guid

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
    user = await broker.user_of_key(key)
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


async def identify_by_cookie(broker: Broker, guid: str, content_type: str | None) -> User:
    """The existing, non-banned user whose GUID is the ``user_guid`` cookie.

    Only JSON requests count: a cross-site page cannot send one without a CORS
    preflight (which the broker never grants), so the cookie cannot be abused
    by another site's form or ``no-cors`` fetch.
    """
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise AuthFailed(
            401,
            "Requests identified by the user_guid cookie must send "
            "'Content-Type: application/json'",
            "cookie_needs_json",
        )
    if not is_valid_guid(guid):
        raise AuthFailed(401, "The user_guid cookie is not a valid UUID", "invalid_user_guid")
    user = await broker.cached_user(guid)
    if user is None:
        raise AuthFailed(401, "The user_guid cookie names no known user", "unknown_user_guid")
    if user.is_banned:
        raise AuthFailed(403, BANNED_MESSAGE, "user_banned")
    return user


async def authenticate_key_or_cookie(request: Request) -> User:
    """FastAPI dependency: a Bearer API key if one is sent, else the ``user_guid`` cookie."""
    broker = broker_of(request)
    authorization = request.headers.get("authorization")
    guid = request.cookies.get("user_guid")
    if bearer_token(authorization) is None and guid:
        return await identify_by_cookie(broker, guid, request.headers.get("content-type"))
    return await identify(broker, authorization)


KeyOrCookieCaller = Annotated[User, Depends(authenticate_key_or_cookie)]
"""The user of a call identified by an API key or by the ``user_guid`` cookie."""
