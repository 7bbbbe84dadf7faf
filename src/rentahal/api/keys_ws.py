"""WebSocket handlers for a user's own API keys (merged into ``messages.HANDLERS``).

``create_api_key`` {name} -> ``api_key_created`` {key, prefix, name} (the only
time the key is shown); ``list_api_keys`` -> ``api_keys`` {keys}; ``revoke_api_key``
{prefix} -> ``api_key_revoked`` {prefix}. A user sees and revokes only their own keys.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from rentahal.errors import QueryRejected
from rentahal.storage.keys import MAX_NAME_CHARS, PREFIX_CHARS, KeyStore

if TYPE_CHECKING:  # messages.py imports this module to merge KEY_HANDLERS
    from rentahal.api.messages import Handler, Session


class _KeyName(BaseModel):
    name: str = Field(default="", max_length=MAX_NAME_CHARS)


class _KeyPrefix(BaseModel):
    prefix: str = Field(min_length=PREFIX_CHARS, max_length=PREFIX_CHARS)


def _keys(session: Session) -> KeyStore:
    return session.broker.api_keys


async def create_api_key(session: Session, message: dict[str, Any]) -> None:
    """Make an API key for the user; the plaintext is sent once."""
    name = _KeyName.model_validate(message).name
    limit = session.broker.settings.security.max_api_keys_per_user
    created = await _keys(session).create(session.user.guid, name, max_keys=limit)
    session.send(
        {
            "type": "api_key_created",
            "key": created.key,
            "prefix": created.info.prefix,
            "name": created.info.name,
        }
    )


async def list_api_keys(session: Session, message: dict[str, Any]) -> None:
    """The user's keys: prefix, name, creation time, revoked."""
    keys = await _keys(session).list_keys(session.user.guid)
    session.send({"type": "api_keys", "keys": [k.as_dict() for k in keys]})


async def revoke_api_key(session: Session, message: dict[str, Any]) -> None:
    """Revoke one of the user's keys by its prefix."""
    prefix = _KeyPrefix.model_validate(message).prefix
    if not await session.broker.revoke_api_key(prefix, user_guid=session.user.guid):
        raise QueryRejected(f"No live API key of yours has the prefix '{prefix}'")
    session.send({"type": "api_key_revoked", "prefix": prefix})


KEY_HANDLERS: dict[str, Handler] = {
    "create_api_key": create_api_key,
    "list_api_keys": list_api_keys,
    "revoke_api_key": revoke_api_key,
}
