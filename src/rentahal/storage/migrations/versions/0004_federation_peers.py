"""Federation peers: other installations, their keys and state.

Revision ID: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create ``federation_peers``."""
    op.create_table(
        "federation_peers",
        sa.Column("federation_id", sa.String(128), primary_key=True),
        sa.Column("callback_url", sa.String(512), nullable=False),
        sa.Column("public_key", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("last_seen", sa.Float),
        sa.Column("services", sa.Text),
        sa.Column("created_at", sa.DateTime),
    )


def downgrade() -> None:
    """Drop ``federation_peers``."""
    op.drop_table("federation_peers")
