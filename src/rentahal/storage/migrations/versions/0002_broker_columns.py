"""Broker columns: query status and accounting, worker protocol and capacity, api keys.

Also folds the original's one-row-per-query ``system_stats`` into a single
totals row (id 1), so the totals of an imported database are kept.

Revision ID: 0002
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_QUERY_COLUMNS: list[sa.Column[Any]] = [
    sa.Column("job_id", sa.String(64)),
    sa.Column("status", sa.String(16), server_default="done"),
    sa.Column("error", sa.Text),
    sa.Column("queue_wait", sa.Float),
    sa.Column("worker", sa.String),
    sa.Column("realm", sa.String(64)),
    sa.Column("attempts", sa.Integer),
    sa.Column("result_type", sa.String(16)),
]
_WORKER_COLUMNS: list[sa.Column[Any]] = [
    sa.Column("protocol", sa.String(32)),
    sa.Column("max_concurrency", sa.Integer),
    sa.Column("api_key", sa.String),
    sa.Column("models", sa.Text),
    sa.Column("realm", sa.String(64)),
]


def _add_missing(table: str, columns: list[sa.Column[Any]]) -> None:
    present = {c["name"] for c in sa.inspect(op.get_bind()).get_columns(table)}
    missing = [c for c in columns if c.name not in present]
    if missing:
        with op.batch_alter_table(table) as batch:
            for column in missing:
                batch.add_column(column)


def _fold_system_stats() -> None:
    bind = op.get_bind()
    stats = sa.table(
        "system_stats",
        sa.column("id", sa.Integer),
        sa.column("total_queries", sa.Integer),
        sa.column("total_processing_time", sa.Float),
        sa.column("total_cost", sa.Float),
        sa.column("last_updated", sa.DateTime),
    )
    rows = bind.execute(sa.select(stats)).all()
    if len(rows) == 1 and rows[0].id == 1:
        return
    # The original inserted one row per query carrying that query's figures;
    # summing them gives the totals.
    totals = {
        "id": 1,
        "total_queries": sum(int(r.total_queries or 0) for r in rows),
        "total_processing_time": sum(float(r.total_processing_time or 0) for r in rows),
        "total_cost": sum(float(r.total_cost or 0) for r in rows),
        "last_updated": datetime.now(UTC).replace(tzinfo=None),
    }
    bind.execute(sa.delete(stats))
    bind.execute(sa.insert(stats).values(**totals))


def upgrade() -> None:
    _add_missing("queries", _QUERY_COLUMNS)
    _add_missing("ai_workers", _WORKER_COLUMNS)
    op.create_index("ix_queries_user_guid_id", "queries", ["user_guid", "id"])
    op.create_index("ix_queries_job_id", "queries", ["job_id"], unique=True)
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("user_guid", sa.String, nullable=False, index=True),
        sa.Column("name", sa.String(100), nullable=False, server_default=""),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("key_hash", sa.String(128), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("revoked", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    _fold_system_stats()


def downgrade() -> None:
    op.drop_table("api_keys")
    op.drop_index("ix_queries_job_id", "queries")
    op.drop_index("ix_queries_user_guid_id", "queries")
    with op.batch_alter_table("ai_workers") as batch:
        for column in _WORKER_COLUMNS:
            batch.drop_column(column.name)
    with op.batch_alter_table("queries") as batch:
        for column in _QUERY_COLUMNS:
            batch.drop_column(column.name)
