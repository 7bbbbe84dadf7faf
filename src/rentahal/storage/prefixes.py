"""GUID prefixes: the unit of placement of user data (see :mod:`rentahal.storage.directory`)."""

from __future__ import annotations

import zlib
from typing import Any

from sqlalchemy import ColumnElement, false, func, or_

HEX = "0123456789abcdef"
OTHER = "*"
MAIN = "main"
HEX_PREFIXES = tuple(a + b for a in HEX for b in HEX)
ALL_PREFIXES = (*HEX_PREFIXES, OTHER)


def prefix_of(guid: str) -> str:
    """The directory prefix of ``guid``: its first two characters lower-cased, else ``*``."""
    head = guid[:2].lower()
    return head if len(head) == 2 and head[0] in HEX and head[1] in HEX else OTHER


def prefix_clause(column: Any, prefixes: list[str] | tuple[str, ...]) -> ColumnElement[bool]:
    """SQL: ``column`` (a GUID) belongs to one of ``prefixes``."""
    head = func.lower(func.substr(column, 1, 2))
    hexes = sorted(p for p in prefixes if p != OTHER)
    clauses: list[ColumnElement[bool]] = []
    if hexes:
        clauses.append(head.in_(hexes))
    if OTHER in prefixes:
        clauses.append(or_(column.is_(None), head.not_in(HEX_PREFIXES)))
    if not clauses:
        return false()
    return or_(*clauses)


def seed_shard(prefix: str, names: list[str]) -> str:
    """The shard a new prefix goes to: hex value modulo the shard count (the seed's rule)."""
    value = int(prefix, 16) if prefix != OTHER else zlib.crc32(prefix.encode())
    return names[value % len(names)]
