"""The SQLAlchemy handle, Alembic (Flask-Migrate) wiring and SQLite connection settings."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask import Flask, current_app
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import MetaData, event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase

from voiceforge.errors import ServiceUnavailable

MIGRATIONS_DIR = str(Path(__file__).resolve().parent.parent / "migrations")

# Stable constraint names so Alembic migrations behave the same on SQLite and PostgreSQL.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base of every model."""

    metadata = MetaData(naming_convention=NAMING)


# Rows stay readable after commit: responses and CLI output are dumped after the write.
db = SQLAlchemy(model_class=Base, session_options={"expire_on_commit": False})
migrate = Migrate(directory=MIGRATIONS_DIR, render_as_batch=True, compare_type=True)


def register_db(app: Flask) -> None:
    """Bind the database and migrations to the app; make SQLite concurrent-friendly."""
    url = app.config["SQLALCHEMY_DATABASE_URI"]
    if url.startswith("sqlite"):
        Path(app.instance_path).mkdir(parents=True, exist_ok=True)
        # Several gunicorn threads share a connection pool; SQLite must not reject that.
        app.config.setdefault("SQLALCHEMY_ENGINE_OPTIONS", {"connect_args": {"check_same_thread": False}})
    else:
        # A server restart (PostgreSQL's) closes every pooled connection: test each before use, so the
        # first request after it reconnects instead of failing.
        app.config.setdefault("SQLALCHEMY_ENGINE_OPTIONS", {"pool_pre_ping": True})
    db.init_app(app)
    migrate.init_app(app, db)
    # Blueprint hooks run after the app's own (the key check), so a caller without a key learns nothing.
    for blueprint in REGISTRY_BLUEPRINTS:
        app.before_request_funcs.setdefault(blueprint, []).append(require_schema)
    with app.app_context():
        engine = db.engine
        if engine.dialect.name == "sqlite":
            _configure_sqlite(engine, app.config["DB_BUSY_TIMEOUT_MS"])


def _configure_sqlite(engine: Engine, busy_timeout_ms: int) -> None:
    """WAL lets readers run beside one writer; busy_timeout makes writers wait instead of failing."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()


# -- the schema against this code's migrations ---------------------------------------------------------
UPGRADE = "run `flask --app voiceforge db upgrade`"
NOT_MIGRATED = "not migrated: run flask db upgrade"  # /readyz's `database`
# The blueprints whose requests read or write the registry (voices, jobs).
REGISTRY_BLUEPRINTS = ("voices", "training", "tts", "jobs", "openai")
_SCHEMA_AT_HEAD = "voiceforge_schema_at_head"


class NotMigrated(ServiceUnavailable):
    """The database's schema is behind this code's migrations: retrying cannot help, migrating does."""

    code = "database_not_migrated"


@cache
def _revisions() -> tuple[frozenset[str], frozenset[str]]:
    """This code's migration heads and every revision it knows, read once from migrations/versions."""
    script = ScriptDirectory(MIGRATIONS_DIR)
    return frozenset(script.get_heads()), frozenset(r.revision for r in script.walk_revisions())


def schema_problem() -> str | None:
    """Why this code cannot use the database's schema yet, with the fix; None when it can.

    The database's Alembic revision is compared with the head of migrations/. Once a process has seen the
    head it trusts it (the schema does not go back under a running service), so the check before each
    registry request costs nothing after the first success; until then it is one small query. A revision
    this code does not know was made by newer code (another instance of a rolling deploy): not refused.
    """
    if current_app.extensions.get(_SCHEMA_AT_HEAD):
        return None
    with db.engine.connect() as connection:
        current = set(MigrationContext.configure(connection).get_current_heads())
    heads, known = _revisions()
    if not current:
        return f"The database has no VoiceForge tables yet: {UPGRADE} first."
    if current != heads and current <= known:
        return (f"The database schema is at migration {', '.join(sorted(current))} and this code needs "
                f"{', '.join(sorted(heads))}: {UPGRADE}.")
    current_app.extensions[_SCHEMA_AT_HEAD] = True
    return None


def require_schema() -> None:
    """Refuse (503 with the fix) while the schema is behind; a request hook of the registry's blueprints."""
    problem = schema_problem()
    if problem:
        raise NotMigrated(problem)


def database_error(error: DBAPIError) -> str:
    """One line for an error of the database itself (unreachable, refused, full): for the CLI and gunicorn."""
    return f"The database is unavailable: {' '.join(str(error.orig).split())}"
