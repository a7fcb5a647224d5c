"""Every read and write of the jobs table: create, find, claim under a lease, heartbeat, finish."""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError, InvalidRequestError

from voiceforge.db import db
from voiceforge.errors import Conflict, NotFound
from voiceforge.models import Job, JobState, utcnow
from voiceforge.services.voices import commit

ACTIVE = (JobState.queued, JobState.running)


def new_job(voice_id: str, params: dict[str, Any], *, epochs: int, job_id: str | None = None,
            dataset_seconds: float | None = None) -> Job:
    """Queue a fine-tuning job for a voice (409 while one is queued or running for it)."""
    refuse_a_second_job(voice_id)
    job = Job(id=job_id or secrets.token_hex(16), voice_id=voice_id, kind="finetune", state=JobState.queued,
              params=params, epochs=epochs, message="Queued.", dataset_seconds=dataset_seconds)
    db.session.add(job)
    _commit_unless_another_is_active(voice_id)
    return job


def refuse_a_second_job(voice_id: str) -> None:
    """409 while the voice has a fine-tuning job queued or running."""
    if active_job(voice_id) is not None:
        raise Conflict(f"Voice {voice_id!r} already has a fine-tuning job queued or running.")


def _commit_unless_another_is_active(voice_id: str) -> None:
    """Commit a job becoming queued; 409 when another request's job for the voice became active since
    the check (the database's one-active-job-per-voice index refuses the second)."""
    try:
        commit()
    except IntegrityError:
        refuse_a_second_job(voice_id)
        raise  # another constraint: not a second job


def get_job(job_id: str) -> Job:
    job = db.session.get(Job, job_id) if len(job_id) <= 32 else None
    if job is None:
        raise NotFound(f"Job {job_id[:40]!r} not found.")
    return job


def exists(job_id: str) -> bool:
    """Whether the job's row is still there (deleting a voice takes its jobs' rows)."""
    return db.session.scalar(select(Job.id).where(Job.id == job_id)) is not None


def list_jobs(voice_id: str | None = None, state: JobState | None = None,
              limit: int | None = None) -> list[Job]:
    """Jobs, newest first: a voice's, in a state, or the newest `limit` of them."""
    query = select(Job).order_by(Job.created_at.desc(), Job.id).limit(limit)
    if voice_id:
        query = query.where(Job.voice_id == voice_id)
    if state:
        query = query.where(Job.state == state)
    return list(db.session.scalars(query))


def active_job(voice_id: str) -> Job | None:
    return db.session.scalars(select(Job).where(Job.voice_id == voice_id, Job.state.in_(ACTIVE))).first()


def latest_job(voice_id: str) -> Job | None:
    """The voice's job that changed last: a retried older job is the one that counts, not a newer one
    that ended before it was retried."""
    return db.session.scalars(select(Job).where(Job.voice_id == voice_id)
                              .order_by(Job.updated_at.desc(), Job.created_at.desc())).first()


def request_cancel(job: Job) -> Job:
    """Cancel a queued job at once; ask a running one's runner to stop (it does within seconds).

    A running job whose runner's lease ran out (the runner died, and no other has claimed it yet)
    is cancelled at once too: nobody is there to notice the request.
    """
    # Each change is made only while the job is still as read: a runner may claim a queued job (or a dead
    # runner's) between the read and the write, and must then be asked to stop rather than overwritten.
    now = utcnow()
    cancelled = JobState.cancelled
    for condition, values in (
            (Job.state == JobState.queued, _ending(cancelled, message="Cancelled before it started.")),
            (_runner_gone_at(now), _ending(cancelled, message="Cancelled (its runner had stopped).")),
            (Job.state == JobState.running, {"cancel_requested": True, "message": "Cancelling…",
                                             "updated_at": now})):
        if _update_if(job.id, condition, **values):
            break
    try:
        db.session.refresh(job)
    except InvalidRequestError:  # its row went meanwhile, with its voice
        raise NotFound(f"Job {job.id!r} not found.") from None
    return job


def _update_if(job_id: str, condition: Any, **values: Any) -> bool:
    """Write `values` to the job's row if `condition` holds there now; whether it did."""
    changed = db.session.execute(update(Job).where(Job.id == job_id, condition).values(**values))
    commit()
    return changed.rowcount == 1


def runner_gone(job: Job) -> bool:
    """Whether a running job's runner died: its lease ran out, and no other runner has claimed it yet."""
    expires = job.lease_expires_at
    return job.state == JobState.running and expires is not None and expires < utcnow()


def _runner_gone_at(now: datetime) -> Any:
    """runner_gone() as a condition on the row."""
    return (Job.state == JobState.running) & (Job.lease_expires_at < now)


