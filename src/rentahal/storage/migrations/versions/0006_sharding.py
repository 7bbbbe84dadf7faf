"""Sharding by user GUID: the directory (main), fences and totals (shards), key index.

Every database gets every table: the main database uses ``shards``,
``shard_directory``, ``shard_meta``, ``shard_moves``, ``shard_nodes``,
``api_key_index``, ``nickname_index``, ``first_user``, ``totals_applied`` and ``totals_base``; a
shard uses ``prefix_fences``, ``shard_totals`` and ``totals_outbox``. Existing
API keys and nicknames are entered in the indexes, and an existing first user
is remembered.

Revision ID: 0006
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def _totals() -> list[sa.Column[Any]]:
    return [
        sa.Column("total_queries", sa.Integer, nullable=False, server_default="0"),
        sa.Column("total_processing_time", sa.Float, nullable=False, server_default="0"),
        sa.Column("total_cost", sa.Float, nullable=False, server_default="0"),
    ]


def upgrade() -> None:
    """Create the sharding tables; index existing keys; remember the first user."""
    op.create_table(
        "shards",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("connection_string", sa.Text, nullable=False),
        sa.Column("added_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "shard_directory",
        sa.Column("prefix", sa.String(8), primary_key=True),
        sa.Column("shard", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
    )
    op.create_table(
        "shard_meta",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "shard_moves",
        sa.Column("prefix", sa.String(8), primary_key=True),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("target", sa.String(64), nullable=False),
        sa.Column("phase", sa.String(16), nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "shard_nodes",
        sa.Column("node_id", sa.String(64), primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("seen_at", sa.Float, nullable=False),
    )
    op.create_table(
        "api_key_index",
        sa.Column("key_hash", sa.String(128), primary_key=True),
        sa.Column("prefix", sa.String(16), nullable=False, index=True),
        sa.Column("user_guid", sa.String, nullable=False),
    )
    op.create_table(
        "nickname_index",
        sa.Column("nickname", sa.String, primary_key=True),
        sa.Column("user_guid", sa.String, nullable=False),
    )
    op.create_table(
        "first_user",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("guid", sa.String, nullable=False),
    )
    op.create_table(
        "totals_applied",
        sa.Column("batch_id", sa.String(96), primary_key=True),
        sa.Column("applied_at", sa.Float, nullable=False),
    )
    op.create_table("totals_base", sa.Column("id", sa.Integer, primary_key=True), *_totals())
    op.create_table(
        "prefix_fences",
        sa.Column("prefix", sa.String(8), primary_key=True),
        sa.Column("frozen_until", sa.Float),
        sa.Column("moved_to", sa.String(64)),
    )
    op.create_table("shard_totals", sa.Column("id", sa.Integer, primary_key=True), *_totals())
    op.create_table(
        "totals_outbox",
        sa.Column("batch_id", sa.String(96), primary_key=True),
        *_totals(),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    bind = op.get_bind()
    bind.execute(
        sa.text(
            "INSERT INTO shard_totals (id, total_queries, total_processing_time, total_cost)"
            " VALUES (1, 0, 0, 0)"
        )
    )
    bind.execute(
        sa.text(
            "INSERT INTO api_key_index (key_hash, prefix, user_guid)"
            " SELECT key_hash, prefix, user_guid FROM api_keys"
        )
    )
    bind.execute(
        sa.text(
            "INSERT INTO nickname_index (nickname, user_guid)"
            " SELECT nickname, guid FROM users WHERE nickname IS NOT NULL"
        )
    )
    # The sysop of the first-user rule; with none, the oldest account stands in
    # (so that a later user never becomes sysop on an installation that has users).
    first = bind.execute(
        sa.text(
            "SELECT guid FROM users WHERE nickname IS NULL OR nickname NOT LIKE 'federation:%'"
            " ORDER BY is_sysop DESC, guid LIMIT 1"
        )
    ).first()
    if first is not None:
        bind.execute(
            sa.text("INSERT INTO first_user (id, guid) VALUES (1, :guid)"), {"guid": first[0]}
        )


def downgrade() -> None:
    """Drop the sharding tables."""
    for name in (
        "totals_outbox",
        "shard_totals",
        "prefix_fences",
        "totals_base",
        "totals_applied",
        "first_user",
        "nickname_index",
        "api_key_index",
        "shard_nodes",
        "shard_moves",
        "shard_meta",
        "shard_directory",
        "shards",
    ):
        op.drop_table(name)
