"""Liveness and readiness probes."""

from __future__ import annotations

from pathlib import Path

from flask import current_app
from sqlalchemy import text

from voiceforge.api import ApiBlueprint
from voiceforge.db import NOT_MIGRATED, db, schema_problem
from voiceforge.runtime import Runtime, get_runtime
from voiceforge.schemas import HealthSchema, ReadySchema
from voiceforge.services import voices

blp = ApiBlueprint("health", __name__, description="Health probes.")


@blp.route("/healthz")
@blp.doc(security=[])  # open even when the API requires keys
@blp.response(200, HealthSchema)
def healthz() -> dict:
    """The process is up."""
    return {"status": "ok"}


@blp.route("/readyz")
@blp.doc(security=[])
@blp.response(200, ReadySchema)
@blp.alt_response(503, schema=ReadySchema,
                  description="The database is unreachable or not migrated, the voices' data directory "
                              "is missing, or no model can be provided (see model.problem).")
def readyz() -> tuple[dict, int]:
    """Ready when the database answers, the voices' files are there and the model is loaded or loadable;
    never loads or downloads it."""
    database = database_state()
    runtime = get_runtime()
    model = runtime.engine.describe()
    storage = storage_state(runtime) if database == "ok" else "unknown"
    ready = database == "ok" and storage == "ok" and model["loadable"]
    body = {"status": "ready" if ready else "unavailable", "database": database, "storage": storage,
            "model": model, "jobs": jobs_state(runtime)}
    return body, 200 if ready else 503


def storage_state(runtime: Runtime) -> str:
    """`ok`, or `missing`: voices are registered but their data directory is not there (data_dir_missing)."""
    data_dir = runtime.settings.data_dir
    if not voices.data_dir_missing(data_dir):
        return "ok"
    current_app.logger.error("readiness: the data directory %s does not exist, and voices are registered: is "
                             "its volume mounted, and VOICEFORGE_DATA_DIR right?", data_dir)
    return "missing"


def database_state() -> str:
    """`ok`, `unreachable`, `not migrated: …` (its schema is behind this code's migrations), or `missing`:
    a SQLite file deleted while the service runs, which still answers from its open file, but whose
    writes are lost at the next start."""
    path = db.engine.url.database if db.engine.dialect.name == "sqlite" else None
    if path and Path(path).is_absolute() and not Path(path).exists():
        current_app.logger.error("readiness: the database file %s is gone; writes since are lost at the next "
                                 "start: restore it (or restart on a new one) now", path)
        return "missing"
    try:
        db.session.execute(text("SELECT 1"))
        problem = schema_problem()  # a query only until the schema has been seen at head
    except Exception as error:  # noqa: BLE001 - any failure means "not ready"
        current_app.logger.warning("readiness: database unreachable: %s", error)
        return "unreachable"
    if problem:
        current_app.logger.warning("readiness: %s", problem)
        return NOT_MIGRATED
    return "ok"


def jobs_state(runtime: Runtime) -> dict:
    """Whether fine-tuning jobs can run here; it informs, and does not decide readiness for speech."""
    from voiceforge.jobs.finetune import fine_tuning_problem

    problem = fine_tuning_problem(runtime)
    state = {"backend": runtime.settings.job_backend, "canRun": problem is None}
    return state if problem is None else {**state, "problem": problem}
