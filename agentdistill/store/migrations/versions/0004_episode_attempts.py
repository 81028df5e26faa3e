"""episode attempts: an errored episode is retried as a new attempt, every attempt kept

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 15:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('episodes') as batch:
        batch.add_column(sa.Column('attempt', sa.Integer(), nullable=False, server_default='0'))
        batch.drop_constraint('uq_episode_plan', type_='unique')
        batch.create_unique_constraint('uq_episode_attempt', ['run_id', 'plan_index', 'attempt'])


def downgrade() -> None:
    with op.batch_alter_table('episodes') as batch:
        batch.drop_constraint('uq_episode_attempt', type_='unique')
        batch.create_unique_constraint('uq_episode_plan', ['run_id', 'plan_index'])
        batch.drop_column('attempt')
