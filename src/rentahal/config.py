"""Settings: the original ``config.ini`` sections and keys, plus ours, with env overrides.

The file is read, never written. Every key has the original's default, so a
missing file or section is fine. ``RENTAHAL_<SECTION>__<KEY>`` environment
variables override the file (``RENTAHAL_SERVER__PORT=8080``). Errors raise
:class:`~rentahal.errors.ConfigError` naming ``[Section] key``.
"""

from __future__ import annotations

import configparser
import logging
import os
import uuid
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from rentahal.errors import ConfigError
from rentahal.networks import IPNetwork, parse_networks
from rentahal.origins import normalize_origin

logger = logging.getLogger(__name__)

ENV_PREFIX = "RENTAHAL_"


class _Section(BaseModel):
    model_config = ConfigDict(extra="ignore", validate_assignment=True)


class GeneralSettings(_Section):
    """``[Settings]``: power figures the original used for cost estimates."""

    debug: bool = False
    idle_watt_rate: float = 500.0
    premium_watt_rate: float = 1000.0
    electricity_cost_per_kwh: float = 0.25


class DatabaseSettings(_Section):
    """``[Database]``: the SQLite file name, or a full SQLAlchemy URL."""

    database_name: str = "llm_broker.db"
    database_url: str = ""
    # Where ledger rows wait while the database refuses writes ("" = beside the
    # SQLite file, or the working directory for a server database).
    spool_dir: str = ""
    spool_replay_s: float = Field(default=5.0, gt=0)

    @property
    def url(self) -> str:
        """The async SQLAlchemy URL to connect to."""
        if self.database_url:
            url = self.database_url
            if url.startswith("postgresql://") or url.startswith("postgres://"):
                url = "postgresql+asyncpg://" + url.split("://", 1)[1]
            if url.startswith("sqlite:///"):
                url = "sqlite+aiosqlite:///" + url[len("sqlite:///") :]
            return url
        return f"sqlite+aiosqlite:///{self.database_name}"


class ServerSettings(_Section):
    """``[Server]``: where the broker listens."""

    host: str = "0.0.0.0"
    port: int = Field(default=5000, ge=0, le=65535)
    # One log line per HTTP request costs ~3% of a /v1 call; nginx in front logs them anyway.
    access_log: bool = False


class WebsocketSettings(_Section):
    """``[Websocket]``: frame size limit (a chunk envelope allowance is added)."""

    max_message_size: int = Field(default=1048576, ge=1024)
    # Compression costs ~50 KiB and CPU per socket; base64 images barely shrink.
    per_message_deflate: bool = False


class WorkerSettingsSection(_Section):
    """``[Workers]``: health probing and failure handling."""

    default_worker_address: str = "localhost:8000"
    health_check_interval: float = Field(default=60.0, gt=0)
    no_blacklist_imagine: bool = True
    health_timeout_s: float = Field(default=5.0, gt=0)
    imagine_health_timeout_s: float = Field(default=10.0, gt=0)
    health_success_delta: float = 10.0
    health_failure_delta: float = 10.0
    health_error_delta: float = 5.0
    readmit_health: float = 50.0
    max_attempts: int = Field(default=3, ge=1, le=10)
    retry_backoff_s: float = Field(default=0.25, ge=0)
    circuit_failures: int = Field(default=3, ge=1)
    circuit_open_s: float = Field(default=30.0, ge=0)
    # Workers with an open circuit are probed this often; a 200 closes the circuit.
    circuit_probe_interval_s: float = Field(default=2.0, gt=0)
    rate_limit_cooldown_s: float = Field(default=10.0, ge=0)
    retry_image_on_timeout: bool = False
    # The largest image answer (max_image_bytes, 32 MiB) as base64 in JSON is ~43 MiB.
    max_answer_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)


class HuggingFaceSettings(_Section):
    """``[HuggingFace]``."""

    default_models: str = ""
    api_key: str = ""


class ClaudeSettings(_Section):
    """``[Claude]``."""

    api_key: str = ""
    endpoint: str = "https://api.anthropic.com/v1/messages"
    model_name: str = "claude-3-haiku-20240307"


#: Link-local (where clouds answer metadata requests) and known metadata addresses.
DENIED_WORKER_NETWORKS = (
    "169.254.0.0/16, fe80::/10, 100.100.100.200/32, fd00:ec2::254/128, 192.0.0.192/32"
)


