"""A small, short-lived cache of API key -> owner, so a call to the HTTP API needs no key read.

Only live keys are cached (an unknown or revoked key is read afresh every
time, so a new key works at once and junk keys cannot fill the cache). Entries
are held by the key's hash, never the key itself, for at most ``ttl_s``; the
cache holds at most ``max_entries`` (least recently used go first). A revoke
(:meth:`KeyCache.forget_prefix`) or a ban (:meth:`KeyCache.forget_user`), on
this node or announced by another, drops the entries at once.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple

from rentahal.storage.keys import PREFIX_CHARS, hash_key

KEY_CACHE_TTL_S = 5.0
KEY_CACHE_SIZE = 10_000


class _Entry(NamedTuple):
    expires: float
    guid: str
    prefix: str


class KeyCache:
    """Owners of recently used live API keys, bounded in size and age."""

    def __init__(self, ttl_s: float = KEY_CACHE_TTL_S, max_entries: int = KEY_CACHE_SIZE) -> None:
        self._ttl_s = ttl_s
        self._max = max_entries
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> str | None:
        """The owner's GUID of ``key`` when a fresh entry holds it, else ``None``."""
        digest = hash_key(key)
        entry = self._entries.get(digest)
        if entry is None:
            return None
        if entry.expires < time.monotonic():
            del self._entries[digest]
            return None
        self._entries.move_to_end(digest)
        return entry.guid

    def put(self, key: str, guid: str) -> None:
        """Remember that the live ``key`` belongs to ``guid``."""
        digest = hash_key(key)
        self._entries[digest] = _Entry(time.monotonic() + self._ttl_s, guid, key[:PREFIX_CHARS])
        self._entries.move_to_end(digest)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def forget_prefix(self, prefix: str) -> None:
        """Drop the keys starting with ``prefix`` (the key was revoked)."""
        self._drop(lambda entry: entry.prefix == prefix)

    def forget_user(self, guid: str) -> None:
        """Drop every key of ``guid`` (the user was banned)."""
        self._drop(lambda entry: entry.guid == guid)

    def _drop(self, matches: Callable[[_Entry], bool]) -> None:
        for digest in [d for d, entry in self._entries.items() if matches(entry)]:
            del self._entries[digest]
