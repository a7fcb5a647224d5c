"""Transcribe short clips with faster-whisper (CTranslate2, CPU, int8) for fine-tuning datasets."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

from voiceforge.audio.vad import VAD_RATE, resample
from voiceforge.errors import ServiceUnavailable

log = logging.getLogger(__name__)

ASR_MODEL_ENV = "VOICEFORGE_ASR_MODEL"
WHISPER_RATE = VAD_RATE  # Whisper's features are computed at 16 kHz too

# The clips are already cut at pauses and at most 11 s long, well inside Whisper's 30 s window:
# no timestamps, no VAD of its own, no conditioning on a previous window.
_DEFAULT_OPTIONS: dict[str, Any] = {
    "task": "transcribe", "without_timestamps": True, "vad_filter": False,
    "condition_on_previous_text": False,
}


def asr_model_setting(environ: Mapping[str, str] | None = None) -> str | None:
    """VOICEFORGE_ASR_MODEL (a local CTranslate2 Whisper directory or a model name), or None."""
    value = (os.environ if environ is None else environ).get(ASR_MODEL_ENV, "").strip()
    return value or None


def asr_configured(environ: Mapping[str, str] | None = None) -> bool:
    """Whether speech recognition is configured (VOICEFORGE_ASR_MODEL is set)."""
    return asr_model_setting(environ) is not None


def whisper_language(language: str) -> str:
    """Whisper's code for a service language code: "zh-cn" -> "zh", "en" -> "en"."""
    return language.strip().lower().split("-")[0]


class Transcriber:
    """A faster-whisper model, loaded on first use (once, however many threads ask).

    `model` is a local CTranslate2 Whisper directory (with tokenizer.json and
    preprocessor_config.json) or a faster-whisper model name ("small", "Systran/faster-whisper-
    large-v3", ...), which faster-whisper downloads from the Hugging Face Hub on first use.
    `options` are extra keyword arguments for `WhisperModel.transcribe` (beam size, thresholds).
    """

    def __init__(self, model: str, *, device: str = "cpu", compute_type: str = "int8",
                 cpu_threads: int = 0, download_root: str | None = None,
                 options: Mapping[str, Any] | None = None) -> None:
        if not model.strip():
            raise ValueError("model must name a model or a directory")
        self.model = model.strip()
        self.device = device
        self.compute_type = compute_type
        self.cpu_threads = cpu_threads  # 0: CTranslate2's default (4)
        self.download_root = download_root
        self.options = {**_DEFAULT_OPTIONS, **(options or {})}
        self._lock = threading.Lock()
        self._whisper: Any = None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Transcriber | None:
        """A Transcriber for VOICEFORGE_ASR_MODEL, or None when it is not set. Loads nothing yet."""
        model = asr_model_setting(environ)
        return cls(model) if model else None

    def __repr__(self) -> str:
        return f"Transcriber({self.model!r}, device={self.device!r}, compute_type={self.compute_type!r})"

    def load(self) -> None:
        """Load the model now rather than on the first transcription.

        Raises ServiceUnavailable (503) when it cannot be loaded: a missing directory, a name that
        cannot be downloaded, a directory that is not a CTranslate2 Whisper model.
        """
        self._model()

    def transcribe(self, samples: np.ndarray, rate: int, language: str | None = None) -> str:
        """The text spoken in a short mono float32 clip at any sample rate ("" when none is heard).

        `language` is a service language code ("en", "zh-cn"); None, or one the model does not
        know, lets Whisper detect it.
        """
        whisper = self._model()
        audio = resample(samples, rate, WHISPER_RATE)
        if audio.size == 0:
            return ""
        code = whisper_language(language) if language else None
        if code is not None and code not in whisper.supported_languages:
            log.warning("ASR model %s does not know language %r; detecting it instead", self.model, code)
            code = None
        segments, _info = whisper.transcribe(audio, language=code, **self.options)
        # The segments are a generator: decoding happens while they are joined.
        return " ".join(" ".join(segment.text.split()) for segment in segments).strip()

    def _model(self) -> Any:
        with self._lock:
            if self._whisper is None:
                self._whisper = self._load()
            return self._whisper

    def _load(self) -> Any:
        from faster_whisper import WhisperModel

        # Hub names contain a slash too ("Systran/faster-whisper-small"): only an explicit path is
        # checked here, so a typo in one is reported as such rather than as a failed download.
        looks_local = self.model.startswith((".", "~", os.sep))
        if looks_local and not os.path.isdir(os.path.expanduser(self.model)):
            raise ServiceUnavailable(f"The speech recognition model directory {self.model} does not "
                                     f"exist; fix {ASR_MODEL_ENV}.")
        try:
            whisper = WhisperModel(os.path.expanduser(self.model), device=self.device,
                                   compute_type=self.compute_type, cpu_threads=self.cpu_threads,
                                   download_root=self.download_root)
        except Exception as exc:  # download, format and runtime errors all make it unusable
            log.exception("could not load ASR model %s", self.model)
            raise ServiceUnavailable(
                f"The speech recognition model {self.model!r} could not be loaded "
                f"({type(exc).__name__}: {exc}). Set {ASR_MODEL_ENV} to a local CTranslate2 Whisper "
                f"directory or a faster-whisper model name the server can download.") from exc
        log.info("loaded ASR model %s (%s, %s)", self.model, self.device, self.compute_type)
        return whisper
