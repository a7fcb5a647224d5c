"""One fine-tuning job, start to end: dataset, training in a child process, export, switch the voice.

Each step can be resumed: the dataset is built once into the job's directory, the trainer resumes
from its newest checkpoint there, and the voice switches to its fine-tuned weights in one database
commit, after its new files are complete. Cancelling removes the job's files; a failure keeps the
uploaded recordings, so `flask jobs retry` can start again, and the trainer's log, which says why.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from voiceforge.audio.decode import decode_audio
from voiceforge.finetune.dataset import TRAIN_METADATA, build_dataset
from voiceforge.jobs.runner import JobCancelled, LeaseLost, ShuttingDown
from voiceforge.models import Job
from voiceforge.runtime import Runtime
from voiceforge.services import voices
from voiceforge.services.engine import CONDITIONING_RATE
from voiceforge.services.finetuning import job_dir, stored_recordings
from voiceforge.services.storage import TEMP_PREFIX, remove_path, storage_error, write_file_atomic

log = logging.getLogger(__name__)

TRAINING_FILES = ("dvae.pth", "mel_stats.pth")  # beside the release files, needed to fine-tune
TRAIN_LOG = "train.log"  # the trainer's output, in run/ while it trains, beside inputs/ once it failed
# Shares of the progress bar: the dataset, training, then export and the new latent.
DATASET_SHARE, TRAINING_SHARE = 0.05, 0.90


def run_finetune(runtime: Runtime, job: Job, beat: Callable[..., None]) -> None:
    """The runner's work for a `finetune` job (see runner.JobWork)."""
    work = job_dir(runtime, job.id)
    try:
        base = fine_tuning_base(runtime)
        dataset = prepare_dataset(runtime, job, work, beat)
        checkpoint = train(runtime, job, base, dataset, work, beat)
        beat(force=True, progress=DATASET_SHARE + TRAINING_SHARE, message="Exporting the fine-tuned weights…")
        switch_voice(runtime, job, checkpoint)
    except JobCancelled:
        remove_path(work)  # a cancelled job leaves nothing behind
        raise
    except (ShuttingDown, LeaseLost):
        raise  # keep everything: this runner or the one that took the job over resumes from the checkpoint
    except Exception:
        for name in ("run", "dataset", "export"):
            remove_path(work / name)  # the big files go; the recordings stay for a retry, the log to read
        raise
    remove_path(work)
    try:
        beat(force=True, progress=1.0, message="Fine-tuned: the voice now speaks with its own weights.")
    except JobCancelled:  # too late: the voice already speaks with its new weights, so the job succeeded
        log.info("job %s: cancel asked after the voice was switched; the job ends succeeded", job.id)


def fine_tuning_base(runtime: Runtime) -> Path:
    """The base checkpoint directory, with the two extra files fine-tuning needs."""
    base = runtime.engine.resolve_checkpoint()
    missing = [name for name in TRAINING_FILES if not (base / name).is_file()]
    if missing:
        raise RuntimeError(f"The model directory {base} has no {', '.join(missing)}, which fine-tuning "
                           "needs beside the release files (they come with coqui's XTTS-v2 training "
                           "recipe); copy them there and retry the job.")
    return base


def fine_tuning_problem(runtime: Runtime) -> str | None:
    """Why fine-tuning jobs cannot run here, checked from files only (nothing loaded or downloaded)."""
    problem = runtime.engine.problem()
    if problem:
        return problem
    model_dir = runtime.settings.model_dir
    if model_dir is None:
        return ("Fine-tuning needs a local model directory: set VOICEFORGE_MODEL_DIR to the XTTS-v2 "
                "checkpoint with dvae.pth and mel_stats.pth beside the release files.")
    missing = [name for name in TRAINING_FILES if not (Path(model_dir) / name).is_file()]
    if missing:
        return (f"VOICEFORGE_MODEL_DIR={model_dir} has no {', '.join(missing)}, which fine-tuning needs "
                "beside the release files (coqui's XTTS-v2 training recipe provides them).")
    return None


def prepare_dataset(runtime: Runtime, job: Job, work: Path, beat: Callable[..., None]) -> Path:
    """Cut the recordings into transcribed clips once; a resumed job reuses them."""
    dataset_dir = work / "dataset"
    if (dataset_dir / TRAIN_METADATA).is_file():
        return dataset_dir
    beat(force=True, progress=0.0, message="Preparing the dataset: cutting clips and transcribing…")
    transcriber = None
    if runtime.settings.asr_model:
        from voiceforge.finetune.asr import Transcriber

        transcriber = Transcriber(runtime.settings.asr_model)
    staging = work / f"{TEMP_PREFIX}dataset"
    remove_path(staging)
    # A beat for each recording: cutting and transcribing many long ones takes minutes, and a cancel
    # or a shutdown must not wait for all of them.
    dataset = build_dataset(stored_recordings(work), staging, language=job.params["language"],
                            transcriber=transcriber, max_seconds=runtime.settings.finetune_max_sample_seconds,
                            between=lambda: beat(force=True))
    staging.rename(dataset_dir)
    beat(force=True, progress=DATASET_SHARE, dataset_seconds=dataset.speech_seconds,
         message=f"Dataset ready: {len(dataset.clips)} clips, {dataset.speech_seconds:.0f} s of speech.")
    return dataset_dir


