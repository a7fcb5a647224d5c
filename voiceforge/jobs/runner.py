"""The job runner: claims jobs from the database under a heartbeat lease and runs them.

One runner process trains up to VOICEFORGE_JOB_CONCURRENCY jobs at once. gunicorn's master starts
one (voiceforge/jobs/supervisor.py); `flask jobs worker` runs one anywhere that shares the database
and the data directory. A runner that dies (kill -9, power loss) stops renewing its lease; when the
lease expires another runner claims the job again and it resumes from its last checkpoint, up to
VOICEFORGE_JOB_MAX_ATTEMPTS, after which it is failed with the reason. With VOICEFORGE_JOB_BACKEND=celery,
Celery workers claim and execute jobs the same way, one task per job (voiceforge/jobs/celery_backend.py).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from flask import Flask
from sqlalchemy.exc import SQLAlchemyError

from voiceforge import logs, metrics
from voiceforge.db import db, schema_problem
from voiceforge.jobs import store
from voiceforge.models import Job, JobState
from voiceforge.runtime import get_runtime

log = logging.getLogger(__name__)


class JobCancelled(Exception):
    """The job was cancelled (by a user, or its voice was deleted): stop and clean up."""


class LeaseLost(Exception):
    """Another runner owns the job now (our lease expired): stop without touching it."""


class ShuttingDown(Exception):
    """The runner is stopping: checkpoint, give the job back, and let another runner resume it."""


# (runtime, job, beat) -> None: the work of one job kind; beat(**fields) records progress, renews the
# lease, and raises JobCancelled, LeaseLost or ShuttingDown when the work must stop.
JobWork = Callable[[Any, Job, Callable[..., None]], None]


def default_work() -> dict[str, JobWork]:
    from voiceforge.jobs.finetune import run_finetune

    return {"finetune": run_finetune}


class JobRunner:
    def __init__(self, app: Flask, *, owner: str | None = None, work: dict[str, JobWork] | None = None,
                 poll_seconds: float = 1.0) -> None:
        self.app = app
        settings = get_runtime(app).settings
        self.concurrency = settings.job_concurrency
        self.lease_seconds = settings.job_lease_seconds
        self.max_attempts = settings.job_max_attempts
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}"
        self.work = work or default_work()
        self.poll_seconds = poll_seconds
        self.stopping = threading.Event()
        self._running: dict[str, threading.Thread] = {}
        self._schema_problem: str | None = None  # the last one logged, so that it is logged once
        self._database_down = False  # whether the last claim failed on a database error (logged once)

    def run_forever(self) -> None:
        """Claim and run jobs until stop() is called; then let the running ones give their jobs back."""
        log.info("job runner %s started (concurrency %d)", self.owner, self.concurrency)
        while not self.stopping.is_set():
            self._running = {job_id: thread for job_id, thread in self._running.items() if thread.is_alive()}
            claimed = None
            if len(self._running) < self.concurrency:
                claimed = self.claim_through_outages()
            if claimed is None:
                self.stopping.wait(self.poll_seconds)
        for thread in list(self._running.values()):
            thread.join()
        log.info("job runner %s stopped", self.owner)

    def stop(self) -> None:
        self.stopping.set()

    def claim_through_outages(self) -> str | None:
        """claim(); a database that is unreachable or locked for now is logged once and tried again at the
        next poll, while the running jobs go on (their leases outlast a short outage)."""
        try:
            claimed = self.claim()
        except SQLAlchemyError as error:
            if not self._database_down:
                log.warning("job runner %s cannot reach the database, will try again: %s", self.owner, error)
            self._database_down = True
            return None
        if self._database_down:
            log.info("job runner %s reaches the database again", self.owner)
        self._database_down = False
        return claimed

    def claim(self) -> str | None:
        """Claim one job and start it in a thread; the job id, or None when there is nothing to do."""
        with self.app.app_context():
            if problem := schema_problem():  # started before `flask db upgrade`: wait for the migration
                if problem != self._schema_problem:
                    log.warning("job runner %s waits for the database: %s", self.owner, problem)
                self._schema_problem = problem
                return None
            job = store.claim_next(self.owner, self.lease_seconds)
            if job is None:
                return None
            job_id = job.id
            if not self.admit(job):
                return job_id
        thread = threading.Thread(target=self.execute, args=(job_id,), name=f"job-{job_id[:8]}", daemon=True)
        self._running[job_id] = thread
        thread.start()
        return job_id

    def admit(self, job: Job) -> bool:
        """Whether a job just claimed may run; one whose runners died too often is failed instead."""
        if job.attempts <= self.max_attempts:
            return True
        store.finish(job, JobState.failed, error=f"Its runner stopped {job.attempts - 1} times "
                     f"(VOICEFORGE_JOB_MAX_ATTEMPTS={self.max_attempts}); last: {job.message}")
        log.warning("job %s failed: too many attempts", job.id)
        return False

    def execute(self, job_id: str) -> JobState | None:
        """Run one claimed job to its end: succeeded, failed, cancelled, or given back on shutdown.

        The state it left the job in (queued: given back); None when another runner took it over.
        """
        started = time.monotonic()
        state = self._execute(job_id)
        outcome = {None: "lost", JobState.queued: "released"}.get(state) or state.value
        metrics.record_job(outcome, time.monotonic() - started)
        return state

    def _execute(self, job_id: str) -> JobState | None:
        logs.reset_context(job_id=job_id)  # each job's thread: its JSON log lines carry the job id
        with self.app.app_context():
            runtime = get_runtime(self.app)
            job = store.get_job(job_id)
            log.info("job %s (%s, voice %s) started, attempt %d", job.id, job.kind, job.voice_id,
                     job.attempts)
            lease = Lease(self.app, job_id, self.owner, self.lease_seconds)

            def beat(force: bool = False, **fields: Any) -> None:
                if self.stopping.is_set():
                    raise ShuttingDown()
                if force or fields:
                    lease.renew(**fields)
                lease.check()

            try:
                with lease:
                    self.work[job.kind](runtime, job, beat)
            except JobCancelled:
                log.info("job %s cancelled", job_id)
                return self._finish(job_id, JobState.cancelled, message="Cancelled.")
            except LeaseLost:
                log.warning("job %s: lease lost to another runner; stopping", job_id)
                return None
            except ShuttingDown:
                store.release(job_id, self.owner, "Runner stopped; will resume from its checkpoint.")
                log.info("job %s given back for another runner to resume", job_id)
                return JobState.queued
            except Exception as error:  # any failure ends the job with its reason, never a stuck row
                log.exception("job %s failed", job_id)
                return self._finish(job_id, JobState.failed, error=str(error) or type(error).__name__,
                                    message="Failed.")
            else:
                log.info("job %s succeeded", job_id)
                return self._finish(job_id, JobState.succeeded)

    def _finish(self, job_id: str, state: JobState, **fields: Any) -> JobState | None:
        """Record how a job ended while this runner holds it; None when it does not any more.

        A runner that stalled past its lease (a stopped process, a machine swapping) must not end a job
        another runner has taken over since; and a deleted voice takes its jobs' rows with it.
        """
        if store.finish_owned(job_id, self.owner, state, **fields):
            return state
        if store.exists(job_id):
            log.warning("job %s ended %s here, but another runner had taken it over: its state is that "
                        "runner's to record", job_id, state.value)
        else:
            log.info("job %s ended %s, but its row is gone (its voice was deleted)", job_id, state.value)
        return None


class Lease:
    """A claimed job's lease, renewed every third of its length by a thread of its own while the work runs.

    The work reports progress when it has some, which can be minutes apart (cutting long recordings into
    clips, loading the model to export): renewing only then made a live runner look dead, and another
    runner took the job over while this one still worked on it. A renewal that fails on a database error
    is logged and tried again at the next: the lease covers an outage shorter than itself.
    """

    def __init__(self, app: Flask, job_id: str, owner: str, seconds: float) -> None:
        self.app, self.job_id, self.owner, self.seconds = app, job_id, owner, seconds
        self.ended: type[JobCancelled | LeaseLost] | None = None  # set once a renewal finds the job must stop
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._keep, name=f"lease-{job_id[:8]}", daemon=True)

    def __enter__(self) -> Lease:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _keep(self) -> None:
        logs.reset_context(job_id=self.job_id)
        with self.app.app_context():
            while not self._done.wait(self.seconds / 3):
                self.renew()

    def renew(self, **fields: Any) -> None:
        """Renew the lease now, recording `fields` (progress); note whether the job was cancelled or lost."""
        try:
            current = store.heartbeat(self.job_id, self.owner, self.seconds, **fields)
            # Not ours any more: another runner took it over, or its row went with its deleted voice.
            # Then nobody resumes it, so it stops as a cancelled job does, removing its files.
            gone = current is None and not store.exists(self.job_id)
        except SQLAlchemyError as error:
            db.session.rollback()
            log.warning("job %s: could not renew its lease, will try again: %s", self.job_id, error)
            return
        if current is None:
            self.ended = JobCancelled if gone else LeaseLost
        elif current.cancel_requested:
            self.ended = JobCancelled

    def check(self) -> None:
        """Raise JobCancelled or LeaseLost when a renewal found that the work must stop."""
        if self.ended is not None:
            raise self.ended()
