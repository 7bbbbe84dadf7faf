"""Pydantic models of the wire protocol and of the broker's own records."""

from __future__ import annotations

import enum
import time
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

QUERY_TYPES = ("chat", "vision", "imagine", "speech")
WORKER_TYPES = ("chat", "vision", "imagine", "speech")
MODEL_TYPES = ("worker_node", "huggingface", "claude", "speech")
PROTOCOLS = ("predict", "a1111", "ollama", "openai", "claude", "huggingface")
# Another installation standing in as a worker (see rentahal.federation); not a worker node.
FEDERATION_PROTOCOL = "federation"

QueryType = Literal["chat", "vision", "imagine", "speech"]
WorkerType = Literal["chat", "vision", "imagine", "speech"]
ResultType = Literal["text", "image", "audio"]


def worker_family(model_type: str) -> str:
    """Which kind of worker a query's ``model_type`` asks for."""
    return model_type if model_type in ("claude", "huggingface") else "worker_node"


def dispatch_type(query: Query) -> str:
    """The worker type a query runs on (speech queries are chat after transcription)."""
    return "chat" if query.query_type == "speech" else query.query_type


def utcnow_iso() -> str:
    """The current UTC time in ISO 8601, as the original stored ``last_active``."""
    return datetime.now(UTC).isoformat()


def is_valid_guid(value: object) -> bool:
    """True when ``value`` is a well-formed UUID string."""
    if not isinstance(value, str) or len(value) > 64:
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


class User(BaseModel):
    """A person using the broker, identified by the ``user_guid`` cookie."""

    guid: str
    nickname: str
    is_sysop: bool = False
    total_query_time: float = 0.0
    total_cost: float = 0.0
    is_banned: bool = False
    query_count: int = 0


class Query(BaseModel):
    """A query as the client submits it."""

    model_config = ConfigDict(extra="ignore")

    prompt: str = ""
    query_type: QueryType
    model_type: str = "worker_node"
    model_name: str = ""
    image: str | None = None
    audio: str | None = None
    # The route of a query that came from another installation: how many
    # installations it passed and which (loops are refused by both).
    federation_hops: int = Field(default=0, ge=0, le=16)
    federation_visited: list[str] = Field(default_factory=list, max_length=16)

    @field_validator("model_type", mode="before")
    @classmethod
    def _unknown_model_type_is_worker_node(cls, value: object) -> str:
        return value if value in MODEL_TYPES else "worker_node"

    @field_validator("model_name", mode="before")
    @classmethod
    def _none_model_name(cls, value: object) -> object:
        return "" if value is None else value

    @field_validator("prompt", "model_name")
    @classmethod
    def _storable_text(cls, value: str) -> str:
        # Python's JSON parser (the HTTP routes) lets both through; databases and
        # workers cannot store or encode them.
        if "\x00" in value:
            raise ValueError("must not contain NUL characters")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("must be valid Unicode text (no lone surrogates)") from None
        return value


class HuggingFaceModel(BaseModel):
    """A Hugging Face model the sysop made available."""

    name: str = Field(min_length=1, max_length=200)
    type: str = Field(default="chat", max_length=32)


def infer_protocol(worker_type: str) -> str:
    """Protocol of a worker record that predates the ``protocol`` field."""
    return "a1111" if worker_type == "imagine" else "predict"


