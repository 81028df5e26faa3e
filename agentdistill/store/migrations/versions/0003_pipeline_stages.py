"""pipeline stages (collect, distill, eval, report) with input keys and outputs

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 12:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'stages',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('run_id', sa.String(length=32), nullable=False),
        sa.Column('name', sa.String(length=200), nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('key', sa.String(length=64), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('outputs', sa.JSON(), nullable=False),
        sa.Column('reused_from', sa.Integer(), nullable=True),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('wall_time', sa.Float(), nullable=False),
        sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['run_id'], ['runs.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['reused_from'], ['stages.id']),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_stages_run_id', 'stages', ['run_id'])
    op.create_index('ix_stages_key', 'stages', ['key'])


def downgrade() -> None:
    op.drop_index('ix_stages_key', table_name='stages')
    op.drop_index('ix_stages_run_id', table_name='stages')
    op.drop_table('stages')
