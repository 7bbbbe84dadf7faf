"""The nickname rule: printable text, no control, bidi or zero-width characters, 1-50 long.

Nicknames are shown to other users (the "Connected users" text, sysop lists), so
a name must not be able to forge lines (newlines), reorder what follows it
(bidi overrides and isolates) or look like another name (zero-width joiners).
"""

from __future__ import annotations

import unicodedata

from rentahal.errors import QueryRejected

MAX_NICKNAME_CHARS = 50
#: Nicknames of other installations' accounts here (see rentahal.federation.routing).
RESERVED_PREFIX = "federation:"

#: Characters that change the display direction of the text around them.
BIDI_CONTROLS = frozenset(
    "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"
)
#: Characters that are invisible but join, split or pad words.
ZERO_WIDTH = frozenset("\u200b\u200c\u200d\u2060\ufeff")


def normalize_nickname(raw: str) -> str:
    """``raw`` in NFC without surrounding spaces; ``QueryRejected`` saying why it is not allowed.

    Allowed: printable characters (letters, marks, digits, punctuation, symbols
    and the ASCII space), 1 to :data:`MAX_NICKNAME_CHARS` of them after NFC.
    """
    nickname = unicodedata.normalize("NFC", raw).strip()
    if not 1 <= len(nickname) <= MAX_NICKNAME_CHARS:
        raise QueryRejected(f"Nickname must be 1 to {MAX_NICKNAME_CHARS} characters")
    if any(ch in BIDI_CONTROLS for ch in nickname):
        raise QueryRejected("Nickname must not contain text-direction characters")
    if any(ch in ZERO_WIDTH for ch in nickname):
        raise QueryRejected("Nickname must not contain zero-width characters")
    if nickname.casefold().startswith(RESERVED_PREFIX):
        raise QueryRejected(f"Nicknames starting with {RESERVED_PREFIX!r} are reserved")
    if not nickname.isprintable():
        # Control characters, line breaks, other invisible formatting, unassigned
        # code points and spaces other than the ASCII one.
        raise QueryRejected("Nickname must contain only printable characters and plain spaces")
    return nickname
