"""Voice enrolment ("training" in the web app's words): reference audio in, a ready voice out."""

from __future__ import annotations

import logging
import shutil

from voiceforge.audio.datauri import parse_data_uri
from voiceforge.audio.decode import decode_audio
from voiceforge.audio.encode import encode_wav
from voiceforge.audio.reference import prepare_reference
from voiceforge.models import Voice, VoiceKind
from voiceforge.runtime import Runtime
from voiceforge.services import voices
from voiceforge.services.engine import CONDITIONING_RATE
from voiceforge.services.languages import normalise_language
from voiceforge.services.storage import store_voice_files

log = logging.getLogger(__name__)

REFERENCE_FILE = "reference.wav"
LATENTS_FILE = "latents.pth"


def enrol_from_data_uri(runtime: Runtime, name: str, data_uri: str, language: str | None = None) -> Voice:
    """Clone a voice from a `data:audio/...;base64,` upload (the /api/train-voice body)."""
    upload = parse_data_uri(data_uri, max_bytes=runtime.settings.max_audio_bytes)
    return enrol_voice(runtime, name, upload.data, language)


def enrol_voice(runtime: Runtime, name: str, audio: bytes, language: str | None = None) -> Voice:
    """Decode, clean and store the reference, compute its latents once, then register it as ready.

    The files are stored all at once (services/storage.py) and the row is added only after that:
    a failure at any point leaves no row and no files.
    """
    settings = runtime.settings
    display_name = voices.clean_name(name)
    voices.require_data_dir(settings.data_dir)
    lang = normalise_language(language) if language else settings.default_language
    samples = decode_audio(audio, target_rate=CONDITIONING_RATE, max_seconds=settings.max_reference_seconds)
    reference = prepare_reference(samples, CONDITIONING_RATE, min_speech_seconds=settings.min_speech_seconds,
                                  max_seconds=settings.max_reference_seconds)
    engine = runtime.engine
    with engine.reserve():
        latents = engine.compute_latents(reference)

    voice_id = voices.new_voice_id(display_name)
    directory = store_voice_files(settings.data_dir, voice_id, {
        REFERENCE_FILE: encode_wav(reference, CONDITIONING_RATE),
        LATENTS_FILE: latents.to_bytes(),
    })
    try:
        return voices.add_ready_voice(voice_id, display_name, lang, VoiceKind.cloned,
                                      f"{voice_id}/{REFERENCE_FILE}", f"{voice_id}/{LATENTS_FILE}")
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
