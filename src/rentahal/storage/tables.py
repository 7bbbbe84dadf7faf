"""SQLAlchemy Core tables: the original's five, with our extra columns, plus api keys."""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

users = Table(
    "users",
    metadata,
    Column("guid", String, primary_key=True),
    Column("nickname", String, unique=True),
    Column("is_sysop", Boolean, default=False, nullable=False),
    Column("total_query_time", Float, default=0.0, nullable=False),
    Column("total_cost", Float, default=0.0, nullable=False),
    Column("is_banned", Boolean, default=False, nullable=False),
    Column("query_count", Integer, default=0, nullable=False),
)

queries = Table(
    "queries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user_guid", String),
    Column("query_type", String),
    Column("model_type", String),
    Column("model_name", String),
    Column("prompt", Text),
    Column("processing_time", Float),
    Column("cost", Float),
    Column("timestamp", DateTime),
    # ours
    Column("job_id", String(64)),
    Column("status", String(16), default="done"),
    Column("error", Text),
    Column("queue_wait", Float),
    Column("worker", String),
    Column("realm", String(64)),
    Column("attempts", Integer),
    Column("result_type", String(16)),
    Index("ix_queries_user_guid_id", "user_guid", "id"),
    Index("ix_queries_job_id", "job_id", unique=True),
)

ai_workers = Table(
    "ai_workers",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String),
    Column("address", String),
    Column("type", String),
    Column("health_score", Float),
    Column("is_blacklisted", Boolean),
    Column("last_active", String),
    # ours
    Column("protocol", String(32)),
    Column("max_concurrency", Integer),
    Column("api_key", String),
    Column("models", Text),
    Column("realm", String(64)),
)

huggingface_models = Table(
    "huggingface_models",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String),
    Column("type", String),
)

system_stats = Table(
    "system_stats",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("total_queries", Integer),
    Column("total_processing_time", Float),
    Column("total_cost", Float),
    Column("last_updated", DateTime),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user_guid", String, nullable=False, index=True),
    Column("name", String(100), nullable=False, default=""),
    Column("prefix", String(16), nullable=False),
    Column("key_hash", String(128), nullable=False, unique=True),
    Column("created_at", DateTime, nullable=False),
    Column("revoked", Boolean, nullable=False, default=False),
)

# One row (id 1): the cluster's realm and pool configuration as one versioned
# document, since it is validated as a whole (backup realms, pool realms).
realm_config = Table(
    "realm_config",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("version", Integer, nullable=False),
    Column("config", Text, nullable=False),
    Column("stopped", Text, nullable=False, default="[]"),
    Column("updated_at", DateTime, nullable=False),
    Column("updated_by", String(64), nullable=False, default=""),
)

# Other installations this one federates with (see rentahal.federation).
federation_peers = Table(
    "federation_peers",
    metadata,
    Column("federation_id", String(128), primary_key=True),
    Column("callback_url", String(512), nullable=False),
    Column("public_key", String(64), nullable=False),
    # pending (awaits a sysop), active, down (unreachable), blocked
    Column("state", String(16), nullable=False),
    Column("last_seen", Float),
    Column("services", Text),
    Column("created_at", DateTime),
)

# Tokens a sysop issues so workers can register themselves (hash only), and the
# leases of registered workers (renewed by heartbeats).
worker_tokens = Table(
    "worker_tokens",
    metadata,
    Column("prefix", String(16), primary_key=True),
    Column("token_hash", String(128), nullable=False, unique=True),
    Column("name", String(100), nullable=False, default=""),
    Column("realm", String(64)),
    Column("query_type", String(16)),
    Column("created_at", DateTime, nullable=False),
    Column("revoked", Boolean, nullable=False, default=False),
)

worker_leases = Table(
    "worker_leases",
    metadata,
    Column("worker", String(100), primary_key=True),
    Column("token_prefix", String(16), nullable=False),
    Column("expires_at", Float, nullable=False),
)

