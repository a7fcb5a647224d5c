"""gunicorn settings: gthread workers, no preload (CUDA must not be initialised before fork)."""

import os
import re
import shutil
import sys
import tempfile

from gunicorn.config import ControlSocket

from voiceforge.logs import LOG_FORMATS, gunicorn_logconfig

bind = os.environ.get("VOICEFORGE_BIND", "0.0.0.0:8000")


def _control_socket_for(addresses: list[str]) -> str:
    """voiceforge-<addresses>.ctl in gunicorn's directory for control sockets."""
    name = re.sub(r"[^A-Za-z0-9.]+", "-", ",".join(addresses))
    return os.path.join(os.path.dirname(ControlSocket.default), f"voiceforge-{name}.ctl")


# gunicorn's control socket (`gunicornc`) is one path per user by default, which a second instance on
# the host would take over: one per bound address instead, in gunicorn's directory for it
# ($XDG_RUNTIME_DIR, else ~/.gunicorn). VOICEFORGE_CONTROL_SOCKET sets the path; empty turns it off.
# `-b` on the command line overrides `bind` after this file is read: on_starting names it again then.
_control = os.environ.get("VOICEFORGE_CONTROL_SOCKET")
if _control == "":
    control_socket_disable = True
else:
    control_socket = _control or _control_socket_for([bind])


def _count(name: str, default: int, minimum: int) -> int:
    """One of gunicorn's own numbers: nonsense stops the server with one line, as the app's settings do."""
    raw = os.environ.get(name, str(default))
    try:
        value = int(raw)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        sys.exit(f"voiceforge: {name}={raw} is not valid: an integer of at least {minimum}.")
    return value


# Each worker holds its own model (about 5.5 GB of RAM on CPU with the decoder's prepacked weights,
# 2 GB on a GPU): keep workers few.
workers = _count("VOICEFORGE_WORKERS", 1, minimum=1)
worker_class = "gthread"
# Every request being spoken or waiting for the model holds a thread (VOICEFORGE_INFERENCE_QUEUE_SIZE
# of them): unset, threads are that plus 8 (set in on_starting), so that while the queue is full health
# checks, listings and the queue's own 503 still find a thread at once.
threads = _count("VOICEFORGE_THREADS", 16, minimum=1)
_SPARE_THREADS = 8
preload_app = False
# Synthesis of long text on a CPU can take minutes; a worker is not hung while it speaks.
timeout = _count("VOICEFORGE_TIMEOUT", 600, minimum=0)
# SIGTERM (a deploy, `docker stop`): workers stop accepting, finish the requests in flight for up to
# this long, then exit; the job runner checkpoints and gives its job back (on_exit below).
graceful_timeout = _count("VOICEFORGE_GRACEFUL_TIMEOUT", 30, minimum=0)
# gunicorn's largest request line, so long (hostile) voice ids still reach the app's JSON 404.
limit_request_line = 8190
accesslog = None  # the app logs one line per request itself, without bodies
errorlog = "-"
# Any case works (`info`, `INFO`). A nonsense level or format is reported by create_app in on_starting
# below, as one line naming the variable; gunicorn's own logging must not crash on it first.
_level = os.environ.get("VOICEFORGE_LOG_LEVEL", "info").strip().lower()
loglevel = _level if _level in ("debug", "info", "warning", "error", "critical") else "info"
_format = os.environ.get("VOICEFORGE_LOG_FORMAT", "text").strip().lower()
# gunicorn's error log, our loggers and libraries' warnings: one format (text or JSON lines) on stderr.
logconfig_dict = gunicorn_logconfig(loglevel.upper(), _format if _format in LOG_FORMATS else "text")


