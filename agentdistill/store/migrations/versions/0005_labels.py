"""labels: a teacher's action at a state another policy reached (DAgger), linked to the step it labels

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07 14:40:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'labels',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('step_id', sa.Integer(), nullable=False),
        sa.Column('run_id', sa.String(length=32), nullable=True),
        sa.Column('labeller', sa.String(length=300), nullable=False),
        sa.Column('action', sa.Text(), nullable=False),
        sa.Column('thought', sa.Text(), nullable=True),
        sa.Column('raw_output', sa.Text(), nullable=True),
        sa.Column('calls', sa.JSON(), nullable=False),
        sa.Column('prompt_tokens', sa.Integer(), nullable=False),
        sa.Column('completion_tokens', sa.Integer(), nullable=False),
        sa.Column('cost', sa.Float(), nullable=False),
        sa.Column('latency', sa.Float(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['step_id'], ['steps.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['run_id'], ['runs.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('step_id', 'labeller', name='uq_label_step_labeller'),
    )
    op.create_index('ix_labels_step_id', 'labels', ['step_id'])


def downgrade() -> None:
    op.drop_index('ix_labels_step_id', table_name='labels')
    op.drop_table('labels')
