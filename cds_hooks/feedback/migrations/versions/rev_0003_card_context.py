"""What suppression and the committee report need to know about each card.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

issued_cards gains the card's kind, the date of the newest evidence it rests on, the rules version that made
it, and keyed pseudonyms of the patient and the clinician (HMAC-SHA-256, cds_hooks/security/pseudonym.py): never
the ids themselves. All nullable: cards issued before this revision, or without a pseudonym secret, have none.
suppressed_cards counts the cards not shown because a clinician had already acted on them (no patient, no
clinician: the count by tier and rules version is all the report needs).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("issued_cards") as batch:
        batch.add_column(sa.Column("kind", sa.String(32), nullable=True))
        batch.add_column(sa.Column("evidence_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("rules_version", sa.String(128), nullable=True))
        batch.add_column(sa.Column("patient_key", sa.String(64), nullable=True))
        batch.add_column(sa.Column("user_key", sa.String(64), nullable=True))
    op.create_index("ix_issued_cards_patient", "issued_cards", ["service_id", "patient_key", "issued_at"])
    op.create_table(
        "suppressed_cards",
        sa.Column("id", _ROW_ID, primary_key=True, autoincrement=True),
        sa.Column("service_id", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("indicator", sa.String(16), nullable=False),
        sa.Column("rules_version", sa.String(128), nullable=True),
        sa.Column("suppressed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("issuer", sa.Text(), nullable=True),
        sa.Column("tenant", sa.Text(), nullable=True),
        sa.CheckConstraint("indicator IN ('info', 'warning', 'critical')", name="ck_suppressed_cards_indicator"),
    )


def downgrade() -> None:
    op.drop_table("suppressed_cards")
    op.drop_index("ix_issued_cards_patient", table_name="issued_cards")
    with op.batch_alter_table("issued_cards") as batch:
        for column in ("user_key", "patient_key", "rules_version", "evidence_at", "kind"):
            batch.drop_column(column)
