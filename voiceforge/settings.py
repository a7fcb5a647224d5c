"""Validated settings: app.config checked once at start-up and frozen into a typed object."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from voiceforge.auth import load_api_keys
from voiceforge.config import DEFAULTS, MAX_EPOCHS, ConfigError, boolean
from voiceforge.logs import LOG_FORMATS
from voiceforge.services.languages import ALIASES, SUPPORTED_LANGUAGES
from voiceforge.services.storage import is_valid_id
from voiceforge.services.voices import BUILTIN_PREFIX

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


@dataclass(frozen=True)
class Settings:
    """Every setting the services use, validated; built once per app by the factory."""

    data_dir: Path
    model_dir: str | None
    model_name: str
    device: str
    default_language: str
    max_audio_bytes: int
    max_reference_seconds: float
    min_speech_seconds: float
    max_text_chars: int
    sentence_pause_ms: int
    voice_aliases: Mapping[str, str]
    default_speaker: str
    openai_voices: Mapping[str, str]  # OpenAI voice name -> our voice id, every default name included
    latent_cache_size: int
    inference_queue_size: int
    max_batch: int
    decoder_dtype: str
    vocoder_dtype: str
    cpu_matmul: str
    cuda_graphs: bool
    cuda_step: str
    log_level: str
    log_format: str  # text | json (voiceforge/logs.py)
    finetune_min_speech_seconds: float
    finetune_max_sample_seconds: float
    finetune_epochs: int
    finetune_learning_rate: float
    finetune_save_steps: int
    finetuned_cache: int
    asr_model: str | None
    job_backend: str
    job_runner: bool
    job_concurrency: int
    job_max_attempts: int
    job_lease_seconds: float
    job_stop_seconds: float
    stream_send_timeout: float
    celery_broker_url: str | None
    celery_visibility_timeout: int

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Settings:
        """Check every value; raise ConfigError naming the first bad one."""
        _check_web_settings(config)
        return cls(
            data_dir=Path(config["DATA_DIR"]),
            model_dir=config.get("MODEL_DIR") or None,
            model_name=_text(config, "MODEL_NAME"),
            device=_device(config),
            default_language=_language(config),
            max_audio_bytes=_number(config, "MAX_AUDIO_BYTES", int, minimum=1),
            max_reference_seconds=_reference_seconds(config),
            min_speech_seconds=_number(config, "MIN_SPEECH_SECONDS", float, minimum=0.1),
            max_text_chars=_number(config, "MAX_TEXT_CHARS", int, minimum=1),
            sentence_pause_ms=_number(config, "SENTENCE_PAUSE_MS", int, minimum=0),
            voice_aliases=_aliases(config),
            default_speaker=_text(config, "DEFAULT_SPEAKER"),
            openai_voices=_openai_voices(config),
            latent_cache_size=_number(config, "LATENT_CACHE_SIZE", int, minimum=1),
            inference_queue_size=_number(config, "INFERENCE_QUEUE_SIZE", int, minimum=1),
            max_batch=_number(config, "MAX_BATCH", int, minimum=1),
            decoder_dtype=_half_or_full(config, "DECODER_DTYPE"),
            vocoder_dtype=_half_or_full(config, "VOCODER_DTYPE"),
            cpu_matmul=_choice(config, "CPU_MATMUL", ("onednn", "reference")),
            cuda_graphs=_switch(config, "CUDA_GRAPHS"),
            cuda_step=_choice(config, "CUDA_STEP", ("auto", "torch", "triton")),
            log_level=log_level(config.get("LOG_LEVEL")),
            log_format=_choice(config, "LOG_FORMAT", LOG_FORMATS),
            finetune_min_speech_seconds=_number(config, "FINETUNE_MIN_SPEECH_SECONDS", float, minimum=1.0),
            finetune_max_sample_seconds=_number(config, "FINETUNE_MAX_SAMPLE_SECONDS", float, minimum=10.0),
            finetune_epochs=_number(config, "FINETUNE_EPOCHS", int, minimum=1, maximum=MAX_EPOCHS),
            finetune_learning_rate=_number(config, "FINETUNE_LEARNING_RATE", float, minimum=1e-9),
            finetune_save_steps=_number(config, "FINETUNE_SAVE_STEPS", int, minimum=1),
            finetuned_cache=_number(config, "FINETUNED_CACHE", int, minimum=1),
            asr_model=config.get("ASR_MODEL") or None,
            job_backend=_choice(config, "JOB_BACKEND", ("db", "celery")),
            job_runner=_switch(config, "JOB_RUNNER"),
            job_concurrency=_number(config, "JOB_CONCURRENCY", int, minimum=1),
            job_max_attempts=_number(config, "JOB_MAX_ATTEMPTS", int, minimum=1),
            job_lease_seconds=_number(config, "JOB_LEASE_SECONDS", float, minimum=1.0),
            job_stop_seconds=_number(config, "JOB_STOP_SECONDS", float, minimum=0.0),
            stream_send_timeout=_number(config, "STREAM_SEND_TIMEOUT", float, minimum=0.0),
            celery_broker_url=_broker(config),
            celery_visibility_timeout=_number(config, "CELERY_VISIBILITY_TIMEOUT", int, minimum=1),
        )


def _check_web_settings(config: Mapping[str, Any]) -> None:
    """The settings Flask, the database and the API keys read from app.config themselves."""
    _number(config, "MAX_BODY_BYTES", int, minimum=1)
    _number(config, "DB_BUSY_TIMEOUT_MS", int, minimum=0)
    _database_url(config)
    load_api_keys(config)  # refuses keys that are set but none, unreadable, or that no client could send


def _database_url(config: Mapping[str, Any]) -> None:
    value = config.get("DATABASE_URL")
    if not value:
        return  # config.derive puts the SQLite file in the instance folder
    try:
        url = make_url(value)
    except (ArgumentError, TypeError, ValueError):
        shown = "…"  # what was given may hold a password
    else:
        try:
            url.get_dialect().import_dbapi()
            return
        except (NoSuchModuleError, ImportError):
            shown = url.render_as_string(hide_password=True)
    raise ConfigError("DATABASE_URL", shown, "a SQLAlchemy URL whose driver is installed: "
                      "sqlite:///path/to/file.db or postgresql+psycopg://user:password@host:5432/name.")


def log_level(value: Any) -> str:
    """The upper-case level name; `info`, `Info` and `INFO` are the same (gunicorn users write `info`)."""
    name = str(value or "").strip().upper()
    if name not in LOG_LEVELS:
        raise ConfigError("LOG_LEVEL", value, "one of " + ", ".join(LOG_LEVELS) + " (any case).")
    return name


def _text(config: Mapping[str, Any], key: str) -> str:
    value = config.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(key, value, "a non-empty string.")
    return value.strip()


def _device(config: Mapping[str, Any]) -> str:
    value = str(config.get("DEVICE") or "").strip().lower()
    if not DEVICE_PATTERN.match(value):
        raise ConfigError("DEVICE", config.get("DEVICE"), "auto, cpu, cuda or cuda:N.")
    return value


def _language(config: Mapping[str, Any]) -> str:
    value = config.get("DEFAULT_LANGUAGE")
    code = str(value or "").strip().lower().replace("_", "-")
    code = ALIASES.get(code, code)
    if code not in SUPPORTED_LANGUAGES:
        raise ConfigError("DEFAULT_LANGUAGE", value, "one of " + ", ".join(SUPPORTED_LANGUAGES) + ".")
    return code


def _number(config: Mapping[str, Any], key: str, kind: type, *, minimum: float,
            maximum: float | None = None) -> Any:
    value = config.get(key)
    wanted = f"of at least {kind(minimum)}" if maximum is None else f"from {kind(minimum)} to {kind(maximum)}"
    if isinstance(value, str):  # the environment's are numbers by now: this is instance/config.py's
        raise ConfigError(key, repr(value), f"a number {wanted}, not text: in instance/config.py write "
                                            f"{key} = {value.strip()} without quotes.")
    # nan passes every comparison and inf every minimum; neither is a limit anything can use.
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or (isinstance(value, float) and not math.isfinite(value)) \
            or value < minimum or (maximum is not None and value > maximum):
        raise ConfigError(key, value, f"a finite number {wanted}.")
    if kind is int and value != int(value):  # 10.5 characters or epochs would silently become 10
        raise ConfigError(key, value, f"a whole number {wanted}.")
    return kind(value)


def _switch(config: Mapping[str, Any], key: str) -> bool:
    """A switch from instance/config.py may be a string ("false"): read as the environment's, not bool()."""
    value = config.get(key)
    if isinstance(value, str):
        return boolean(key, value)
    if isinstance(value, bool) or value in (0, 1):
        return bool(value)
    raise ConfigError(key, value, "true or false (or 1/0, yes/no, on/off).")