def retry(job: Job) -> Job:
    """Queue a failed job again, from its last checkpoint if it has one."""
    if job.state == JobState.cancelled:
        raise Conflict(f"Job {job.id} was cancelled, which removed its recordings; start a new "
                       "fine-tuning job instead.")
    if job.state != JobState.failed:
        raise Conflict(f"Job {job.id} is {job.state.value}; only failed jobs can be retried.")
    refuse_a_second_job(job.voice_id)
    job.state, job.error, job.cancel_requested, job.attempts = JobState.queued, None, False, 0
    job.finished_at, job.message = None, "Queued again."
    # The failed run's figures would read as this run's: it starts again (from a checkpoint, which its
    # trainer reports at once) with its own.
    job.progress, job.epoch, job.step, job.steps, job.loss, job.started_at = 0.0, 0, 0, 0, None, None
    _commit_unless_another_is_active(job.voice_id)
    return job


def claim_next(owner: str, lease_seconds: float) -> Job | None:
    """Take the oldest queued job, or a running one whose runner's lease ran out (it died).

    The UPDATE only matches while the job is still claimable, so two runners never get the same
    job (on SQLite and PostgreSQL alike); the loser simply tries the next candidate.
    """
    candidates = db.session.scalars(select(Job.id).where(_claimable(utcnow())).order_by(Job.created_at)
                                    .limit(5)).all()
    for job_id in candidates:
        job = claim(job_id, owner, lease_seconds)
        if job is not None:
            return job
    return None


def claim(job_id: str, owner: str, lease_seconds: float) -> Job | None:
    """Take this one job if it is queued or its runner's lease ran out (it died), as claim_next does.

    None while it runs under a live lease, or once it is finished or gone: so a Celery task that is
    delivered twice runs its job once.
    """
    now = utcnow()
    claimed = db.session.execute(
        update(Job).where(Job.id == job_id, _claimable(now)).values(
            state=JobState.running, lease_owner=owner, attempts=Job.attempts + 1,
            lease_expires_at=now + timedelta(seconds=lease_seconds), updated_at=now))
    commit()
    if claimed.rowcount != 1:
        return None
    job = db.session.get(Job, job_id)
    db.session.refresh(job)
    if job.started_at is None:
        job.started_at = now
        commit()
    return job


def _claimable(now: datetime) -> Any:
    return or_(Job.state == JobState.queued, _runner_gone_at(now))


def heartbeat(job_id: str, owner: str, lease_seconds: float, **fields: Any) -> Job | None:
    """Renew the lease and record progress; None when the job is no longer ours (or is gone)."""
    now = utcnow()
    renewed = db.session.execute(
        update(Job).where(Job.id == job_id, Job.lease_owner == owner, Job.state == JobState.running)
        .values(lease_expires_at=now + timedelta(seconds=lease_seconds), updated_at=now, **fields))
    commit()
    if renewed.rowcount != 1:
        return None
    job = db.session.get(Job, job_id)
    db.session.refresh(job)
    return job


def _ending(state: JobState, *, error: str | None = None, message: str | None = None) -> dict[str, Any]:
    """The columns a job ends with in `state` (its message kept when none is given)."""
    now = utcnow()
    values: dict[str, Any] = {"state": state, "error": error, "finished_at": now, "lease_owner": None,
                              "lease_expires_at": None, "updated_at": now}
    if message:
        values["message"] = message
    if state == JobState.succeeded:
        values["progress"] = 1.0
    return values


def finish(job: Job, state: JobState, *, error: str | None = None, message: str | None = None) -> Job:
    for column, value in _ending(state, error=error, message=message).items():
        setattr(job, column, value)
    commit()
    return job


def finish_owned(job_id: str, owner: str, state: JobState, *, error: str | None = None,
                 message: str | None = None) -> bool:
    """finish() by the runner holding the job's lease; False when it holds it no more (another runner
    took the job over while this one stalled, or the row went with its voice), and nothing is written."""
    return _update_if(job_id, (Job.lease_owner == owner) & (Job.state == JobState.running),
                      **_ending(state, error=error, message=message))


def release(job_id: str, owner: str, message: str) -> None:
    """Give a running job back (graceful shutdown): another runner resumes it from its checkpoint."""
    db.session.execute(update(Job).where(Job.id == job_id, Job.lease_owner == owner).values(
        state=JobState.queued, lease_owner=None, lease_expires_at=None, message=message,
        attempts=Job.attempts - 1, updated_at=utcnow()))
    commit()


def requeue_orphans() -> list[str]:
    """Queue again the running jobs whose runner's lease ran out (it died), to resume from their checkpoint;
    their ids. Each change holds only while the lease is still out, so of several callers one queues a job."""
    now = utcnow()
    orphans = db.session.scalars(select(Job.id).where(_runner_gone_at(now))).all()
    return [job_id for job_id in orphans if _update_if(
        job_id, _runner_gone_at(now), state=JobState.queued, lease_owner=None, lease_expires_at=None,
        message="Its runner stopped; queued to resume from its checkpoint.", updated_at=now)]


def owned_voice_ids() -> set[str]:
    """Voices a live job owns (queued, or running under an unexpired lease): reconcile leaves them."""
    now = utcnow()
    live = or_(Job.state == JobState.queued, (Job.state == JobState.running) & (Job.lease_expires_at >= now))
    return set(db.session.scalars(select(Job.voice_id).where(live)))
