"""Configuration: defaults in code < instance/config.py < VOICEFORGE_* environment < create_app(config)."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click
from flask import Flask

log = logging.getLogger(__name__)

ENV_PREFIX = "VOICEFORGE_"
# Read from the environment only, before any app exists: gunicorn.conf.py, compose, the instance path.
ENVIRONMENT_ONLY = ("BIND", "WORKERS", "THREADS", "TIMEOUT", "GRACEFUL_TIMEOUT", "CONTROL_SOCKET", "PORT",
                    "INSTANCE_PATH")
OFFICIAL_MODEL = "tts_models/multilingual/multi-dataset/xtts_v2"

# Every setting an operator may change. Names are the Flask config keys; the environment variable
# is the same name with the VOICEFORGE_ prefix. The type of the default decides how the
# environment string is parsed.
MAX_EPOCHS = 50  # the most fine-tuning epochs a job may train (a request's, the CLI's or the default)

DEFAULTS: dict[str, Any] = {
    "DATABASE_URL": None,  # None = sqlite file in the instance folder
    "DATA_DIR": None,  # None = <instance>/voices
    "CORS_ORIGINS": ["http://localhost:9002", "http://127.0.0.1:9002"],
    "MODEL_DIR": None,  # a local XTTS-v2 checkpoint directory; None = official model by name
    "MODEL_NAME": OFFICIAL_MODEL,
    "DEVICE": "auto",  # auto | cpu | cuda | cuda:N
    "DEFAULT_LANGUAGE": "en",
    "MAX_BODY_BYTES": 32 * 1024 * 1024,
    "MAX_AUDIO_BYTES": 20 * 1024 * 1024,  # decoded size of the uploaded audio file
    "MAX_REFERENCE_SECONDS": 60.0,  # decoding stops here; XTTS conditions on 30 s at most anyway
    "MIN_SPEECH_SECONDS": 3.0,
    "MAX_TEXT_CHARS": 5000,
    "SENTENCE_PAUSE_MS": 180,
    "VOICE_ALIASES": {"default-female": "Ana Florence", "default-male": "Damien Black"},
    "DEFAULT_SPEAKER": "Ana Florence",  # what any other default-… id falls back to
    # OpenAI voice names (/v1/audio/speech) -> our voice ids. A name left out of a configured
    # table keeps its default here, so every name OpenAI's clients know always speaks.
    "OPENAI_VOICES": {
        **dict.fromkeys(("alloy", "coral", "marin", "nova", "sage", "shimmer"), "default-female"),
        **dict.fromkeys(("ash", "ballad", "cedar", "echo", "fable", "onyx", "verse"), "default-male"),
    },
    "LATENT_CACHE_SIZE": 64,
    "INFERENCE_QUEUE_SIZE": 8,  # requests using or waiting for the model per process; beyond: 503
    "STREAM_SEND_TIMEOUT": 60.0,  # seconds one write to a streaming client may wait for it to read; 0: none
    # The decoder (voiceforge/decoding/): sentences decoded together per process (key/value cache
    # rows), the GPT's and HiFiGAN's dtypes while decoding (bfloat16 on CUDA or a CPU with native
    # bf16, float16 only on CUDA), how a CPU multiplies by its weights (onednn: prepacked, fast;
    # reference: transformers' own addmm, greedy tokens bit-identical to stock XTTS), CUDA graphs.
    "MAX_BATCH": 8,
    "DECODER_DTYPE": "float32",
    "VOCODER_DTYPE": "float32",
    "CPU_MATMUL": "onednn",
    "CUDA_GRAPHS": True,
    "CUDA_STEP": "auto",  # auto | torch | triton: fused Triton kernels for one row, PyTorch's for more
    "DB_BUSY_TIMEOUT_MS": 5000,
    "API_KEYS": [],
    "API_KEYS_FILE": None,
    "LOG_LEVEL": "INFO",
    "LOG_FORMAT": "text",  # text | json: one JSON object per line (voiceforge/logs.py)
    # Fine-tuning (voiceforge/finetune/) and the jobs that run it (voiceforge/jobs/).
    "FINETUNE_MIN_SPEECH_SECONDS": 120.0,  # less speech than this is refused (422), as the anchors do
    "FINETUNE_MAX_SAMPLE_SECONDS": 600.0,  # decoding of each recording stops here
    "FINETUNE_EPOCHS": 10,
    "FINETUNE_LEARNING_RATE": 5e-06,  # coqui's XTTS-v2 recipe
    "FINETUNE_SAVE_STEPS": 100,  # a checkpoint every N training steps: what a killed runner can lose
    "FINETUNED_CACHE": 2,  # fine-tuned voices whose GPT weights stay resident per process
    "ASR_MODEL": None,  # faster-whisper model directory or name; None = samples need their text
    "JOB_BACKEND": "db",  # db: runners claim jobs from the database; celery: Redis broker + workers
    "JOB_RUNNER": True,  # gunicorn's master starts a job runner process (db backend)
    "JOB_CONCURRENCY": 1,  # jobs one runner trains at once
    "JOB_MAX_ATTEMPTS": 3,  # a job whose runner died this many times is failed
    "JOB_LEASE_SECONDS": 30.0,  # a runner renews its lease this often x3; an expired lease means it died
    "JOB_STOP_SECONDS": 15.0,  # on SIGTERM, a running job may take this long to save its training steps
    "CELERY_BROKER_URL": None,  # redis://host:6379/0 with JOB_BACKEND=celery
    # Seconds before Redis hands an unacknowledged task (its worker died) to another worker: longer
    # than any training run, or a running job's task is delivered again (it then waits its turn).
    "CELERY_VISIBILITY_TIMEOUT": 6 * 3600,
}


class ConfigError(click.ClickException, ValueError):
    """A setting the service cannot run with; the one-line message names variable, value and fix.

    A ClickException so that every `flask` command shows it as one `Error:` line and exits 1;
    gunicorn's master does the same in gunicorn.conf.py.
    """

    def __init__(self, key: str, value: Any, allowed: str) -> None:
        shown = value if isinstance(value, str) else repr(value)
        super().__init__(f"{ENV_PREFIX}{key}={shown} is not valid: {allowed}")
        self.key = key


def load_config(app: Flask, overrides: Mapping[str, Any] | None = None) -> None:
    """Fill app.config from defaults, instance/config.py, the environment and explicit overrides."""
    app.config.update(DEFAULTS)
    flask_keys = set(app.config)
    app.config.from_pyfile("config.py", silent=True)
    _warn_about_unused_names(app, flask_keys)
    app.config.update(read_environment(os.environ))
    if overrides:
        app.config.update(overrides)
    derive(app)


def _warn_about_unused_names(app: Flask, known: set[str]) -> None:
    """A name in instance/config.py that nothing reads (a typo, or a gunicorn setting) is said once."""
    path = Path(app.instance_path) / "config.py"
    if not path.is_file():
        return
    for name in sorted(set(app.config) - known):
        if name in ENVIRONMENT_ONLY:
            log.warning("%s sets %s, which only the environment sets (%s%s); it is ignored", path, name,
                        ENV_PREFIX, name)
        else:
            log.warning("%s sets %s, which is not a setting (see README, Configuration); it is ignored",
                        path, name)


def read_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    """Parse VOICEFORGE_* variables, typed by the default they replace."""
    values: dict[str, Any] = {}
    for key, default in DEFAULTS.items():
        raw = environ.get(ENV_PREFIX + key)
        if raw is None:
            continue
        values[key] = parse_value(key, raw, default)
    return values


def parse_value(key: str, raw: str, default: Any) -> Any:
    """Turn one environment string into the type of its default; fail loudly on nonsense."""
    if isinstance(default, bool):
        return boolean(key, raw)
    if isinstance(default, list):
        return _items(key, raw)
    if isinstance(default, dict):
        return _pairs(key, raw)
    try:
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError:
        raise ConfigError(key, raw, "an integer." if isinstance(default, int) else "a number.") from None
    return raw.strip() or None


def _items(key: str, raw: str) -> list[str]:
    """Comma-separated values; empty is none, but commas and spaces alone are a mistake, not none.

    (VOICEFORGE_API_KEYS=" , " would otherwise turn keys off.) What is shown is commas and spaces only.
    """
    items = [item.strip() for item in raw.split(",") if item.strip()]
    if raw.strip() and not items:
        raise ConfigError(key, repr(raw), "comma-separated values; this names none (set it empty for none).")
    return items


def _pairs(key: str, raw: str) -> dict[str, str]:
    """"alias=Speaker Name,other=Name"; a pair without "=" is refused, never dropped."""
    pairs: dict[str, str] = {}
    for item in _items(key, raw):
        name, equals, value = item.partition("=")
        if not equals:
            raise ConfigError(key, item, "name=value pairs separated by commas; this pair has no \"=\".")
        pairs[name.strip()] = value.strip()
    return pairs


def boolean(key: str, raw: str) -> bool:
    """A switch: true/false, 1/0, yes/no, on/off (any case; empty is false); anything else is refused."""
    word = raw.strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("", "0", "false", "no", "off"):
        return False
    raise ConfigError(key, raw, "true or false (or 1/0, yes/no, on/off).")


def derive(app: Flask) -> None:
    """Compute settings that depend on others (paths, Flask/SQLAlchemy names)."""
    config = app.config
    instance = Path(app.instance_path)
    if not config["DATABASE_URL"]:
        config["DATABASE_URL"] = f"sqlite:///{instance / 'voiceforge.db'}"
    config["DATA_DIR"] = str(Path(config["DATA_DIR"] or instance / "voices").resolve())
    # postgres:// (what many hosts hand out) and postgresql:// name SQLAlchemy's psycopg2 driver, which is
    # not installed: psycopg (3) is, so both mean postgresql+psycopg://.
    config["DATABASE_URL"] = re.sub(r"^postgres(ql)?://", "postgresql+psycopg://", config["DATABASE_URL"])
    config["SQLALCHEMY_DATABASE_URI"] = config["DATABASE_URL"]
    config["MAX_CONTENT_LENGTH"] = config["MAX_BODY_BYTES"]
    if isinstance(config["CORS_ORIGINS"], str):
        config["CORS_ORIGINS"] = [o.strip() for o in config["CORS_ORIGINS"].split(",") if o.strip()]
    # A browser's Origin header never ends in a slash: `https://studio.example.com/`, as copied from
    # the address bar, would otherwise never match, and the web app's requests fail without a word.
    if isinstance(config["CORS_ORIGINS"], list | tuple):
        config["CORS_ORIGINS"] = [o.rstrip("/") if isinstance(o, str) and o != "*" else o
                                  for o in config["CORS_ORIGINS"]]