def train(runtime: Runtime, job: Job, base: Path, dataset_dir: Path, work: Path,
          beat: Callable[..., None]) -> Path:
    """Train in a child process, reporting progress; the final trainer checkpoint."""
    from voiceforge.finetune.train import TrainingPlan, start_training

    # A voice fine-tuned before goes on from its own weights, not from the base model's.
    weights = voices.get_voice(job.voice_id).weights_path
    plan = TrainingPlan(base_dir=base, dataset_dir=dataset_dir, language=job.params["language"],
                        run_dir=work / "run", epochs=job.epochs, learning_rate=job.params["learningRate"],
                        save_every=int(job.params.get("saveEvery", 100)), device=runtime.settings.device,
                        start_gpt=runtime.settings.data_dir / weights if weights else None)
    process = start_training(plan)
    first: tuple[float, int] | None = None  # (when, step) of this run's first progress report
    try:
        while True:
            events = process.poll(timeout=1.0)
            for event in events:
                if event.get("event") == "started" and event.get("resumed_from"):
                    log.info("job %s: training resumed from checkpoint %s", job.id, event["resumed_from"])
            progress = [event for event in events if "step" in event]
            if progress:
                first = first or (time.monotonic(), int(progress[0].get("step") or 0))
                beat(**progress_fields(progress[-1], first))
            else:
                beat()  # renews the lease, and notices a cancel or a shutdown
            if not process.alive:
                process.join()
                break
    except ShuttingDown:
        # The trainer saves what it trained since its last checkpoint, if its step ends in time.
        if process.stop(runtime.settings.job_stop_seconds):
            log.info("job %s: training stopped with a checkpoint of every step done", job.id)
        raise
    except BaseException:
        # Cancelled, lease lost, or anything else (a database error while recording progress): SIGTERM,
        # coqui's trainer stops at once and saves nothing. A cancelled or failed job's files go, and a
        # lost lease means another runner's trainer resumes this run: two must not write to it, and a
        # trainer left running would train on beside this runner's next job.
        process.terminate()
        raise
    if process.exitcode != 0 or process.checkpoint is None:
        reason = process.error or f"the trainer exited with {process.exitcode}"
        raise RuntimeError(f"Training failed: {reason}{keep_log(work)}")
    return process.checkpoint


def keep_log(work: Path) -> str:
    """Move a failed run's log out of run/, which the failure removes; a note saying where it is now."""
    kept = work / TRAIN_LOG
    try:
        os.replace(work / "run" / TRAIN_LOG, kept)
    except OSError:  # none written (the trainer failed before it began), or it cannot be moved
        return ""
    return f" (the trainer's log: {kept})"


def progress_fields(event: dict[str, Any], first: tuple[float, int]) -> dict[str, Any]:
    """Job columns from a training progress event, with an estimate of the time left.

    The pace is that of the steps trained since this run's first report (`first`: when, and its step):
    a run resumed half done has not trained the first half in the time since it started.
    """
    steps = max(1, int(event.get("steps") or 1))
    step = min(steps, int(event.get("step") or 0))
    share = step / steps
    since, trained = time.monotonic() - first[0], step - first[1]
    left = ""
    if trained > 0 and step < steps:
        left = f", about {since / trained * (steps - step) / 60:.0f} min left"
    loss = event.get("loss")
    return {"step": step, "steps": steps, "epoch": int(event.get("epoch") or 0),
            "loss": float(loss) if loss is not None else None,
            "progress": DATASET_SHARE + TRAINING_SHARE * share,
            "message": f"Training: epoch {event.get('epoch', 0)}/{event.get('epochs', '?')}, "
                       f"step {step}/{steps}{left}."}


def switch_voice(runtime: Runtime, job: Job, checkpoint: Path) -> None:
    """Export the GPT weights, recompute the voice's latent with them, then switch it in one commit.

    The new files get names of their own, so until the commit the voice keeps speaking zero-shot
    from its old ones; a full disk fails the job and changes nothing.
    """
    from voiceforge.finetune.export import export_gpt
    from voiceforge.services.engine import Latents

    voice = voices.get_voice(job.voice_id)
    data_dir = runtime.settings.data_dir
    directory = data_dir / voice.id
    if not directory.is_dir():  # deleted since it was read (the row goes first): never make it again
        raise RuntimeError(f"Voice {voice.id} has no directory any more (deleted?); nothing was changed.")
    weights_name, latents_name = f"gpt-{job.id[:12]}.pth", f"latents-{job.id[:12]}.pth"
    old = [voice.latents_path, voice.weights_path]
    try:
        export_gpt(checkpoint, directory / weights_name)
        recording = (data_dir / voice.reference_path).read_bytes()
        reference = decode_audio(recording, target_rate=CONDITIONING_RATE,
                                 max_seconds=runtime.settings.max_reference_seconds)
        fine_tuned = runtime.engine.compute_latents(reference, weights=str(directory / weights_name))
        zero_shot = Latents.load(data_dir / voice.latents_path)
        # The speaker embedding belongs to HiFiGAN's speaker encoder, which fine-tuning leaves alone.
        latents = Latents(fine_tuned.gpt_cond_latent, zero_shot.speaker_embedding)
        write_file_atomic(directory / latents_name, latents.to_bytes())
    except OSError as error:
        for name in (weights_name, latents_name):
            remove_path(directory / name)
        raise RuntimeError(storage_error(error).detail) from error
    voices.set_finetuned(voice, f"{voice.id}/{weights_name}", f"{voice.id}/{latents_name}")
    for path in old:
        if path and path not in (voice.latents_path, voice.weights_path):
            remove_path(data_dir / path)
    log.info("voice %s now speaks with fine-tuned weights %s", voice.id, weights_name)
