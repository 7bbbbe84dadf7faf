"""Turning a list of chat messages into prompt, images and history; streaming chunks."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from rentahal.worker.engines.base import Turn
from rentahal.worker.errors import InputError


@dataclass(slots=True)
class Message:
    """One message with its text and still-encoded images, protocol-neutral."""

    role: str
    text: str
    images: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Conversation:
    """The last user message (prompt and images) and the turns before it."""

    prompt: str
    images: list[str]
    history: list[Turn]


def split_conversation(messages: Sequence[Message]) -> Conversation:
    """Split at the last user message; ``InputError`` if there is none."""
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].role == "user":
            last = messages[index]
            history = [Turn(m.role, m.text) for m in messages[:index] if m.text]
            if not last.text.strip() and not last.images:
                raise InputError("the last user message is empty")
            return Conversation(last.text, last.images, history)
    raise InputError("messages contain no user message")


def split_chunks(text: str, pieces: int = 8) -> list[str]:
    """``text`` cut at word boundaries into about ``pieces`` chunks that join back to it."""
    tokens = re.findall(r"\S+\s*|\s+", text)
    if not tokens:
        return [text]
    size = max(1, -(-len(tokens) // pieces))
    return ["".join(tokens[i : i + size]) for i in range(0, len(tokens), size)]


def count_words(text: str) -> int:
    """A rough token count for usage fields."""
    return len(text.split())
