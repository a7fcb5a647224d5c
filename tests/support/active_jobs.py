"""Migration 0004 over a database holding two active jobs for one voice (run on SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from flask_migrate import downgrade, upgrade
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from voiceforge.db import db
from voiceforge.models import Job


def upgrade_over_two_active_jobs_of_a_voice() -> None:
    """Before 0004 two requests at once could queue two jobs for one voice (two trainers, one voice):
    upgrading keeps one (the running one) and fails the others, and the database then refuses a second."""
    upgrade(revision="0003")
    _add_voice_with_jobs({"old-queued": "queued", "running": "running", "new-queued": "queued",
                          "done": "succeeded"})
    upgrade()
    rows = db.session.execute(text("SELECT id, state, lease_owner, error FROM jobs ORDER BY id")).all()
    states = {job_id: (state, owner) for job_id, state, owner, _ in rows}
    assert states == {"done": ("succeeded", None), "new-queued": ("failed", None),
                      "old-queued": ("failed", None), "running": ("running", "runner-1")}
    assert all("Retry this one" in error for _, state, _, error in rows if state == "failed")
    ended = db.session.get(Job, "new-queued").finished_at  # read back as the app reads its own
    assert ended.tzinfo == UTC and abs(ended - datetime.now(UTC)) < timedelta(minutes=1)
    with pytest.raises(IntegrityError):  # a second active job, whatever checked before
        _execute("UPDATE jobs SET state = 'queued' WHERE id = 'old-queued'")
    db.session.rollback()
    _execute("UPDATE jobs SET state = 'failed' WHERE id = 'running'")
    _execute("UPDATE jobs SET state = 'queued' WHERE id = 'old-queued'")  # once the other ended
    downgrade(revision="0003")
    _execute("UPDATE jobs SET state = 'queued' WHERE id = 'new-queued'")  # no index before 0004


def _execute(sql: str, **values: str | None) -> None:
    db.session.execute(text(sql), values)
    db.session.commit()


def _add_voice_with_jobs(states: dict[str, str]) -> None:
    """A voice with jobs named by their ids, created in that order, in those states."""
    _execute("INSERT INTO voices (id, name, language, kind, status, created_at, updated_at, version) VALUES "
             "('v-1', 'V', 'en', 'cloned', 'ready', '2026-01-01 00:00:00', '2026-01-01 00:00:00', 1)")
    for minute, (job_id, state) in enumerate(states.items()):
        created = f"2026-01-01 00:0{minute}:00"
        _execute("INSERT INTO jobs (id, voice_id, kind, state, params, progress, epoch, epochs, step, steps, "
                 "attempts, cancel_requested, lease_owner, created_at, updated_at) VALUES (:id, 'v-1', "
                 "'finetune', :state, '{}', 0.0, 0, 10, 0, 0, 0, false, :owner, :created, :created)",
                 id=job_id, state=state, owner="runner-1" if state == "running" else None, created=created)