def _reference_seconds(config: Mapping[str, Any]) -> float:
    """How much of a recording enrolment reads: never less than the speech it must find there."""
    value = _number(config, "MAX_REFERENCE_SECONDS", float, minimum=1.0)
    least = _number(config, "MIN_SPEECH_SECONDS", float, minimum=0.1)
    if value < least:
        raise ConfigError("MAX_REFERENCE_SECONDS", config.get("MAX_REFERENCE_SECONDS"),
                          f"at least VOICEFORGE_MIN_SPEECH_SECONDS ({least:g}), or no recording could "
                          "hold enough speech.")
    return value


def _choice(config: Mapping[str, Any], key: str, allowed: tuple[str, ...]) -> str:
    value = str(config.get(key) or "").strip().lower()
    if value not in allowed:
        raise ConfigError(key, config.get(key), "one of " + ", ".join(allowed) + ".")
    return value


def _half_or_full(config: Mapping[str, Any], key: str) -> str:
    """A decoding precision: float32, bfloat16, or float16 (CUDA only)."""
    value = _choice(config, key, ("float32", "bfloat16", "float16"))
    if value == "float16" and _device(config) == "cpu":
        raise ConfigError(key, config.get(key), "float32 or bfloat16 on a CPU "
                          "(float16 is for CUDA; CPUs have no fast float16 arithmetic).")
    return value


