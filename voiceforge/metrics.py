"""Prometheus metrics: what each process records, and GET /metrics, summed over every gunicorn process.

Under gunicorn, gunicorn.conf.py sets PROMETHEUS_MULTIPROC_DIR before this module is first imported,
so every worker and the job runner write their values to files there and whichever worker answers
/metrics adds them all up (prometheus-client's multiprocess mode). Without it (`flask run`, tests, a
CLI command) the process's own registry is served. With API keys configured /metrics needs a key,
like /api; without keys it is open, like the rest of the service.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
from collections.abc import Generator, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import Any

import click
from flask import Blueprint, Flask, Response, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
UNMATCHED_ROUTE = "<unmatched>"


def _make_multiproc_dir() -> None:
    """prometheus-client opens a file there for each value as the metrics below are defined: a directory
    named but not made yet (gunicorn's master makes its own; a `flask` command sharing its environment
    file does not) would be a traceback at start."""
    directory = os.environ.get(MULTIPROC_ENV)
    if not directory:
        return
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as error:
        raise click.ClickException(f"{MULTIPROC_ENV}={directory} is not valid: a directory this process "
                                   f"can create and write ({error.strerror}).") from None


_make_multiproc_dir()

# -- HTTP ---------------------------------------------------------------------------------------
# Labelled by the URL rule (/api/voices/<voice_id>), never the raw path: the label set stays bounded.
REQUESTS = Counter("voiceforge_http_requests", "HTTP requests answered, by route and status.",
                   ["method", "route", "status"])
REQUEST_SECONDS = Histogram(
    "voiceforge_http_request_duration_seconds",
    "Time to the response head (for a stream: until its audio starts), by route.", ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600))

# -- synthesis ----------------------------------------------------------------------------------
# Real-time factor = rate(voiceforge_synthesis_seconds_sum) / rate(voiceforge_synthesis_audio_seconds_total).
SYNTHESIS_SECONDS = Histogram(
    "voiceforge_synthesis_seconds", "Time the engine took per speech request (all its sentences).",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300))
AUDIO_SECONDS = Counter("voiceforge_synthesis_audio_seconds", "Seconds of speech produced (pauses excluded).")
TOKENS = Counter("voiceforge_synthesis_tokens", "XTTS audio tokens decoded (where the engine reports them).")
TOKENS_PER_SECOND = Histogram(
    "voiceforge_synthesis_tokens_per_second", "Audio tokens decoded per second, per speech request.",
    buckets=(1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 1000))
QUEUE_DEPTH = Gauge("voiceforge_inference_queue_depth",
                    "Speech requests using or waiting for the model (all processes).",
                    multiprocess_mode="livesum")
REFUSED = Counter("voiceforge_inference_refused",
                  "Speech requests refused with 503 because the queue was full.")

# -- model --------------------------------------------------------------------------------------
MODEL_LOADED = Gauge("voiceforge_model_loaded", "Processes holding a loaded XTTS-v2 model.",
                     multiprocess_mode="livesum")
MODEL_LOAD_SECONDS = Histogram("voiceforge_model_load_seconds", "Time to load the XTTS-v2 model.",
                               buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600))
MODEL_LOAD_FAILURES = Counter("voiceforge_model_load_failures", "Model loads that failed (answered 503).")
GPU_ALLOCATED = Gauge("voiceforge_gpu_memory_allocated_bytes", "CUDA memory held by tensors, per process.",
                      ["device"], multiprocess_mode="liveall")
GPU_RESERVED = Gauge("voiceforge_gpu_memory_reserved_bytes", "CUDA memory reserved by the caching allocator.",
                     ["device"], multiprocess_mode="liveall")

# -- caches -------------------------------------------------------------------------------------
CACHE_LOOKUPS = Counter("voiceforge_cache_lookups", "Per-process cache lookups: latents, fine-tuned weights.",
                        ["cache", "result"])

# -- jobs ---------------------------------------------------------------------------------------
JOB_SECONDS = Histogram(
    "voiceforge_job_duration_seconds",
    "One run of a job by a runner, by how it ended (released: given back on shutdown; lost: lease lost).",
    ["outcome"], buckets=(1, 10, 30, 60, 300, 600, 1800, 3600, 7200, 14400, 28800, 86400))
JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")


# -- recording ----------------------------------------------------------------------------------
def record_request(method: str, route: str, status: int, seconds: float) -> None:
    REQUESTS.labels(method, route, str(status)).inc()
    REQUEST_SECONDS.labels(method, route).observe(seconds)


def record_synthesis(seconds: float, audio_seconds: float, tokens: int | None = None) -> None:
    """One request's speech synthesised: engine time, speech produced and, when known, audio tokens."""
    SYNTHESIS_SECONDS.observe(seconds)
    AUDIO_SECONDS.inc(max(0.0, audio_seconds))
    if tokens:
        TOKENS.inc(tokens)
        if seconds > 0:
            TOKENS_PER_SECOND.observe(tokens / seconds)
    update_gpu_memory()


