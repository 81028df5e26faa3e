"""episode metrics (per-episode measurements such as SPARK's Posterior Distillation Index)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 21:45:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('episodes') as batch:
        batch.add_column(sa.Column('metrics', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('episodes') as batch:
        batch.drop_column('metrics')
