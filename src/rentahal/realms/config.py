"""``realms.yml``: realms, pools, discovery and sharding settings.

Absent file: the design's defaults (``$CHAT``, ``$VISION``, ``$IMAGINE`` plus
``$SPEECH``). Validation errors name the file line of the offending key. The
admin API saves changes atomically (write a temporary file, then rename).
"""

from __future__ import annotations

import logging
import os
import secrets
import tempfile
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from rentahal.errors import ConfigError
from rentahal.models import QUERY_TYPES
from rentahal.realms.strategies import STRATEGY_NAMES
from rentahal.storage.shard_config import ShardingConfig

logger = logging.getLogger(__name__)

# The seed's default file names every installation ``rentahal-main``: treated as unset.
PLACEHOLDER_FEDERATION_ID = "rentahal-main"


class ProvisionerConfig(BaseModel):
    """How the scaler gets workers for a realm (``provisioner:`` of a realm).

    ``command``: a template run on this machine with ``{port}``, ``{name}``,
    ``{realm}`` and ``{query_type}``; what it starts is the worker at
    127.0.0.1:{port}. ``start``/``stop``: commands for other machines; ``start``
    prints the address (``host:port``) of what it started, ``stop`` gets
    ``{name}`` and ``{address}``. ``static``: standby worker addresses taken in
    and out. ``python``: ``module:factory`` returning a :class:`Provisioner`.
    """

    model_config = ConfigDict(extra="forbid")

    command: str | None = None
    start: str | None = None
    stop: str | None = None
    static: list[str] = Field(default_factory=list)
    python: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    protocol: str = ""
    max_concurrency: int = Field(default=1, ge=1, le=1024)
    start_timeout_s: float = Field(default=60.0, gt=0, le=3600)
    drain_timeout_s: float = Field(default=30.0, ge=0, le=3600)
    # May the scaler stop workers it did not start (down to min_workers)?
    manage_existing: bool = False

    @model_validator(mode="after")
    def _one_kind(self) -> ProvisionerConfig:
        kinds = [
            bool(self.command),
            bool(self.start or self.stop),
            bool(self.static),
            bool(self.python),
        ]
        if sum(kinds) != 1:
            raise ValueError("give exactly one of command, start/stop, static or python")
        if (self.start is None) != (self.stop is None):
            raise ValueError("start and stop go together")
        return self