def on_starting(server) -> None:
    """Check the settings and repair the registry once, in the master, before any worker starts.

    A bad setting stops the server here with one line naming it (exit status 1), instead of every
    worker failing to boot. Only the database and the voice files are touched: no model, no CUDA.
    """
    _fresh_metrics_dir(server)
    if not _control and server.cfg.control_socket == _control_socket_for([bind]):  # not set by hand
        server.cfg.set("control_socket", _control_socket_for(server.cfg.bind))
    from sqlalchemy.exc import OperationalError

    from voiceforge import create_app
    from voiceforge.auth import remember_keys_for_workers
    from voiceforge.config import ConfigError
    from voiceforge.db import NotMigrated, database_error
    from voiceforge.runtime import get_runtime, warn_if_no_model
    from voiceforge.services.voices import reconcile_at_startup

    try:
        app = create_app()
        remember_keys_for_workers(app.config)  # for the workers to fall back on (voiceforge/auth.py)
        reconcile_at_startup(app)
    except ConfigError as error:
        sys.exit(f"voiceforge: {error.message}")
    except NotMigrated as error:  # the schema is behind the code: `flask db upgrade` first
        sys.exit(f"voiceforge: {error.detail}")
    except OperationalError as error:  # unreachable, or refusing us
        sys.exit(f"voiceforge: {database_error(error)}")
    warn_if_no_model(get_runtime(app))
    server.voiceforge_config = app.config
    server.voiceforge_settings = settings = get_runtime(app).settings
    _size_threads(server, settings.inference_queue_size)
    runs_jobs = settings.job_runner and settings.job_backend == "db"
    if runs_jobs and settings.job_stop_seconds >= server.cfg.graceful_timeout:
        server.log.warning("VOICEFORGE_JOB_STOP_SECONDS=%g is not below VOICEFORGE_GRACEFUL_TIMEOUT=%d: on "
                           "SIGTERM the job runner is killed before a running job has saved its checkpoint, "
                           "and the steps since its last one are trained again", settings.job_stop_seconds,
                           server.cfg.graceful_timeout)


def _size_threads(server, queue_size: int) -> None:
    """Threads beyond the inference queue's places (see `threads` above); a warning when set too few."""
    if "VOICEFORGE_THREADS" not in os.environ and server.cfg.threads == threads:  # not set by hand or -t
        server.cfg.set("threads", queue_size + _SPARE_THREADS)
    elif server.cfg.threads <= queue_size:
        server.log.warning("%d threads are not more than VOICEFORGE_INFERENCE_QUEUE_SIZE=%d: while the queue "
                           "is full, every thread is speaking and health checks and the queue's 503 wait "
                           "for one", server.cfg.threads, queue_size)


def on_reload(server) -> None:
    """A reload (SIGHUP, `gunicornc … reload`) has read this file again: size the threads again, and read
    the API keys again for the new workers to fall back on (they read the key file themselves)."""
    _size_threads(server, server.voiceforge_settings.inference_queue_size)
    from voiceforge.auth import remember_keys_for_workers
    from voiceforge.config import ConfigError

    try:
        remember_keys_for_workers(server.voiceforge_config)
    except ConfigError as error:  # the workers log it too, and keep the keys read before
        server.log.error("voiceforge: %s; the keys read before stay in use", error.message.rstrip("."))


def when_ready(server) -> None:
    """Start the job runner process beside the workers (the database backend; Celery has its own)."""
    settings = server.voiceforge_settings
    if settings.job_runner and settings.job_backend == "db":
        from voiceforge.jobs.supervisor import RunnerSupervisor

        server.voiceforge_runner = RunnerSupervisor()
        server.voiceforge_runner.start()


def child_exit(server, worker) -> None:
    """A worker is gone: its live gauges (queue depth, model loaded) stop counting in /metrics."""
    from voiceforge.metrics import mark_process_dead

    mark_process_dead(worker.pid)


def on_exit(server) -> None:
    """Stop the job runner: a running job checkpoints and gives its lease back for the next start."""
    runner = getattr(server, "voiceforge_runner", None)
    if runner is not None:
        runner.stop(timeout=graceful_timeout)
    created = getattr(server, "voiceforge_metrics_dir", None)
    if created:
        shutil.rmtree(created, ignore_errors=True)


def _fresh_metrics_dir(server) -> None:
    """prometheus-client's multiprocess mode: every process writes its metrics to files in one directory.

    Set before prometheus_client is first imported (create_app imports it), and inherited by the workers
    and the job runner. An operator's PROMETHEUS_MULTIPROC_DIR is emptied (values of an earlier run must
    not count); otherwise a temporary directory is made and removed at exit.
    """
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        os.makedirs(directory, exist_ok=True)
        for name in os.listdir(directory):
            if name.endswith(".db"):
                os.remove(os.path.join(directory, name))
    else:
        directory = server.voiceforge_metrics_dir = tempfile.mkdtemp(prefix="voiceforge-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
