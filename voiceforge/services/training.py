"""Voice enrolment ("training" in the web app's words): reference audio in, a ready voice out."""

from __future__ import annotations

import errno
import logging
import shutil
from pathlib import Path

from flask import current_app

from voiceforge.errors import InsufficientStorage, ServiceUnavailable
from voiceforge.models import Voice, VoiceKind
from voiceforge.services import voices
from voiceforge.services.audio import (
    decode_audio,
    encode_wav,
    parse_data_uri,
    prepare_reference,
    write_file_atomic,
)
from voiceforge.services.engine import CONDITIONING_RATE, get_engine
from voiceforge.services.languages import normalise_language

log = logging.getLogger(__name__)

REFERENCE_FILE = "reference.wav"
LATENTS_FILE = "latents.pth"


def enrol_from_data_uri(name: str, data_uri: str, language: str | None = None) -> Voice:
    """Clone a voice from a `data:audio/...;base64,` upload (the /api/train-voice body)."""
    config = current_app.config
    upload = parse_data_uri(data_uri, max_bytes=int(config["MAX_AUDIO_BYTES"]))
    return enrol_voice(name, upload.data, language)


def enrol_voice(name: str, audio: bytes, language: str | None = None) -> Voice:
    """Decode, clean and store the reference, compute its latents once, then register it as ready.

    Files are written into a temporary directory that is renamed into place only when complete,
    and the row is added only after that: a failure at any point leaves no row and no files.
    """
    config = current_app.config
    display_name = voices.clean_name(name)
    lang = normalise_language(language or config["DEFAULT_LANGUAGE"])
    samples = decode_audio(audio, target_rate=CONDITIONING_RATE,
                           max_seconds=float(config["MAX_REFERENCE_SECONDS"]))
    reference = prepare_reference(samples, CONDITIONING_RATE,
                                  min_speech_seconds=float(config["MIN_SPEECH_SECONDS"]))
    engine = get_engine()
    with engine.reserve():
        latents = engine.compute_latents(reference)

    data_dir = Path(config["DATA_DIR"])
    voice_id = voices.new_voice_id(display_name)
    final_dir = voices.voice_dir(data_dir, voice_id)
    staging = data_dir / f"{voices.TEMP_PREFIX}{voice_id}"
    try:
        staging.mkdir(parents=True)
        write_file_atomic(staging / REFERENCE_FILE, encode_wav(reference, CONDITIONING_RATE))
        write_file_atomic(staging / LATENTS_FILE, latents.to_bytes())
        staging.rename(final_dir)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise storage_error(error) from error
    try:
        return voices.add_ready_voice(voice_id, display_name, lang, VoiceKind.cloned,
                                      f"{voice_id}/{REFERENCE_FILE}", f"{voice_id}/{LATENTS_FILE}")
    except BaseException:
        shutil.rmtree(final_dir, ignore_errors=True)
        raise


def storage_error(error: OSError) -> Exception:
    """A deliberate answer for a failed write: 507 when the disk is full, 503 otherwise."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return InsufficientStorage("The server's disk is full; the voice was not saved.")
    log.error("writing voice files failed: %s", error)
    return ServiceUnavailable("The voice could not be saved (storage error); retry later.")