class ScalingConfig(BaseModel):
    """The RealmScaler's thresholds (the seed's names) and timing."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    interval_s: float = Field(default=10.0, gt=0, le=3600)
    window_s: float = Field(default=60.0, gt=0, le=86_400)
    cooldown_s: float = Field(default=60.0, ge=0, le=86_400)
    high_load: float = Field(default=0.8, gt=0, le=1)
    low_load: float = Field(default=0.2, ge=0, lt=1)
    error_rate: float = Field(default=0.05, ge=0, le=1)
    queue_wait_s: float = Field(default=10.0, gt=0)
    max_backup_realms: int = Field(default=2, ge=0, le=16)
    # Self-registered workers: heartbeat every heartbeat_s, removed after lease_s without one.
    heartbeat_s: float = Field(default=5.0, gt=0, le=600)
    lease_s: float = Field(default=20.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _hysteresis(self) -> ScalingConfig:
        if self.low_load >= self.high_load:
            raise ValueError("low_load must be below high_load")
        if self.lease_s <= self.heartbeat_s:
            raise ValueError("lease_s must be longer than heartbeat_s")
        return self


class RealmConfig(BaseModel):
    """One realm: the query type it owns, its worker bounds and backups."""

    model_config = ConfigDict(extra="forbid")

    primary_query_type: str
    min_workers: int = Field(default=1, ge=0)
    max_workers: int = Field(default=10, ge=1)
    backup_realms: list[str] = Field(default_factory=list)
    strategy: str = "health"
    queue_threshold: int = Field(default=50, ge=1)
    description: str = ""
    provisioner: ProvisionerConfig | None = None

    @field_validator("primary_query_type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        if value not in QUERY_TYPES:
            raise ValueError(f"must be one of {', '.join(QUERY_TYPES)}")
        return value

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        if value not in STRATEGY_NAMES:
            raise ValueError(f"must be one of {', '.join(STRATEGY_NAMES)}")
        return value

    @model_validator(mode="after")
    def _bounds(self) -> RealmConfig:
        if self.min_workers > self.max_workers:
            raise ValueError("min_workers must not exceed max_workers")
        return self


class PoolConfig(BaseModel):
    """A worker pool alias: queries whose ``model_name`` names the pool use its members."""

    model_config = ConfigDict(extra="forbid")

    query_type: str
    realm: str | None = None
    members: list[str] = Field(default_factory=list)
    strategy: str = "health"
    blacklisted: bool = False

    _known_type = field_validator("query_type")(RealmConfig._known_type.__func__)  # type: ignore[attr-defined]
    _known_strategy = field_validator("strategy")(RealmConfig._known_strategy.__func__)  # type: ignore[attr-defined]


class DiscoveryConfig(BaseModel):
    """Federation discovery of other broker installations (the seed's keys).

    ``peers`` and ``interval_s`` are accepted as our older names for
    ``bootstrap_nodes`` and ``advertise_interval``.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    enabled: bool = True
    bootstrap_nodes: list[str] = Field(
        default_factory=list, validation_alias=AliasChoices("bootstrap_nodes", "peers")
    )
    advertise_interval: float = Field(
        default=300.0, gt=0, validation_alias=AliasChoices("advertise_interval", "interval_s")
    )


class FederationConfig(BaseModel):
    """How this installation admits and uses other installations (``federation:``)."""

    model_config = ConfigDict(extra="forbid")

    # token: a join needs proof of ``join_token``; approval: a sysop approves each
    # join in the console; open: anyone who holds their key may join.
    trust: Literal["token", "approval", "open"] = "token"
    join_token: str | None = Field(default=None, min_length=8)
    route_when_wait_s: float = Field(default=30.0, ge=0)
    max_hops: int = Field(default=2, ge=1, le=8)
    # query type -> federation id: always send that type to that peer.
    pins: dict[str, str] = Field(default_factory=dict)
    request_timeout_s: float = Field(default=10.0, gt=0, le=120)

    @field_validator("pins")
    @classmethod
    def _pinned_types(cls, value: dict[str, str]) -> dict[str, str]:
        for query_type in value:
            if query_type not in QUERY_TYPES:
                raise ValueError(f"pins: {query_type!r} is not one of {', '.join(QUERY_TYPES)}")
        return value


def _default_realms() -> dict[str, RealmConfig]:
    return {
        "$CHAT": RealmConfig(primary_query_type="chat", description="Chat LLMs"),
        "$VISION": RealmConfig(
            primary_query_type="vision", max_workers=5, description="Vision models"
        ),
        "$IMAGINE": RealmConfig(
            primary_query_type="imagine", max_workers=5, description="Image generation"
        ),
        "$SPEECH": RealmConfig(primary_query_type="speech", max_workers=5, description="Speech"),
    }


class RealmsFile(BaseModel):
    """The whole ``realms.yml``."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    # None: a random id is made on first start and kept (see ``with_identity``).
    federation_id: str | None = Field(default=None, min_length=1, max_length=128)
    # None: the broker's own base URL (``Settings.base_url``).
    federation_callback_url: str | None = None
    realms: dict[str, RealmConfig] = Field(default_factory=_default_realms)
    pools: dict[str, PoolConfig] = Field(default_factory=dict)
    discovery: DiscoveryConfig = Field(default_factory=DiscoveryConfig)
    database_sharding: ShardingConfig = Field(default_factory=ShardingConfig)
    federation: FederationConfig = Field(default_factory=FederationConfig)
    scaling: ScalingConfig = Field(default_factory=ScalingConfig)

    @field_validator("realms")
    @classmethod
    def _realm_names(cls, value: dict[str, RealmConfig]) -> dict[str, RealmConfig]:
        for name, realm in value.items():
            if not name.startswith("$") or len(name) < 2:
                raise ValueError(f"realm name {name!r} must start with '$'")
            for backup in realm.backup_realms:
                if backup not in value:
                    raise ValueError(f"realm {name} names unknown backup realm {backup}")
        return value


def _line_of(text: str, loc: tuple[Any, ...]) -> int | None:
    """The 1-based line of the YAML node at ``loc`` (or of its nearest parent)."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None
    line = None
    for key in loc:
        if isinstance(node, yaml.SequenceNode) and isinstance(key, int):
            if not 0 <= key < len(node.value):
                break
            node = node.value[key]
            line = node.start_mark.line + 1
            continue
        if not isinstance(node, yaml.MappingNode):
            break
        for key_node, value_node in node.value:
            if key_node.value == str(key):
                line = key_node.start_mark.line + 1
                node = value_node
                break
        else:
            break
    return line


def parse_realms(text: str, source: str = "realms.yml") -> RealmsFile:
    """Validate YAML text; ``ConfigError`` names the line and key of each problem."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping")
    try:
        return RealmsFile.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(p for p in err["loc"])
            line = _line_of(text, loc)
            where = f"line {line}: " if line else ""
            problems.append(f"{source}: {where}{'.'.join(str(p) for p in loc)}: {err['msg']}")
        raise ConfigError("; ".join(problems)) from exc


def load_realms(path: str | Path) -> RealmsFile:
    """The realms file at ``path``, or the defaults when it does not exist."""
    path = Path(path)
    if not path.exists():
        return RealmsFile()
    return parse_realms(path.read_text(encoding="utf-8"), str(path))


def save_realms(path: str | Path, realms: RealmsFile) -> None:
    """Write ``realms`` to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(realms.model_dump(mode="json"), sort_keys=False)
    fd, tmp = tempfile.mkstemp(prefix=".realms-", suffix=".yml", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def new_federation_id() -> str:
    """A fresh, random installation id (``rentahal-`` and 16 hex digits)."""
    return f"rentahal-{secrets.token_hex(8)}"


def with_identity(path: str | Path, realms: RealmsFile) -> RealmsFile:
    """``realms`` with a federation id of its own, made and kept on first start.

    An absent id, or the seed's shared placeholder, is replaced by a random one
    that is written back to ``path`` (atomically) so the next start keeps it.
    """
    if realms.federation_id and realms.federation_id != PLACEHOLDER_FEDERATION_ID:
        return realms
    if realms.federation_id == PLACEHOLDER_FEDERATION_ID:
        logger.warning(
            "%s: federation_id %r is the seed's shared placeholder; using a random id",
            path,
            PLACEHOLDER_FEDERATION_ID,
        )
    realms = realms.model_copy(update={"federation_id": new_federation_id()})
    try:
        save_realms(path, realms)
    except OSError as exc:
        logger.error("could not keep the federation id in %s: %s", path, exc)
    return realms


def callback_url(realms: RealmsFile, host: str, port: int) -> str:
    """The configured federation callback URL, else the broker's own base URL."""
    if realms.federation_callback_url:
        return realms.federation_callback_url
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"
