"""A version on each voice row, raised on every change (caches key by id and version).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 05:10:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade():
    # server_default fills the rows that exist already; the model keeps it, so there is no drift.
    with op.batch_alter_table('voices', schema=None) as batch_op:
        batch_op.add_column(sa.Column('version', sa.Integer(), server_default='1', nullable=False))


def downgrade():
    with op.batch_alter_table('voices', schema=None) as batch_op:
        batch_op.drop_column('version')
