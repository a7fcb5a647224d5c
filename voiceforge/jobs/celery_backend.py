"""The Celery backend (VOICEFORGE_JOB_BACKEND=celery): Redis hands each job to a `celery worker` process."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, Task, shared_task
from celery.signals import setup_logging, worker_ready, worker_shutting_down
from flask import Flask, current_app
from kombu.exceptions import OperationalError
from sqlalchemy.exc import SQLAlchemyError

from voiceforge.config import ConfigError
from voiceforge.db import db, schema_problem
from voiceforge.errors import ServiceUnavailable
from voiceforge.jobs import store
from voiceforge.jobs.orphans import OrphanSweeper
from voiceforge.jobs.runner import JobRunner
from voiceforge.models import Job, JobState
from voiceforge.runtime import get_runtime

log = logging.getLogger(__name__)

TASK_NAME = "voiceforge.finetune"
QUEUE = "voiceforge"

_runner: JobRunner | None = None  # this worker's runner, built by its first task
_log_settings: tuple[str, str] | None = None  # (level, format) of a worker's app, set by make_celery
_worker_app: Flask | None = None  # a worker's Flask app, set by make_celery
_sweeper: OrphanSweeper | None = None  # a worker's sweep for jobs whose worker died


def celery_init_app(app: Flask) -> Celery:
    """Flask's pattern: a Celery app whose tasks run in `app`'s context, kept in app.extensions["celery"]."""
    settings = get_runtime(app).settings

    class FlaskTask(Task):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            with app.app_context():
                return self.run(*args, **kwargs)

    celery_app = Celery(app.name, task_cls=FlaskTask)
    celery_app.conf.update(
        broker_url=settings.celery_broker_url,
        broker_connection_retry_on_startup=True,
        # Acknowledged when it ends: the task of a worker that dies mid-job stays unacknowledged in
        # Redis, which delivers it again once the visibility timeout has passed.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        broker_transport_options={"visibility_timeout": settings.celery_visibility_timeout},
        worker_prefetch_multiplier=1,  # a worker reserves no job it cannot start now
        # Tasks run in the worker's own process: training has a process of its own already, and
        # billiard's daemonic prefork processes cannot start one (multiprocessing refuses).
        worker_pool="solo",
        task_default_queue=QUEUE,
        task_ignore_result=True,  # the jobs table holds every outcome
    )
    celery_app.set_default()
    app.extensions["celery"] = celery_app
    return celery_app


def send_job(job_id: str, *, fail_unsent: bool = True) -> None:
    """Send the task of a job whose row is committed; 503 (and the job failed, retryable) without a broker.

    `fail_unsent=False` leaves the job queued: a dead worker's job, whose first task Redis still holds.
    """
    try:
        current_app.extensions["celery"].send_task(TASK_NAME, args=(job_id,))
    except OperationalError as error:
        log.error("job %s: the Celery broker did not take its task: %s", job_id, error)
        job = db.session.get(Job, job_id)
        if fail_unsent and job is not None and job.state == JobState.queued:
            store.finish(job, JobState.failed, error=f"The job could not be queued: {error}",
                         message="Failed.")
        raise ServiceUnavailable("The job queue (VOICEFORGE_CELERY_BROKER_URL) is unreachable; try again "
                                 "later.") from error


@shared_task(name=TASK_NAME, bind=True, max_retries=None)  # retries: see below, as long as needed
def finetune(task: Task, job_id: str) -> None:
    """Claim the job under the heartbeat lease and run it here, exactly as a database runner does."""
    global _runner
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    if _runner is None or _runner.app is not app or _runner.stopping.is_set():
        _runner = JobRunner(app)  # one per worker; a new one if a stop did not end the worker
    try:
        _claim_and_run(task, _runner, job_id)
    except SQLAlchemyError as error:
        # The database cannot be reached for now. Failing the task would acknowledge it and leave its job
        # queued, or running under a lease nobody renews, for ever: look again once that lease ran out.
        db.session.rollback()
        log.warning("job %s: the database failed (%s); looking again in %.0f s", job_id, error,
                    _runner.lease_seconds)
        raise task.retry(countdown=_runner.lease_seconds) from error


def _claim_and_run(task: Task, runner: JobRunner, job_id: str) -> None:
    """The task's work: claim the job and run it, or look again later while it cannot be claimed yet."""
    if problem := schema_problem():
        # A worker upgraded before `flask db upgrade` ran: the job waits in the queue for the migration
        # (looking again every lease period) instead of failing on a missing column.
        log.warning("job %s waits for the database: %s", job_id, problem)
        raise task.retry(countdown=runner.lease_seconds)
    job = store.claim(job_id, runner.owner, runner.lease_seconds)
    if job is None:
        current = db.session.get(Job, job_id)
        if current is not None and current.state == JobState.running:
            # Its runner holds a live lease: the task came back while the job still runs (a run longer
            # than the visibility timeout) or just after its worker died. Look again once that lease
            # would have run out: a live runner renews it, a dead one's expires and this task claims it.
            raise task.retry(countdown=runner.lease_seconds)
        log.info("job %s is %s; nothing to do", job_id, current.state.value if current else "gone")
        return
    if runner.admit(job) and runner.execute(job_id) == JobState.queued:
        send_job(job_id)  # given back on shutdown: another worker resumes it from its checkpoint


