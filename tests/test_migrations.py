"""Alembic migrations: a full round trip on a fresh database, and no drift from the models."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask_migrate import downgrade, upgrade
from sqlalchemy import inspect, text

from tests.support.active_jobs import upgrade_over_two_active_jobs_of_a_voice
from tests.support.migrations import HEAD
from voiceforge import create_app
from voiceforge.db import db


def _app(tmp_path: Path):
    return create_app({"DATABASE_URL": f"sqlite:///{tmp_path / 'm.db'}", "DATA_DIR": str(tmp_path / "v")},
                      instance_path=str(tmp_path))


def test_upgrade_downgrade_upgrade_on_a_fresh_database(tmp_path: Path) -> None:
    app = _app(tmp_path)
    with app.app_context():
        upgrade()
        assert "voices" in inspect(db.engine).get_table_names()
        downgrade(revision="base")
        assert "voices" not in inspect(db.engine).get_table_names()
        upgrade()
        assert "voices" in inspect(db.engine).get_table_names()


def test_models_and_migrations_agree(tmp_path: Path) -> None:
    app = _app(tmp_path)
    with app.app_context():
        upgrade()
        with db.engine.connect() as connection:
            diff = compare_metadata(MigrationContext.configure(connection, opts={"compare_type": True}),
                                    db.metadata)
        assert diff == []


def test_flask_db_check_reports_no_drift(tmp_path: Path) -> None:
    app = _app(tmp_path)
    runner = app.test_cli_runner()
    assert runner.invoke(args=["db", "upgrade"]).exit_code == 0
    result = runner.invoke(args=["db", "check"])
    assert result.exit_code == 0, result.output


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(tmp_path: Path) -> None:
    app = _app(tmp_path)
    with app.app_context(), db.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000


def _count(table: str) -> int:
    return db.session.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()


def _add_job(voice_id: str, *, foreign_keys: bool = True) -> None:
    with db.engine.connect() as connection:
        if not foreign_keys:
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
        connection.execute(text(
            "INSERT INTO jobs (id, voice_id, kind, state, params, progress, epoch, epochs, step, steps, "
            "attempts, cancel_requested, created_at, updated_at) VALUES ('j1', :voice, 'finetune', "
            "'succeeded', '{}', 1.0, 10, 10, 5, 5, 1, 0, '2026-01-01 00:00:00', '2026-01-01 00:00:00')"),
            {"voice": voice_id})
        connection.commit()
        connection.exec_driver_sql("PRAGMA foreign_keys=ON")


def test_a_downgrade_and_upgrade_that_rebuild_voices_keep_the_jobs(tmp_path: Path) -> None:
    """SQLite batch mode rebuilds `voices` (DROP TABLE); with foreign keys on, that cascaded to `jobs`."""
    app = _app(tmp_path)
    with app.app_context():
        upgrade()
        db.session.execute(text(
            "INSERT INTO voices (id, name, language, kind, status, created_at, updated_at, version) "
            "VALUES ('v-1', 'V', 'en', 'cloned', 'ready', '2026-01-01 00:00:00', '2026-01-01 00:00:00', 1)"))
        db.session.commit()
        _add_job("v-1")
        downgrade(revision="0002")
        assert (_count("voices"), _count("jobs")) == (1, 1)
        upgrade()
        assert (_count("voices"), _count("jobs")) == (1, 1)
        # The app's own connections (the pool the migration used) still enforce foreign keys.
        assert db.session.execute(text("PRAGMA foreign_keys")).scalar_one() == 1


def test_a_migration_that_would_leave_dangling_rows_is_refused_and_rolled_back(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    app = _app(tmp_path)
    with app.app_context():
        upgrade()
        _add_job("v-gone", foreign_keys=False)  # a job whose voice is gone, behind the foreign key's back
        with pytest.raises(SystemExit):  # Flask-Migrate's exit after logging the error
            downgrade(revision="0002")
        assert "1 row(s) whose foreign key points nowhere (jobs row 1 -> voices)" in caplog.text
        with db.engine.connect() as connection:
            assert MigrationContext.configure(connection).get_current_revision() == HEAD
        assert "version" in {column["name"] for column in inspect(db.engine).get_columns("voices")}


def test_upgrading_over_two_active_jobs_of_a_voice_keeps_one_and_refuses_another(tmp_path: Path) -> None:
    with _app(tmp_path).app_context():
        upgrade_over_two_active_jobs_of_a_voice()