def _broker(config: Mapping[str, Any]) -> str | None:
    url = config.get("CELERY_BROKER_URL") or None
    if str(config.get("JOB_BACKEND") or "").lower() == "celery" and not url:
        raise ConfigError("CELERY_BROKER_URL", url, "a Redis URL (redis://host:6379/0) when "
                          "VOICEFORGE_JOB_BACKEND=celery.")
    return url


def _aliases(config: Mapping[str, Any]) -> dict[str, str]:
    value = config.get("VOICE_ALIASES") or {}
    if not isinstance(value, Mapping):
        raise ConfigError("VOICE_ALIASES", value, "alias=Speaker pairs separated by commas.")
    for alias, speaker in value.items():
        if not str(alias).startswith(BUILTIN_PREFIX) or len(alias) <= len(BUILTIN_PREFIX) or not speaker:
            raise ConfigError("VOICE_ALIASES", f"{alias}={speaker}",
                              f"each alias must start with {BUILTIN_PREFIX!r} and name a speaker "
                              "(default-narrator=Ana Florence).")
    # As with OPENAI_VOICES, a table adds aliases or overrides those it names; the others keep their
    # defaults, or adding one alias would send default-male (and OpenAI's male voices) to the default speaker.
    return {**DEFAULTS["VOICE_ALIASES"], **value}


def _openai_voices(config: Mapping[str, Any]) -> dict[str, str]:
    value = config.get("OPENAI_VOICES") or {}
    if not isinstance(value, Mapping):
        raise ConfigError("OPENAI_VOICES", value, "name=voice-id pairs separated by commas.")
    for name, voice_id in value.items():
        # A name in the `default-` space would hide the built-in voice of that id.
        if not isinstance(name, str) or not name.strip() or name.startswith(BUILTIN_PREFIX):
            raise ConfigError("OPENAI_VOICES", f"{name}={voice_id}",
                              f"each name must be non-empty and not start with {BUILTIN_PREFIX!r}.")
        if not isinstance(voice_id, str) or not is_valid_id(voice_id):
            raise ConfigError("OPENAI_VOICES", f"{name}={voice_id}",
                              "each target must be a voice id: a built-in one (alloy=default-female, "
                              "echo=default-damien-black) or a cloned voice's id.")
    # A table that names only some voices overrides those; the rest keep their defaults.
    return {**DEFAULTS["OPENAI_VOICES"], **{name.strip(): voice_id for name, voice_id in value.items()}}
