"""Feedback store: issued cards and feedback rows.

Revision ID: 0001
Revises:
Create Date: 2026-05-20

Only analytics columns: no userComment, no extensions, no patient data (cds_hooks/feedback/models.py).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# SQLite only makes INTEGER PRIMARY KEY an auto-incrementing rowid; PostgreSQL gets a BIGINT identity.
_ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "issued_cards",
        sa.Column("service_id", sa.String(128), nullable=False),
        sa.Column("card_uuid", sa.String(256), nullable=False),
        sa.Column("indicator", sa.String(16), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("issuer", sa.Text(), nullable=True),
        sa.Column("tenant", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("service_id", "card_uuid", name="pk_issued_cards"),
        sa.CheckConstraint("indicator IN ('info', 'warning', 'critical')", name="ck_issued_cards_indicator"),
    )
    op.create_table(
        "feedback",
        sa.Column("id", _ROW_ID, primary_key=True, autoincrement=True),
        sa.Column("service_id", sa.String(128), nullable=False),
        sa.Column("card_uuid", sa.String(256), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("accepted_suggestions", sa.JSON(), nullable=True),
        sa.Column("reason_system", sa.String(1024), nullable=True),
        sa.Column("reason_code", sa.String(256), nullable=True),
        sa.Column("outcome_timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("issuer", sa.Text(), nullable=True),
        sa.Column("tenant", sa.Text(), nullable=True),
        sa.UniqueConstraint(
            "service_id", "card_uuid", "outcome", "outcome_timestamp", name="uq_feedback_delivery"
        ),
        sa.CheckConstraint("outcome IN ('accepted', 'overridden')", name="ck_feedback_outcome"),
    )


def downgrade() -> None:
    op.drop_table("feedback")
    op.drop_table("issued_cards")
