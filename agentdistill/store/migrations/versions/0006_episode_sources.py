"""episodes from outside agentdistill's own rollouts: recorded gateway sessions and imported traces

source: who produced the episode (NULL: a rollout agentdistill played; "gateway"; "import:claude-code",
"import:codex", "import:atif", "import:openai-chat", "import:inspect"). external_id: the session's own id
there (unique per source: importing or recording the same session twice adds nothing). tags and feedback:
an outcome attached later (success, reward and score are the existing columns). provenance: where it came
from (file, line, sha256 of the file; or the gateway's route and client).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 18:40:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('episodes', sa.Column('source', sa.String(length=64), nullable=True))
    op.add_column('episodes', sa.Column('external_id', sa.String(length=200), nullable=True))
    op.add_column('episodes', sa.Column('tags', sa.JSON(), nullable=True))
    op.add_column('episodes', sa.Column('feedback', sa.Text(), nullable=True))
    op.add_column('episodes', sa.Column('provenance', sa.JSON(), nullable=True))
    op.create_index('uq_episode_source_external', 'episodes', ['source', 'external_id'], unique=True)


def downgrade() -> None:
    op.drop_index('uq_episode_source_external', table_name='episodes')
    for column in ('provenance', 'feedback', 'tags', 'external_id', 'source'):
        op.drop_column('episodes', column)
