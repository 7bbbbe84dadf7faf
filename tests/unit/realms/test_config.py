"""realms.yml: the seed's own file is accepted; real mistakes name their line."""

from __future__ import annotations

from pathlib import Path

import pytest

from rentahal.errors import ConfigError
from rentahal.realms.config import (
    PLACEHOLDER_FEDERATION_ID,
    callback_url,
    load_realms,
    parse_realms,
    with_identity,
)

# The seed's default realms.yml, key for key.
SEED_FILE = """\
federation_id: rentahal-main
federation_callback_url: http://localhost:5000/api/federation/callback
realms:
  $CHAT:
    primary_query_type: chat
    min_workers: 1
    max_workers: 10
  $VISION:
    primary_query_type: vision
    min_workers: 1
    max_workers: 5
  $IMAGINE:
    primary_query_type: imagine
    min_workers: 1
    max_workers: 5
discovery:
  bootstrap_nodes: []
  advertise_interval: 300
database_sharding:
  enabled: false
  shards:
    - name: shard_0
      connection_string: shards/shard_0.db
    - name: shard_1
      connection_string: postgresql://rentahal@127.0.0.1/shard1
  shard_map:
    "00": shard_0
    "01": shard_1
"""


def test_the_seeds_default_file_is_accepted() -> None:
    realms = parse_realms(SEED_FILE)
    assert set(realms.realms) == {"$CHAT", "$VISION", "$IMAGINE"}
    assert realms.realms["$VISION"].max_workers == 5
    assert realms.discovery.bootstrap_nodes == []
    assert realms.discovery.advertise_interval == 300
    shards = realms.database_sharding.shards
    assert [s.name for s in shards] == ["shard_0", "shard_1"]
    assert shards[1].connection_string.startswith("postgresql://")
    assert realms.database_sharding.shard_map == {"00": "shard_0", "01": "shard_1"}


def test_our_older_names_stay_aliases() -> None:
    realms = parse_realms(
        "discovery: {peers: ['http://10.0.0.1:5000'], interval_s: 30}\n"
        "database_sharding: {shards: ['a.db', 'b.db']}\n"
    )
    assert realms.discovery.bootstrap_nodes == ["http://10.0.0.1:5000"]
    assert realms.discovery.advertise_interval == 30
    assert [(s.name, s.connection_string) for s in realms.database_sharding.shards] == [
        ("shard_0", "a.db"),
        ("shard_1", "b.db"),
    ]


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("realms:\n  $CHAT:\n    primary_query_type: chat\n    max_wrokers: 3\n", 4, "max_wrokers"),
        (
            "realms:\n  $CHAT:\n    primary_query_type: chat\n    min_workers: 5\n"
            "    max_workers: 2\n",
            2,
            "min_workers must not exceed max_workers",
        ),
        ("discovery:\n  advertise_interval: -1\n", 2, "advertise_interval"),
        (
            "database_sharding:\n  shards:\n    - {name: a, connection_string: a.db}\n"
            "  shard_map: {'0a': b}\n",
            1,
            "unknown shard 'b'",
        ),
        ("database_sharding:\n  shards:\n    - {name: a}\n", 3, "connection_string"),
    ],
)
def test_real_mistakes_name_the_line(text: str, line: int, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_realms(text)
    assert f"line {line}:" in str(err.value)
    assert words in str(err.value)


def test_a_random_federation_id_is_made_once_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "realms.yml"
    first = with_identity(path, load_realms(path))
    assert first.federation_id and first.federation_id.startswith("rentahal-")
    assert first.federation_id != PLACEHOLDER_FEDERATION_ID
    again = with_identity(path, load_realms(path))
    assert again.federation_id == first.federation_id
    other = with_identity(tmp_path / "other.yml", load_realms(tmp_path / "other.yml"))
    assert other.federation_id != first.federation_id


def test_the_seeds_placeholder_id_is_replaced_and_the_rest_kept(tmp_path: Path) -> None:
    path = tmp_path / "realms.yml"
    path.write_text(SEED_FILE)
    realms = with_identity(path, load_realms(path))
    assert realms.federation_id != PLACEHOLDER_FEDERATION_ID
    reloaded = load_realms(path)
    assert reloaded.federation_id == realms.federation_id
    assert reloaded.database_sharding.shard_map == {"00": "shard_0", "01": "shard_1"}
    assert set(reloaded.realms) == {"$CHAT", "$VISION", "$IMAGINE"}


def test_an_explicit_id_is_never_replaced(tmp_path: Path) -> None:
    path = tmp_path / "realms.yml"
    path.write_text("federation_id: lighthouse-eu\n")
    assert with_identity(path, load_realms(path)).federation_id == "lighthouse-eu"
    assert path.read_text() == "federation_id: lighthouse-eu\n"


def test_callback_url_defaults_to_the_brokers_own_base_url() -> None:
    realms = parse_realms("{}")
    assert callback_url(realms, "0.0.0.0", 5000) == "http://127.0.0.1:5000"
    assert callback_url(realms, "broker.example", 8080) == "http://broker.example:8080"
    assert callback_url(realms, "::1", 5000) == "http://[::1]:5000"
    custom = parse_realms("federation_callback_url: https://hal.example/api/federation\n")
    assert callback_url(custom, "0.0.0.0", 5000) == "https://hal.example/api/federation"