def measured_stream(pieces: Generator[Any, None, tuple[float, int]]) -> Generator[Any, None, None]:
    """Yield what `pieces` yields, then record it with the (speech seconds, audio tokens) it returns.

    Only the time spent inside `pieces` counts, not the time the consumer (a slow client) holds each
    piece, so a slow network does not look like slow synthesis. A consumer that stops early records
    nothing and closes `pieces` (which frees what it holds).
    """
    waited = 0.0
    try:
        while True:
            started = time.perf_counter()
            try:
                piece = next(pieces)
            except StopIteration as end:
                record_synthesis(waited + time.perf_counter() - started, *end.value)
                return
            waited += time.perf_counter() - started
            yield piece
    finally:
        pieces.close()


@contextmanager
def queue_place(reservation: AbstractContextManager[Any]) -> Iterator[None]:
    """Hold the engine's queue place `reservation`, counting the depth, and refusals (503 busy)."""
    from voiceforge.errors import Busy

    with ExitStack() as stack:
        try:
            stack.enter_context(reservation)
        except Busy:
            REFUSED.inc()
            raise
        QUEUE_DEPTH.inc()
        stack.callback(QUEUE_DEPTH.dec)
        yield


def record_cache(cache: str, hit: bool) -> None:
    CACHE_LOOKUPS.labels(cache, "hit" if hit else "miss").inc()


def record_job(outcome: str, seconds: float) -> None:
    JOB_SECONDS.labels(outcome).observe(seconds)
    update_gpu_memory()


def record_model_load(seconds: float) -> None:
    MODEL_LOAD_SECONDS.observe(seconds)
    MODEL_LOADED.set(1)
    update_gpu_memory()


def update_gpu_memory() -> None:
    """This process's CUDA memory, where CUDA is in use; never imports torch or initialises CUDA itself."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return
    for index in range(torch.cuda.device_count()):
        GPU_ALLOCATED.labels(f"cuda:{index}").set(torch.cuda.memory_allocated(index))
        GPU_RESERVED.labels(f"cuda:{index}").set(torch.cuda.memory_reserved(index))


def instrument_engine(engine: Any) -> None:
    """Time the engine's one model load (model load time and state) without changing the engine.

    The engine offers no load hook, so its bound `load` is wrapped once per engine; `model` and every
    caller go through it. An engine that calls record_model_load() itself can drop this.
    """
    if getattr(engine, "_voiceforge_metrics", False):
        return
    load = engine.load
    lock = threading.Lock()

    def timed_load() -> None:
        if engine.loaded:
            return
        with lock:  # a second caller waits for the first load instead of timing it again
            if engine.loaded:
                return
            from voiceforge.logs import adopt_library_loggers

            adopt_library_loggers()  # the load imports transformers, whose own log lines are not JSON
            started = time.perf_counter()
            try:
                load()
            except Exception:
                MODEL_LOAD_FAILURES.inc()
                raise
            record_model_load(time.perf_counter() - started)

    engine.load = timed_load
    engine._voiceforge_metrics = True
    if engine.loaded:
        MODEL_LOADED.set(1)


def mark_process_dead(pid: int) -> None:
    """Forget a dead process's live gauges (gunicorn's child_exit, the runner supervisor)."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


# Any process that writes to a shared directory forgets its own live gauges as it exits: a `flask`
# command run beside the service (model warmup) would otherwise leave "model loaded" counting after it
# ended. os.getpid() is read at exit, so a forked child (a gunicorn worker) forgets its own, not its parent's.
atexit.register(lambda: mark_process_dead(os.getpid()))


# -- exposition ---------------------------------------------------------------------------------
class JobStateCollector:
    """Jobs by state, read from the jobs table at scrape time: right whichever process runs them."""

    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("voiceforge_jobs", "Fine-tuning jobs by state.", labels=["state"])
        for state in JOB_STATES:
            family.add_metric([state], self.counts.get(state, 0))
        yield family


def job_counts() -> dict[str, int] | None:
    """{state: count} from the database; None when it cannot be read (the scrape goes on without it)."""
    from sqlalchemy import func, select
    from sqlalchemy.exc import SQLAlchemyError

    from voiceforge.db import db
    from voiceforge.models import Job

    try:
        rows = db.session.execute(select(Job.state, func.count()).group_by(Job.state)).all()
    except SQLAlchemyError as error:
        db.session.rollback()
        log.warning("metrics: cannot count jobs: %s", error)
        return None
    return {str(getattr(state, "value", state)): count for state, count in rows}


def render() -> bytes:
    """The exposition text: every process's metrics (multiprocess mode) or this one's, plus jobs by state."""
    update_gpu_memory()
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)
    else:
        registry = REGISTRY
    output = generate_latest(registry)
    counts = job_counts()
    if counts is not None:
        jobs = CollectorRegistry(auto_describe=False)
        jobs.register(JobStateCollector(counts))
        output += generate_latest(jobs)
    return output


def register_metrics(app: Flask) -> None:
    """Time the model load and serve GET /metrics (a key needed when keys are set).

    Requests are counted by the access-log hook in voiceforge/http.py, which times every request.
    """
    from voiceforge.auth import load_api_keys, require_key
    from voiceforge.runtime import get_runtime

    instrument_engine(get_runtime(app).engine)
    keys = load_api_keys(app.config)
    blueprint = Blueprint("metrics", __name__)

    @blueprint.get("/metrics")
    def metrics() -> Response:
        if keys:
            require_key(request, keys)
        return Response(render(), content_type=CONTENT_TYPE_LATEST)

    app.register_blueprint(blueprint)
