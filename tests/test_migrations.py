"""Alembic migrations: a full round trip on a fresh database, and no drift from the models."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask_migrate import downgrade, upgrade
from sqlalchemy import inspect

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