class AIWorker(BaseModel):
    """An AI worker node the broker forwards queries to."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field(min_length=1, max_length=100)
    address: str = Field(min_length=1, max_length=300)
    type: WorkerType = "chat"
    health_score: float = 100.0
    is_blacklisted: bool = False
    last_active: str = Field(default_factory=utcnow_iso)
    protocol: str = ""
    max_concurrency: int = Field(default=1, ge=1, le=1024)
    api_key: str | None = None
    models: list[str] = Field(default_factory=list)
    realm: str | None = None

    @field_validator("address")
    @classmethod
    def _address_without_scheme(cls, value: str) -> str:
        value = value.strip()
        if "://" in value:
            value = value.split("://", 1)[1]
        return value.rstrip("/")

    @field_validator("protocol")
    @classmethod
    def _known_protocol(cls, value: str) -> str:
        if value and value not in PROTOCOLS and value != FEDERATION_PROTOCOL:
            raise ValueError(f"unknown protocol {value!r}; known: {', '.join(PROTOCOLS)}")
        return value

    def model_post_init(self, __context: Any) -> None:
        if not self.protocol:
            self.protocol = infer_protocol(self.type)

    @property
    def base_url(self) -> str:
        """``http://host:port`` of the worker (``https`` when the address says so)."""
        if self.address.startswith(("http:", "https:")):
            return self.address
        return f"http://{self.address}"

    def public(self) -> dict[str, Any]:
        """The record as clients may see it: the API key is masked."""
        data = self.model_dump()
        data["api_key"] = "***" if self.api_key else None
        return data

    def serves(self, model_name: str) -> bool:
        """True when the worker lists ``model_name`` (or lists no models at all)."""
        return not model_name or not self.models or model_name in self.models


class QueryState(enum.StrEnum):
    """Lifecycle of a job; changed only through :meth:`Job.move_to`."""

    QUEUED = "queued"
    DISPATCHED = "dispatched"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


_TRANSITIONS: dict[QueryState, set[QueryState]] = {
    QueryState.QUEUED: {QueryState.DISPATCHED, QueryState.CANCELLED, QueryState.FAILED},
    QueryState.DISPATCHED: {
        QueryState.RUNNING,
        QueryState.QUEUED,
        QueryState.CANCELLED,
        QueryState.FAILED,
    },
    QueryState.RUNNING: {
        QueryState.DONE,
        QueryState.FAILED,
        QueryState.CANCELLED,
        QueryState.QUEUED,
    },
    QueryState.DONE: set(),
    QueryState.FAILED: set(),
    QueryState.CANCELLED: set(),
}


class InvalidTransition(RuntimeError):
    """A job was moved to a state its current state cannot reach."""


class Job(BaseModel):
    """A queued query with everything a processor on any node needs to run it."""

    job_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    user_guid: str
    query: Query
    realm: str = "$LEGACY"
    origin_node: str = ""
    submitted_at: float = Field(default_factory=time.time)
    state: QueryState = QueryState.QUEUED
    attempts: int = 0
    speak_result: bool = False

    def move_to(self, new: QueryState) -> None:
        """Change state, refusing transitions the lifecycle does not allow."""
        if new not in _TRANSITIONS[self.state]:
            raise InvalidTransition(
                f"job {self.job_id} cannot go from {self.state.value} to {new.value}"
            )
        self.state = new


class Result(BaseModel):
    """The outcome of a job, delivered to the user's sockets and written to the ledger."""

    job_id: str
    user_guid: str
    status: Literal["done", "failed", "cancelled"]
    result: str = ""
    result_type: ResultType = "text"
    processing_time: float = 0.0
    queue_wait: float = 0.0
    cost: float = 0.0
    worker: str | None = None
    attempts: int = 0
    error: str | None = None
    realm: str = "$LEGACY"
    query_type: str = "chat"
    recorded: bool = True
    recorded_later: bool = False  # not recorded yet: the row waits in the ledger spool
    user: User | None = None  # the user's totals after this query was charged

    @classmethod
    def of(cls, job: Job, status: Literal["done", "failed", "cancelled"], **fields: Any) -> Result:
        """A result for ``job``, its identity fields filled in from the job."""
        return cls(
            job_id=job.job_id,
            user_guid=job.user_guid,
            status=status,
            realm=job.realm,
            query_type=job.query.query_type,
            **fields,
        )

    def to_message(self) -> dict[str, Any]:
        """The ``query_result`` (or ``error``) frame for the original client, with our extras."""
        if self.status == "done":
            return {
                "type": "query_result",
                "result": self.result,
                "result_type": self.result_type,
                "processing_time": self.processing_time,
                "cost": self.cost,
                "job_id": self.job_id,
                "worker": self.worker,
                "attempts": self.attempts,
                "queue_wait": self.queue_wait,
                "realm": self.realm,
            }
        if self.status == "cancelled":
            return {"type": "query_cancelled", "job_id": self.job_id}
        return {"type": "error", "message": self.error or "Query failed", "job_id": self.job_id}
