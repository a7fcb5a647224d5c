"""Shared fixtures: an app on a fresh migrated database, its clients, and a tiny real XTTS-v2 checkpoint."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner

from tests.support.checkpoint import build_checkpoint
from tests.support.stepping import stepping_ahead
from voiceforge import create_app
from voiceforge.config import DEFAULTS
from voiceforge.services.engine import Engine, EngineSettings
from voiceforge.settings import Settings


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests see only the configuration they set, never the developer's shell."""
    for name in list(os.environ):
        if name.startswith("VOICEFORGE_") or name == "COQUI_TOS_AGREED":
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight XTTS-v2 checkpoint in the release layout, built once per test session."""
    return build_checkpoint(tmp_path_factory.mktemp("xtts") / "xtts_v2")


# Settings that shape the engine: an app that overrides one gets an engine of its own.
ENGINE_SETTINGS = {"MODEL_DIR", "MODEL_NAME", "DEVICE", "INFERENCE_QUEUE_SIZE", "FINETUNED_CACHE",
                   "MAX_BATCH", "DECODER_DTYPE", "VOCODER_DTYPE", "CPU_MATMUL", "CUDA_GRAPHS", "CUDA_STEP"}


@pytest.fixture(scope="session")
def shared_engine(checkpoint_dir: Path) -> Engine:
    """One engine for every app built with the default test settings, so the model loads once a session."""
    settings = Settings.from_config({**DEFAULTS, "DATA_DIR": "unused", "MODEL_DIR": str(checkpoint_dir)})
    return Engine(EngineSettings.from_settings(settings))


@pytest.fixture(params=[0, 1], ids=["each-step-read", "a-step-ahead"])
def lookahead(request: pytest.FixtureRequest, shared_engine: Engine) -> Iterator[int]:
    """The shared engine's decoder read back step by step, then one step ahead (tests/support/stepping.py)."""
    with stepping_ahead(shared_engine.decoder(), request.param):
        yield request.param


@pytest.fixture
def make_app(tmp_path: Path, checkpoint_dir: Path, shared_engine: Engine) -> Callable[..., Flask]:
    """Build an app on a fresh, migrated SQLite database in tmp_path; keyword args override config."""

    def build(**overrides: object) -> Flask:
        config = {
            "TESTING": True,
            "DATABASE_URL": f"sqlite:///{tmp_path / 'test.db'}",
            "DATA_DIR": str(tmp_path / "voices"),
            "MODEL_DIR": str(checkpoint_dir),
            **overrides,
        }
        app = create_app(config, engine=None if ENGINE_SETTINGS & overrides.keys() else shared_engine)
        with app.app_context():
            from flask_migrate import upgrade

            upgrade()
        return app

    return build


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Iterator[Flask]:
    yield make_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(app: Flask) -> FlaskCliRunner:
    return app.test_cli_runner()


@pytest.fixture
def data_dir(app: Flask) -> Path:
    return Path(app.config["DATA_DIR"])