class SecuritySettings(_Section):
    """``[Security]``: admin token, accepted page origins, proxies, worker networks, key caps.

    ``admin_token`` authenticates the admin API without a sysop cookie.
    ``allowed_origins`` are page origins (``https://app.example.com``) whose
    pages may open ``/ws`` besides the broker's own origin. ``trusted_proxies``
    are the reverse proxies whose ``X-Forwarded-*`` headers (the client's
    address, scheme and host) are believed. A worker address must lie in
    ``worker_networks`` and outside ``denied_worker_networks``.
    ``max_api_keys_per_user`` bounds the live API keys of one user. All lists
    are comma-separated; see docs/deployment.md, "Security".
    """

    secret_key: str = ""
    token_expiration: int = 3600
    admin_token: str = ""
    allowed_origins: str = ""
    trusted_proxies: str = ""
    max_api_keys_per_user: int = Field(default=20, ge=1)
    worker_networks: str = "0.0.0.0/0, ::/0"
    denied_worker_networks: str = DENIED_WORKER_NETWORKS

    @field_validator("trusted_proxies", "worker_networks", "denied_worker_networks")
    @classmethod
    def _networks(cls, value: str) -> str:
        parse_networks(value)
        return value

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, value: str) -> str:
        for entry in value.split(","):
            if entry.strip() and normalize_origin(entry) is None:
                raise ValueError(f"{entry.strip()!r} is not an origin like https://host:port")
        return value

    @property
    def origins(self) -> frozenset[str]:
        """The normalized ``allowed_origins``."""
        found = (normalize_origin(e) for e in self.allowed_origins.split(",") if e.strip())
        return frozenset(o for o in found if o)

    @property
    def proxy_networks(self) -> list[IPNetwork]:
        """``trusted_proxies`` as networks."""
        return parse_networks(self.trusted_proxies)

    @property
    def trusted_networks(self) -> tuple[IPNetwork, ...]:
        """``trusted_proxies`` parsed (as a tuple)."""
        return tuple(parse_networks(self.trusted_proxies))


class PerformanceSettings(_Section):
    """``[Performance]``: limits on connections and worker calls."""

    max_connections: int = Field(default=100, ge=1)
    max_connections_per_address: int = Field(default=20, ge=1)
    query_timeout: float = Field(default=30.0, gt=0)
    imagine_timeout: float = Field(default=120.0, gt=0)
    connect_timeout: float = Field(default=5.0, gt=0)
    # Young-generation threshold of the garbage collector while serving (see heap.py);
    # 0 keeps Python's default (700) and freezes nothing.
    gc_young_threshold: int = Field(default=7000, ge=0)


class CostSettings(_Section):
    """``[Costs]``: ``base_cost_per_query + processing_time * cost_per_second``."""

    base_cost_per_query: float = Field(default=0.01, ge=0)
    cost_per_second: float = Field(default=0.001, ge=0)


class QueueSettings(_Section):
    """``[Queue]``: global and per-user queue limits."""

    max_queue_size: int = Field(default=100, ge=1)
    queue_timeout: float = Field(default=300.0, gt=0)
    max_queued_per_user: int = Field(default=10, ge=1)
    # 0: three users' worth, but at most half of max_queue_size (see shares.address_cap).
    max_queued_per_address: int = Field(default=0, ge=0)
    # HTTP requests beyond a user's share wait for it (FIFO) instead of a refusal.
    max_waiting_requests_per_user: int = Field(default=64, ge=0)
    max_prompt_chars: int = Field(default=20000, ge=1)


class ChunkingSettings(_Section):
    """``[Chunking]``: chunked vision uploads."""

    chunk_size: int = Field(default=1048576, ge=1024)
    max_chunks: int = Field(default=64, ge=1)
    max_uploads_per_user: int = Field(default=4, ge=1)
    max_image_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    max_uploads_per_address: int = Field(default=8, ge=1)
    max_upload_bytes_total: int = Field(default=256 * 1024 * 1024, ge=1024)
    upload_idle_timeout_s: float = Field(default=60.0, gt=0)


