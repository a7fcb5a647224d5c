"""Create the voices table (the voice registry).

Revision ID: 0001
Revises: 
Create Date: 2026-11-25 19:52:35.719600

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('voices',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('language', sa.String(length=8), nullable=False),
    sa.Column('kind', sa.Enum('builtin', 'cloned', 'finetuned', name='voice_kind', native_enum=False, length=16), nullable=False),
    sa.Column('status', sa.Enum('pending', 'processing', 'ready', 'failed', name='voice_status', native_enum=False, length=16), nullable=False),
    sa.Column('reference_path', sa.String(length=255), nullable=True),
    sa.Column('latents_path', sa.String(length=255), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_voices'))
    )
    with op.batch_alter_table('voices', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_voices_status'), ['status'], unique=False)



def downgrade():
    with op.batch_alter_table('voices', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_voices_status'))

    op.drop_table('voices')
