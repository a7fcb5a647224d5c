"""Logging: levels, plain or JSON lines (VOICEFORGE_LOG_FORMAT), and per-request context fields."""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"
# Fields a JSON line may carry besides time, level, logger, pid and message. Only these are taken
# from a record's `extra` or the request context, so nothing else (never the text to speak) leaks.
CONTEXT_FIELDS = ("request_id", "method", "route", "status", "duration_ms", "bytes", "voice_id", "chars",
                  "job_id")
# The current request's fields (request id, route, voice id, character count…). gthread reuses its
# threads, so the request hooks in voiceforge/http.py reset it at the start of every request.
_context: ContextVar[dict[str, Any] | None] = ContextVar("voiceforge_log_context", default=None)
_json_mode = False  # set by configure_logging


def bind(**fields: Any) -> None:
    """Add fields to the current request's log context (shown on every JSON line it logs)."""
    _context.set({**(_context.get() or {}), **{k: v for k, v in fields.items() if v is not None}})


def reset_context(**fields: Any) -> None:
    """Start a fresh context (a new request) holding only `fields`."""
    _context.set({k: v for k, v in fields.items() if v is not None})


def context() -> dict[str, Any]:
    """The current request's log fields (a copy)."""
    return dict(_context.get() or {})


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, pid, message and the request's context fields."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        payload.update(context())
        for name in CONTEXT_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                payload[name] = value
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            payload["stack"] = self.formatStack(record.stack_info)
        return json.dumps(payload, ensure_ascii=False, default=str)


def make_formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def configure_logging(level: str, log_format: str = "text", *, install_handler: bool = False) -> None:
    """Set the `voiceforge` loggers' level; in JSON mode route warnings and library output through JSON.

    gunicorn installs the handlers (gunicorn.conf.py's logconfig_dict); a process of our own (the job
    runner) asks for one with `install_handler`. Third-party INFO (Alembic's plugin set-up lines at
    every start) stays out: the root logger is at WARNING, only `voiceforge` follows `level`.
    """
    global _json_mode
    _json_mode = log_format == "json"
    logging.getLogger("voiceforge").setLevel(level)
    root = logging.getLogger()
    if install_handler and not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(make_formatter(log_format))
        root.addHandler(handler)
        root.setLevel(logging.WARNING)
    if _json_mode:
        logging.captureWarnings(True)  # warnings.warn() would write a plain line to stderr
        if "transformers" in sys.modules:
            adopt_library_loggers()


def adopt_library_loggers() -> None:
    """JSON mode: transformers gives its logger a stderr handler of its own ("[transformers] …" lines);
    send its records through ours instead. Called before the model loads (transformers is imported
    then, never at start-up: creating the app imports no torch or transformers)."""
    if not _json_mode:
        return
    try:
        from transformers.utils import logging as transformers_logging
    except ImportError:
        return
    transformers_logging.disable_default_handler()
    transformers_logging.enable_propagation()


def gunicorn_logconfig(level: str, log_format: str) -> dict[str, Any]:
    """gunicorn's logconfig_dict: its error log, our loggers and everything else in one format on stderr."""
    formatter: dict[str, Any] = ({"()": "voiceforge.logs.JsonFormatter"} if log_format == "json"
                                 else {"format": TEXT_FORMAT})
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"voiceforge": formatter},
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "voiceforge",
                                 "stream": "ext://sys.stderr"}},
        # Libraries log at WARNING and above only: their INFO (Alembic's "setup plugin …") is noise here.
        "root": {"level": "WARNING", "handlers": ["console"]},
        "loggers": {
            "voiceforge": {"handlers": ["console"], "level": level, "propagate": False},
            "gunicorn.error": {"handlers": ["console"], "level": level, "propagate": False},
        },
    }
