"""Asking for fine-tuning: check the recordings, store them with the job, queue it on the backend."""

from __future__ import annotations

import json
import logging
import secrets
import shutil
from pathlib import Path

from voiceforge.audio.datauri import parse_data_uri
from voiceforge.errors import Conflict, Unprocessable
from voiceforge.finetune.dataset import MAX_CLIP_SECONDS, Recording, measure_speech
from voiceforge.jobs import store
from voiceforge.models import Job, JobState, Voice, VoiceKind, VoiceStatus
from voiceforge.runtime import Runtime
from voiceforge.services import voices
from voiceforge.services.storage import JOBS_DIR, TEMP_PREFIX, remove_path, storage_error, write_file_atomic
from voiceforge.services.text import clean_text

log = logging.getLogger(__name__)

INPUTS = "inputs"


def job_dir(runtime: Runtime, job_id: str) -> Path:
    return runtime.settings.data_dir / JOBS_DIR / job_id


def recordings_from_body(runtime: Runtime, samples: list[dict], main_audio: bytes | None = None,
                         main_text: str | None = None) -> list[Recording]:
    """The main upload (if any) and each `{"audioDataUri", "text"?}` sample, decoded from base64."""
    limit = runtime.settings.max_audio_bytes
    recordings = [Recording(main_audio, clean_transcript(main_text))] if main_audio is not None else []
    for index, sample in enumerate(samples):
        try:
            upload = parse_data_uri(sample["audioDataUri"], max_bytes=limit)
        except Exception as error:
            detail = getattr(error, "detail", None)
            if detail:
                error.detail = f"samples[{index}]: {detail}"  # say which sample is wrong
            raise
        recordings.append(Recording(upload.data, clean_transcript(sample.get("text"))))
    return recordings


def clean_transcript(text: str | None) -> str | None:
    """A recording's text, cleaned as speech text is; None when it has nothing to say ("   ", "...")."""
    try:
        return clean_text(text, max_chars=None) if text is not None else None
    except Unprocessable:
        return None


def check_recordings(runtime: Runtime, recordings: list[Recording]) -> float:
    """422 unless the recordings hold enough speech and each can be transcribed; the speech seconds.

    Without speech recognition (VOICEFORGE_ASR_MODEL) every recording needs its text and must fit
    one training clip (at most 11 s of speech); with it, text is optional.
    """
    settings = runtime.settings
    if not settings.asr_model:  # checked first: decoding and the VAD cost about 1 s of CPU a minute
        for index, recording in enumerate(recordings):
            if not recording.text:
                raise Unprocessable(
                    f"Recording {index + 1} of {len(recordings)} has no text. Without speech recognition "
                    "every recording needs its transcript (in the API `transcript` for the main one and "
                    "`text` for each sample; `flask voices finetune --transcripts`), or set "
                    "VOICEFORGE_ASR_MODEL on the server.")
    per_recording = [measure_speech([recording], max_seconds=settings.finetune_max_sample_seconds,
                                    first_number=number)
                     for number, recording in enumerate(recordings, 1)]
    if not settings.asr_model:
        for index, seconds in enumerate(per_recording):
            name = f"Recording {index + 1} of {len(recordings)}"
            if seconds > MAX_CLIP_SECONDS:
                raise Unprocessable(
                    f"{name} holds {seconds:.1f} s of speech; without speech recognition each must fit "
                    f"one clip of at most {MAX_CLIP_SECONDS:.0f} s. Split it into shorter samples with "
                    "their text, or set VOICEFORGE_ASR_MODEL on the server.")
    total = sum(per_recording)
    minimum = settings.finetune_min_speech_seconds
    if total < minimum:
        raise Unprocessable(f"The recordings hold {total:.1f} s of speech; fine-tuning needs at least "
                            f"{minimum:.0f} s (VOICEFORGE_FINETUNE_MIN_SPEECH_SECONDS). Add more samples.")
    return total


def queue_finetune(runtime: Runtime, voice_id: str, language: str, recordings: list[Recording],
                   speech_seconds: float, epochs: int | None = None) -> Job:
    """Store the recordings with a new job (all or nothing), then queue it on the configured backend."""
    settings = runtime.settings
    voices.require_data_dir(settings.data_dir)
    job_id = secrets.token_hex(16)
    final = job_dir(runtime, job_id)
    staging = final.parent / f"{TEMP_PREFIX}{job_id}"
    manifest = [{"file": f"{index:03d}.audio", "text": recording.text}
                for index, recording in enumerate(recordings)]
    try:
        (staging / INPUTS).mkdir(parents=True)
        for entry, recording in zip(manifest, recordings, strict=True):
            write_file_atomic(staging / INPUTS / entry["file"], recording.audio)
        write_file_atomic(staging / INPUTS / "manifest.json", json.dumps(manifest).encode())
        staging.rename(final)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise storage_error(error) from error
    params = {"language": language, "learningRate": settings.finetune_learning_rate,
              "saveEvery": settings.finetune_save_steps}
    try:
        job = store.new_job(voice_id, params, epochs=epochs or settings.finetune_epochs, job_id=job_id,
                            dataset_seconds=speech_seconds)
    except BaseException:
        remove_path(final)
        raise
    dispatch(runtime, job)
    log.info("fine-tuning job %s queued for voice %s (%.1f s of speech, %d recordings)", job.id, voice_id,
             speech_seconds, len(recordings))
    return job


