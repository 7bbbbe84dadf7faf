"""Baseline: the original RENT-A-HAL tables, created only where missing.

A database written by the original broker already has them; this revision then
changes nothing, so importing such a file loses nothing.

Revision ID: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "users" not in existing:
        op.create_table(
            "users",
            sa.Column("guid", sa.String, primary_key=True),
            sa.Column("nickname", sa.String, unique=True),
            sa.Column("is_sysop", sa.Boolean, nullable=False, server_default=sa.false()),
            sa.Column("total_query_time", sa.Float, nullable=False, server_default="0"),
            sa.Column("total_cost", sa.Float, nullable=False, server_default="0"),
            sa.Column("is_banned", sa.Boolean, nullable=False, server_default=sa.false()),
            sa.Column("query_count", sa.Integer, nullable=False, server_default="0"),
        )
    if "queries" not in existing:
        op.create_table(
            "queries",
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("user_guid", sa.String),
            sa.Column("query_type", sa.String),
            sa.Column("model_type", sa.String),
            sa.Column("model_name", sa.String),
            sa.Column("prompt", sa.Text),
            sa.Column("processing_time", sa.Float),
            sa.Column("cost", sa.Float),
            sa.Column("timestamp", sa.DateTime),
        )
    if "ai_workers" not in existing:
        op.create_table(
            "ai_workers",
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("name", sa.String),
            sa.Column("address", sa.String),
            sa.Column("type", sa.String),
            sa.Column("health_score", sa.Float),
            sa.Column("is_blacklisted", sa.Boolean),
            sa.Column("last_active", sa.String),
        )
    if "huggingface_models" not in existing:
        op.create_table(
            "huggingface_models",
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("name", sa.String),
            sa.Column("type", sa.String),
        )
    if "system_stats" not in existing:
        op.create_table(
            "system_stats",
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("total_queries", sa.Integer),
            sa.Column("total_processing_time", sa.Float),
            sa.Column("total_cost", sa.Float),
            sa.Column("last_updated", sa.DateTime),
        )


def downgrade() -> None:
    for name in ("system_stats", "huggingface_models", "ai_workers", "queries", "users"):
        op.drop_table(name)
