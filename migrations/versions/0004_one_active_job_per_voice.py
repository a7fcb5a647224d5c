"""At most one queued or running fine-tuning job per voice (a partial unique index).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 17:50:00.000000

"""
from datetime import datetime, timezone

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

ACTIVE = sa.text("state IN ('queued', 'running')")
SECOND_JOB = ("Failed by migration 0004: another fine-tuning job for this voice was queued or running "
              "(two requests at once made both). Retry this one once that job has ended.")


# The columns this migration writes, typed as the app stores them (timestamps in UTC).
jobs = sa.table('jobs', sa.column('id', sa.String), sa.column('voice_id', sa.String),
                sa.column('state', sa.String), sa.column('error', sa.Text), sa.column('message', sa.Text),
                sa.column('lease_owner', sa.String), sa.column('lease_expires_at', sa.DateTime(timezone=True)),
                sa.column('created_at', sa.DateTime(timezone=True)),
                sa.column('finished_at', sa.DateTime(timezone=True)),
                sa.column('updated_at', sa.DateTime(timezone=True)))


def upgrade():
    # Before the index, a race could have made two active jobs for one voice; the index cannot be built
    # over them. One is kept (a running one, else the oldest), the others fail, retryable, saying why.
    connection = op.get_bind()
    active = connection.execute(
        sa.select(jobs.c.id, jobs.c.voice_id).where(jobs.c.state.in_(['queued', 'running']))
        .order_by(jobs.c.voice_id, sa.case((jobs.c.state == 'running', 0), else_=1), jobs.c.created_at,
                  jobs.c.id)).all()
    kept = set()
    now = datetime.now(timezone.utc)
    for job_id, voice_id in active:
        if voice_id in kept:
            connection.execute(jobs.update().where(jobs.c.id == job_id).values(
                state='failed', error=SECOND_JOB, message=SECOND_JOB, lease_owner=None,
                lease_expires_at=None, finished_at=now, updated_at=now))
        kept.add(voice_id)
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.create_index('uq_jobs_active_voice', ['voice_id'], unique=True,
                              sqlite_where=ACTIVE, postgresql_where=ACTIVE)


def downgrade():
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('uq_jobs_active_voice')
