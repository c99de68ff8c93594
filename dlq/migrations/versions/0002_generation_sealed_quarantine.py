"""dead letters: generation, sealed payload, effect key, wider task ids; quarantine table

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("dead_letters") as batch:
        batch.alter_column("task_id", type_=sa.String(255), existing_type=sa.String(64),
                           existing_nullable=False)
        batch.alter_column("replayed_task_id", type_=sa.String(255),
                           existing_type=sa.String(64))
        batch.add_column(sa.Column("generation", sa.Integer(), nullable=False,
                                   server_default="0"))
        batch.add_column(sa.Column("sealed", sa.Text()))
        batch.add_column(sa.Column("effect_key", sa.String(255)))
    op.create_table(
        "dead_letter_quarantine",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("digest", sa.String(64), nullable=False, unique=True),
        sa.Column("task_id", sa.Text()),
        sa.Column("raw", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("quarantined_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("dead_letter_quarantine")
    with op.batch_alter_table("dead_letters") as batch:
        batch.drop_column("effect_key")
        batch.drop_column("sealed")
        batch.drop_column("generation")
        batch.alter_column("replayed_task_id", type_=sa.String(64),
                           existing_type=sa.String(255))
        batch.alter_column("task_id", type_=sa.String(64), existing_type=sa.String(255),
                           existing_nullable=False)