class BrokerSettings(_Section):
    """``[Broker]`` (ours): node identity, scale-out and realms."""

    node_id: str = ""
    redis_url: str = ""
    realms_enabled: bool = True
    realms_file: str = "realms.yml"
    claim_idle_s: float = Field(default=30.0, gt=0)
    # How often a node checks that the jobs it queued still exist in Redis.
    lost_job_check_s: float = Field(default=5.0, gt=0)

    def resolved_node_id(self) -> str:
        """This process's node id (generated when not configured)."""
        if not self.node_id:
            self.node_id = f"node-{uuid.uuid4().hex[:8]}"
        return self.node_id


_SECTIONS: dict[str, str] = {
    "Settings": "general",
    "Database": "database",
    "Server": "server",
    "Websocket": "websocket",
    "Workers": "workers",
    "HuggingFace": "huggingface",
    "Claude": "claude",
    "Security": "security",
    "Performance": "performance",
    "Costs": "costs",
    "Queue": "queue",
    "Chunking": "chunking",
    "Broker": "broker",
}


class Settings(BaseModel):
    """All settings of one broker process."""

    model_config = ConfigDict(extra="forbid")

    general: GeneralSettings = Field(default_factory=GeneralSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    websocket: WebsocketSettings = Field(default_factory=WebsocketSettings)
    workers: WorkerSettingsSection = Field(default_factory=WorkerSettingsSection)
    huggingface: HuggingFaceSettings = Field(default_factory=HuggingFaceSettings)
    claude: ClaudeSettings = Field(default_factory=ClaudeSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    performance: PerformanceSettings = Field(default_factory=PerformanceSettings)
    costs: CostSettings = Field(default_factory=CostSettings)
    queue: QueueSettings = Field(default_factory=QueueSettings)
    chunking: ChunkingSettings = Field(default_factory=ChunkingSettings)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)


def _section_models() -> dict[str, type[_Section]]:
    return {
        attr: Settings.model_fields[attr].annotation  # type: ignore[misc]
        for attr in _SECTIONS.values()
    }


def _raw_from_ini(path: Path) -> dict[str, dict[str, str]]:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with path.open(encoding="utf-8") as fh:
            parser.read_file(fh)
    except configparser.Error as exc:
        raise ConfigError(f"{path}: cannot parse: {exc}") from exc
    raw: dict[str, dict[str, str]] = {}
    lower_sections = {name.lower(): attr for name, attr in _SECTIONS.items()}
    models = _section_models()
    for section in parser.sections():
        attr = lower_sections.get(section.lower())
        if attr is None:
            logger.warning("%s: unknown section [%s] ignored", path, section)
            continue
        known = set(models[attr].model_fields)
        for key, value in parser.items(section):
            key = key.lower()
            if key not in known:
                logger.warning("%s: unknown key [%s] %s ignored", path, section, key)
                continue
            raw.setdefault(attr, {})[key] = value
    return raw


def _raw_from_env(environ: dict[str, str]) -> dict[str, dict[str, str]]:
    raw: dict[str, dict[str, str]] = {}
    by_upper = {name.upper(): attr for name, attr in _SECTIONS.items()}
    models = _section_models()
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX) :].partition("__")
        attr = by_upper.get(section.upper())
        if attr is None or key.lower() not in models[attr].model_fields:
            raise ConfigError(f"{name}: no such setting (expected RENTAHAL_<SECTION>__<KEY>)")
        raw.setdefault(attr, {})[key.lower()] = value
    return raw


def load_settings(
    path: str | Path | None = "config.ini",
    environ: dict[str, str] | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> Settings:
    """Read ``config.ini`` (if present), then environment overrides, then ``overrides``.

    ``overrides`` maps section attribute names (``"server"``) to key/values, as
    the CLI passes its options.
    """
    merged: dict[str, dict[str, Any]] = {}
    if path is not None and Path(path).exists():
        merged = _raw_from_ini(Path(path))
    for attr, values in _raw_from_env(dict(os.environ if environ is None else environ)).items():
        merged.setdefault(attr, {}).update(values)
    for attr, values in (overrides or {}).items():
        merged.setdefault(attr, {}).update({k: v for k, v in values.items() if v is not None})
    try:
        return Settings.model_validate(merged)
    except ValidationError as exc:
        section_names = {attr: name for name, attr in _SECTIONS.items()}
        problems = []
        for err in exc.errors():
            loc = [str(p) for p in err["loc"]]
            where = f"[{section_names.get(loc[0], loc[0])}] {'.'.join(loc[1:])}".strip()
            problems.append(f"{where}: {err['msg']} (got {err.get('input')!r})")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from exc