def stored_recordings(directory: Path) -> list[Recording]:
    """The recordings a job was queued with."""
    manifest = json.loads((directory / INPUTS / "manifest.json").read_text())
    return [Recording((directory / INPUTS / entry["file"]).read_bytes(), entry["text"]) for entry in manifest]


def cancel_job(runtime: Runtime, job: Job) -> Job:
    """Cancel a job; one that ends at once (queued, or its runner gone) has its files removed now,
    a running one's runner removes them as it stops (within seconds)."""
    store.request_cancel(job)
    if job.state == JobState.cancelled:
        remove_path(job_dir(runtime, job.id))
    return job


def retry_job(runtime: Runtime, job: Job) -> Job:
    """Queue a failed job again (409 when its recordings are gone), or send the task of a queued job, or of
    a running one whose runner died, again (Celery: a task lost with Redis's data, or one that Redis gives
    back only after the visibility timeout); 409 for a running, succeeded or cancelled job."""
    if job.state == JobState.queued or store.runner_gone(job):
        dispatch(runtime, job)  # a job runs once however many tasks name it; a dead runner's job resumes
        return job
    if job.state == JobState.failed and not (job_dir(runtime, job.id) / INPUTS / "manifest.json").is_file():
        raise Conflict(f"Job {job.id}'s recordings are gone; start a new fine-tuning job instead.")
    store.retry(job)
    dispatch(runtime, job)
    return job


def dispatch(runtime: Runtime, job: Job) -> None:
    """Hand a queued job to the backend: runners poll the database; Celery gets a task."""
    if runtime.settings.job_backend == "celery":
        from voiceforge.jobs.celery_backend import send_job

        send_job(job.id)


def enrol_and_fine_tune(runtime: Runtime, name: str, data_uri: str, language: str | None,
                        transcript: str | None, samples: list[dict], epochs: int | None) -> tuple[Voice, Job]:
    """/api/train-voice with fineTune: clone at once (usable zero-shot), then queue fine-tuning.

    Every check on the recordings (sizes, formats, enough speech, transcripts) runs before the voice
    is enrolled, so a refused request leaves nothing; if queueing fails after all, the new voice goes.
    """
    from voiceforge.services.training import enrol_voice

    upload = parse_data_uri(data_uri, max_bytes=runtime.settings.max_audio_bytes)
    recordings = recordings_from_body(runtime, samples, upload.data, transcript)
    seconds = check_recordings(runtime, recordings)
    voice = enrol_voice(runtime, name, upload.data, language)
    try:
        job = queue_finetune(runtime, voice.id, voice.language, recordings, seconds, epochs)
    except BaseException:
        voices.delete_voice(voice.id, runtime.settings.data_dir)
        raise
    return voice, job


def finetunable_voice(voice_id: str) -> Voice:
    """The voice a fine-tuning request names: 404 unknown; 409 built in, not ready and cloned, or training."""
    voices.refuse_builtin(voice_id)
    voice = voices.get_voice(voice_id)
    if voice.kind not in (VoiceKind.cloned, VoiceKind.finetuned) or voice.status != VoiceStatus.ready:
        raise Conflict(f"Voice {voice_id!r} is not a ready cloned voice (status: {voice.status.value}).")
    store.refuse_a_second_job(voice.id)
    return voice


def fine_tune_voice(runtime: Runtime, voice: Voice, recordings: list[Recording], epochs: int | None) -> Job:
    """Queue a job on new recordings of a finetunable_voice (with speech recognition, its reference too).

    The API's POST /api/voices/<id>/fine-tune and `flask voices finetune` both come here.
    """
    if runtime.settings.asr_model and voice.reference_path:
        # The enrolment recording has no transcript of its own: only ASR can make clips of it.
        reference = (runtime.settings.data_dir / voice.reference_path).read_bytes()
        recordings = [Recording(reference, None), *recordings]
    seconds = check_recordings(runtime, recordings)
    return queue_finetune(runtime, voice.id, voice.language, recordings, seconds, epochs)


def fine_tuning_state(voice: Voice) -> dict:
    """The `fineTuning` field of GET /api/voices/<id>: the latest job, or not started."""
    job = store.latest_job(voice.id)
    if job is None:
        return {"state": "not_started"}
    return {"state": job.state.value, "progress": job.progress, "message": job.error or job.message,
            "jobId": job.id}