# Workers the realm scaler started: its bookkeeping, so the next leader can take over.
scaler_workers = Table(
    "scaler_workers",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("realm", String(64), nullable=False),
    Column("query_type", String(16), nullable=False),
    Column("address", String(300), nullable=False),
    Column("node_id", String(64), nullable=False),
)

# Sharding (docs/deployment.md, "Sharding"). Every database gets every table;
# the main database uses the directory side, each shard the fence/totals side.

# Main: the shards (connection strings as written), the prefix directory and its version.
shards = Table(
    "shards",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("connection_string", Text, nullable=False),
    Column("added_at", DateTime, nullable=False),
)

shard_directory = Table(
    "shard_directory",
    metadata,
    Column("prefix", String(8), primary_key=True),
    Column("shard", String(64), nullable=False),
    Column("version", Integer, nullable=False),
)

# One row (id 1): the directory's version, raised by every switch.
shard_meta = Table(
    "shard_meta",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("version", Integer, nullable=False),
    Column("created_at", DateTime, nullable=False),
)

# Moves in progress: phase "copying" (the source owns the prefix) or "switched" (the target does).
shard_moves = Table(
    "shard_moves",
    metadata,
    Column("prefix", String(8), primary_key=True),
    Column("source", String(64), nullable=False),
    Column("target", String(64), nullable=False),
    Column("phase", String(16), nullable=False),
    Column("updated_at", DateTime, nullable=False),
)

# The directory version each node runs (a move waits for every live node to know it).
shard_nodes = Table(
    "shard_nodes",
    metadata,
    Column("node_id", String(64), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("seen_at", Float, nullable=False),
)

# Main: which user an API key belongs to (the key rows live in the user's shard).
api_key_index = Table(
    "api_key_index",
    metadata,
    Column("key_hash", String(128), primary_key=True),
    Column("prefix", String(16), nullable=False, index=True),
    Column("user_guid", String, nullable=False),
)

# Main: nicknames are unique across shards (each shard's users table only sees its own).
nickname_index = Table(
    "nickname_index",
    metadata,
    Column("nickname", String, primary_key=True),
    Column("user_guid", String, nullable=False),
)

# Main, one row (id 1): the user who became the sysop by the first-user rule.
first_user = Table(
    "first_user",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("guid", String, nullable=False),
)

# Main: ledger batches of shards already added to system_stats (applied once each).
totals_applied = Table(
    "totals_applied",
    metadata,
    Column("batch_id", String(96), primary_key=True),
    Column("applied_at", Float, nullable=False),
)

# Main, one row (id 1): what system_stats held beyond the rows of the shards when
# sharding began (an imported original's own figures), so the sum can be checked.
totals_base = Table(
    "totals_base",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("total_queries", Integer, nullable=False),
    Column("total_processing_time", Float, nullable=False),
    Column("total_cost", Float, nullable=False),
)

# Shard: one row per prefix this shard owns (moved_to NULL) or handed on (moved_to set).
# A write of a prefix's user data commits only while the row says owned and not frozen.
prefix_fences = Table(
    "prefix_fences",
    metadata,
    Column("prefix", String(8), primary_key=True),
    Column("frozen_until", Float),
    Column("moved_to", String(64)),
)

# Shard, one row (id 1): the charged rows of the prefixes it owns (count, time, cost).
shard_totals = Table(
    "shard_totals",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("total_queries", Integer, nullable=False),
    Column("total_processing_time", Float, nullable=False),
    Column("total_cost", Float, nullable=False),
)

# Shard: charges committed here that the main database's system_stats has to take
# (a transactional outbox; applied once per batch_id, then deleted).
totals_outbox = Table(
    "totals_outbox",
    metadata,
    Column("batch_id", String(96), primary_key=True),
    Column("total_queries", Integer, nullable=False),
    Column("total_processing_time", Float, nullable=False),
    Column("total_cost", Float, nullable=False),
    Column("created_at", Float, nullable=False),
)
