"""Seen client JWT ids, shared by every worker for replay protection.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21

Only a SHA-256 of (iss, jti) and the token's expiry: no token, no claims.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "seen_tokens",
        sa.Column("token_key", sa.String(64), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("token_key", name="pk_seen_tokens"),
    )


def downgrade() -> None:
    op.drop_table("seen_tokens")