@worker_ready.connect
def _start_sweeping(**_kwargs: Any) -> None:
    """Each worker sends again, within a lease period, the jobs of workers that died (see OrphanSweeper)."""
    global _sweeper
    if _worker_app is not None and _sweeper is None:
        lease = get_runtime(_worker_app).settings.job_lease_seconds
        # A task the broker does not take leaves the job queued: Redis delivers its first task again later.
        _sweeper = OrphanSweeper(_worker_app, lease, lambda job_id: send_job(job_id, fail_unsent=False))
        _sweeper.start()


@worker_shutting_down.connect
def _stop_running_job(**_kwargs: Any) -> None:
    """Warm shutdown (SIGTERM, Ctrl-C): the running job checkpoints and is queued again, as a runner's is."""
    if _sweeper is not None:
        _sweeper.stop()
    if _runner is not None:
        _runner.stop()


@setup_logging.connect
def _log_as_the_service_does(loglevel: Any = None, **_kwargs: Any) -> None:
    """A worker logs in VOICEFORGE_LOG_FORMAT (text, or JSON lines) through one handler on stderr, as
    gunicorn does, instead of Celery's own format; Celery's lines (task received, succeeded) keep the
    worker's --loglevel. A receiver here is what tells Celery to leave logging alone."""
    from voiceforge.logs import configure_logging

    level, log_format = _log_settings or ("INFO", "text")
    configure_logging(level, log_format, install_handler=True)
    logging.getLogger("celery").setLevel(loglevel or level)


def make_celery() -> Celery:
    """The Celery app of a worker: create_app() from the VOICEFORGE_* environment, and its Celery."""
    from voiceforge import create_app

    global _log_settings, _worker_app
    app = _worker_app = create_app()
    if "celery" not in app.extensions:
        raise ConfigError("JOB_BACKEND", app.config.get("JOB_BACKEND"), "celery, to run a Celery worker.")
    settings = get_runtime(app).settings
    _log_settings = (settings.log_level, settings.log_format)
    return app.extensions["celery"]


def __getattr__(name: str) -> Any:
    """The module's `celery`, which `celery -A voiceforge.jobs.celery_backend worker` looks up.

    Built on first use only: the web app imports this module to send tasks, with an app of its own.
    """
    if name == "celery":
        try:
            celery = globals()["celery"] = make_celery()
        except ConfigError as error:  # one line and exit status 1, as gunicorn and `flask` refuse it
            raise SystemExit(f"voiceforge: {error.message}") from None
        return celery
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
