"""Prefixes, the seed's assignment, shard URLs and the reshard plan."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from rentahal.errors import ConfigError
from rentahal.storage.directory import Directory, Move, shard_url
from rentahal.storage.moves import plan_reshard
from rentahal.storage.prefixes import ALL_PREFIXES, OTHER, prefix_of, seed_shard


def test_prefix_is_the_first_two_characters_lowercased() -> None:
    assert prefix_of("AB12cdef-0000-4000-8000-000000000000") == "ab"
    assert prefix_of("0f") == "0f"
    assert prefix_of("{ab12cdef-0000-4000-8000-000000000000}") == OTHER
    assert prefix_of("x") == OTHER
    assert len(ALL_PREFIXES) == 257


def test_new_prefixes_go_by_hex_value_modulo_the_shard_count() -> None:
    names = ["a", "b", "c"]
    assert [seed_shard(p, names) for p in ("00", "01", "02", "03", "ff")] == [
        "a",
        "b",
        "c",
        "a",
        "a",
    ]
    spread = Counter(seed_shard(p, names) for p in ALL_PREFIXES)
    assert max(spread.values()) - min(spread.values()) <= 1


def test_shard_urls_accept_the_seeds_plain_paths(tmp_path: Path) -> None:
    assert shard_url("shards/s0.db", tmp_path) == f"sqlite+aiosqlite:///{tmp_path}/shards/s0.db"
    assert shard_url("/abs/s1.db", tmp_path) == "sqlite+aiosqlite:////abs/s1.db"
    assert shard_url("sqlite:///s2.db", tmp_path) == f"sqlite+aiosqlite:///{tmp_path}/s2.db"
    assert shard_url("postgresql://u@h/db", tmp_path) == "postgresql+asyncpg://u@h/db"
    with pytest.raises(ConfigError):
        shard_url("mysql://u@h/db", tmp_path)


def _directory(names: list[str]) -> Directory:
    return Directory(1, {p: seed_shard(p, names) for p in ALL_PREFIXES})


def test_reshard_takes_a_fair_share_from_the_fullest_shards() -> None:
    directory = _directory(["a", "b"])
    plan = plan_reshard(directory, "c")
    assert len(plan) == 257 // 3
    after = Counter({**directory.owners, **dict.fromkeys(plan, "c")}.values())
    assert max(after.values()) - min(after.values()) <= 1
    assert plan_reshard(Directory(2, {**directory.owners, **dict.fromkeys(plan, "c")}), "c") == []


def test_reshard_resumes_the_moves_under_way() -> None:
    directory = _directory(["a", "b"])
    first = plan_reshard(directory, "c")
    directory.moves = {p: Move(p, directory.owners[p], "c", "copying") for p in first}
    assert plan_reshard(directory, "c") == first
