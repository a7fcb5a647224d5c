"""The same registry on PostgreSQL: migrations round trip, no drift, and the voices API.

Runs when VOICEFORGE_TEST_POSTGRES_URL points at a server where it may create databases
(.ci/run starts one with scripts/start-postgres.sh); skipped otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask_migrate import downgrade, upgrade
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from tests.support.active_jobs import upgrade_over_two_active_jobs_of_a_voice
from tests.support.postgres import fresh_database
from tests.support.registry import add_stored_voice
from voiceforge import create_app
from voiceforge.db import db

SERVER_URL = os.environ.get("VOICEFORGE_TEST_POSTGRES_URL")
pytestmark = pytest.mark.skipif(not SERVER_URL, reason="VOICEFORGE_TEST_POSTGRES_URL is not set")


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty database on the test server, dropped afterwards."""
    with fresh_database(SERVER_URL, "voiceforge_test") as url:
        yield url


def test_migrations_round_trip_and_match_the_models_on_postgres(postgres_url: str, tmp_path: Path) -> None:
    app = create_app({"DATABASE_URL": postgres_url, "DATA_DIR": str(tmp_path)}, instance_path=str(tmp_path))
    with app.app_context():
        upgrade()
        downgrade(revision="base")
        assert "voices" not in inspect(db.engine).get_table_names()
        upgrade()
        with db.engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, db.metadata) == []
        db.engine.dispose()


def test_upgrading_over_two_active_jobs_of_a_voice_keeps_one_on_postgres(postgres_url: str,
                                                                        tmp_path: Path) -> None:
    app = create_app({"DATABASE_URL": postgres_url, "DATA_DIR": str(tmp_path)}, instance_path=str(tmp_path))
    with app.app_context():
        upgrade_over_two_active_jobs_of_a_voice()
        db.engine.dispose()


def test_voice_registry_over_http_on_postgres(postgres_url: str, tmp_path: Path,
                                             checkpoint_dir: Path) -> None:
    in_kolkata = postgres_url + "?options=-c%20timezone%3DAsia%2FKolkata"  # a session zone not UTC
    app = create_app({"DATABASE_URL": in_kolkata, "DATA_DIR": str(tmp_path / "voices"),
                      "MODEL_DIR": str(checkpoint_dir)}, instance_path=str(tmp_path))
    with app.app_context():
        upgrade()
        voice = add_stored_voice(tmp_path / "voices", "Postgres Voice")
    client = app.test_client()
    assert client.get("/readyz").json["database"] == "ok"
    shown = client.get(f"/api/voices/{voice.id}").json
    assert shown["name"] == "Postgres Voice"
    assert shown["createdAt"].endswith("+00:00"), shown  # in UTC, whatever the session's time zone
    assert client.patch(f"/api/voices/{voice.id}", json={"name": "Renamed"}).json["name"] == "Renamed"
    assert client.delete(f"/api/voices/{voice.id}").status_code == 204
    assert client.get(f"/api/voices/{voice.id}").status_code == 404
    with app.app_context():
        db.engine.dispose()


def test_a_database_restart_costs_no_request(postgres_url: str, tmp_path: Path) -> None:
    """PostgreSQL closing every connection (a restart, a failover) is noticed before a request uses one."""
    app = create_app({"DATABASE_URL": postgres_url, "DATA_DIR": str(tmp_path / "voices")},
                     instance_path=str(tmp_path))
    with app.app_context():
        upgrade()
    client = app.test_client()
    assert client.get("/api/voices").status_code == 200  # the pool now holds a connection
    admin = create_engine(SERVER_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        ended = connection.execute(text(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = :name"),
            {"name": make_url(postgres_url).database}).scalar()
    admin.dispose()
    assert ended >= 1
    assert client.get("/api/voices").status_code == 200
    with app.app_context():
        db.engine.dispose()
