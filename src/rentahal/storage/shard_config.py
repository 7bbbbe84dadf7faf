"""The ``database_sharding`` section of ``realms.yml`` (the seed's form; ours as aliases).

It lives with the storage that uses it; :mod:`rentahal.realms.config` takes it
into the whole ``realms.yml`` schema.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rentahal.errors import ConfigError

__all__ = ["ShardConfig", "ShardingConfig", "read_sharding"]


class ShardConfig(BaseModel):
    """One database shard: a name and a SQLAlchemy URL or a plain SQLite file path."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    connection_string: str = Field(min_length=1)


class ShardingConfig(BaseModel):
    """User-data sharding by GUID prefix (the seed's ``database_sharding``)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    shards: list[ShardConfig] = Field(default_factory=list)
    shard_map: dict[str, str] = Field(default_factory=dict)

    @field_validator("shards", mode="before")
    @classmethod
    def _plain_strings(cls, value: Any) -> Any:
        # Our older form: a list of connection strings, named shard_0, shard_1, ...
        if isinstance(value, list):
            return [
                {"name": f"shard_{i}", "connection_string": item} if isinstance(item, str) else item
                for i, item in enumerate(value)
            ]
        return value

    @model_validator(mode="after")
    def _known_shards(self) -> ShardingConfig:
        names = [shard.name for shard in self.shards]
        if len(set(names)) != len(names):
            raise ValueError("shard names must be unique")
        for prefix, shard in self.shard_map.items():
            if shard not in names:
                raise ValueError(f"shard_map: prefix {prefix!r} names unknown shard {shard!r}")
        if self.enabled and not self.shards:
            raise ValueError("sharding is enabled but no shards are listed")
        return self


def read_sharding(path: Path) -> ShardingConfig:
    """The ``database_sharding`` section of the realms file at ``path`` (defaults if absent).

    Only this section is read here; the whole file is checked (with line
    numbers) when the broker loads its realms.
    """
    if not path.exists():
        return ShardingConfig()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        section = data.get("database_sharding") if isinstance(data, dict) else None
        return ShardingConfig.model_validate(section or {})
    except (yaml.YAMLError, ValidationError) as exc:
        raise ConfigError(f"{path}: database_sharding: {exc}") from exc
