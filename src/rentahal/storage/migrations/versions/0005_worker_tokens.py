"""Worker self-registration (tokens, leases) and the scaler's bookkeeping of its workers.

Revision ID: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create ``worker_tokens`` and ``worker_leases``."""
    op.create_table(
        "worker_tokens",
        sa.Column("prefix", sa.String(16), primary_key=True),
        sa.Column("token_hash", sa.String(128), nullable=False, unique=True),
        sa.Column("name", sa.String(100), nullable=False, server_default=""),
        sa.Column("realm", sa.String(64)),
        sa.Column("query_type", sa.String(16)),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("revoked", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.create_table(
        "worker_leases",
        sa.Column("worker", sa.String(100), primary_key=True),
        sa.Column("token_prefix", sa.String(16), nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
    )

    op.create_table(
        "scaler_workers",
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("realm", sa.String(64), nullable=False),
        sa.Column("query_type", sa.String(16), nullable=False),
        sa.Column("address", sa.String(300), nullable=False),
        sa.Column("node_id", sa.String(64), nullable=False),
    )


def downgrade() -> None:
    """Drop them."""
    op.drop_table("scaler_workers")
    op.drop_table("worker_leases")
    op.drop_table("worker_tokens")
