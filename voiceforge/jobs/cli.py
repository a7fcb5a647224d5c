"""`flask jobs …` (list, show, cancel, retry, worker) and `flask voices finetune`."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click
from flask import current_app
from flask.cli import with_appcontext

from voiceforge.commands import CommandGroup
from voiceforge.config import MAX_EPOCHS
from voiceforge.schemas import JobSchema

if TYPE_CHECKING:
    from voiceforge.jobs.runner import JobRunner

log = logging.getLogger(__name__)

PARENT_POLL_SECONDS = 1.0  # how soon a supervised runner notices that its parent died
QUEUED_HINT_S = 30.0  # `voices finetune --wait` asks whether a runner is running after this long queued

jobs_cli = CommandGroup("jobs", help="Fine-tuning jobs: list, inspect, cancel, retry, and run a worker.")
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def _line(job: dict) -> str:
    loss = f"{job['loss']:.3f}" if job.get("loss") is not None else "-"
    return (f"{job['id']}  {job['voiceId']:<24} {job['state']:<9} {job['progress'] * 100:5.1f}%  "
            f"epoch {job['epoch']}/{job['epochs']}  step {job['step']}/{job['steps']}  loss {loss}  "
            f"{job.get('error') or job.get('message') or ''}")


@jobs_cli.command("list")
@click.option("--voice", "voice_id", default=None, help="Only this voice's jobs.")
@click.option("--state", type=click.Choice(["queued", "running", "succeeded", "failed", "cancelled"]))
@json_option
def jobs_list(voice_id: str | None, state: str | None, as_json: bool) -> None:
    """List jobs, newest first."""
    from voiceforge.jobs import store
    from voiceforge.models import JobState

    jobs = JobSchema(many=True).dump(store.list_jobs(voice_id, JobState(state) if state else None))
    if as_json:
        click.echo(json.dumps(jobs, indent=2))
    elif not jobs:
        click.echo("No jobs.")
    else:
        for job in jobs:
            click.echo(_line(job))


@jobs_cli.command("show")
@click.argument("job_id")
@json_option
def jobs_show(job_id: str, as_json: bool) -> None:
    """Show one job."""
    from voiceforge.jobs import store

    job = JobSchema().dump(store.get_job(job_id))
    if as_json:
        click.echo(json.dumps(job, indent=2))
    else:
        for key, value in job.items():
            click.echo(f"{key:>14}: {'' if value is None else value}")


@jobs_cli.command("cancel")
@click.argument("job_id")
def jobs_cancel(job_id: str) -> None:
    """Cancel a job (a running one stops within seconds)."""
    from voiceforge.jobs import store
    from voiceforge.runtime import get_runtime
    from voiceforge.services.finetuning import cancel_job

    job = store.get_job(job_id)
    already = job.state.finished
    cancel_job(get_runtime(), job)
    note = " (it had already ended: nothing to cancel)" if already else ""
    click.echo(f"{job.id}: {job.state.value}{' (stopping)' if job.cancel_requested else ''}{note}")


@jobs_cli.command("retry")
@click.argument("job_id")
def jobs_retry(job_id: str) -> None:
    """Queue a failed job again, or send the task of a queued one, or of one whose runner died, again
    (a cancelled job cannot be retried)."""
    from voiceforge.jobs import store
    from voiceforge.models import JobState
    from voiceforge.runtime import get_runtime
    from voiceforge.services.finetuning import retry_job

    job = retry_job(get_runtime(), store.get_job(job_id))
    if job.state == JobState.running:
        click.echo(f"{job.id}: its runner had stopped; the next free runner resumes it from its checkpoint")
    else:
        click.echo(f"{job.id}: queued again")


@jobs_cli.command("worker")
@click.option("--parent-pid", type=int, default=None,
              help="Stop, as on SIGTERM, once this process is no longer the parent (gunicorn's master "
                   "passes its own pid).")
def jobs_worker(parent_pid: int | None) -> None:
    """Run a job runner here until SIGTERM/SIGINT (needs the same database and data directory)."""
    from voiceforge.jobs.runner import JobRunner
    from voiceforge.logs import configure_logging
    from voiceforge.runtime import get_runtime

    # Its own process (gunicorn's master starts it with the same stderr): log like the service does.
    settings = get_runtime().settings
    if settings.job_backend != "db":  # it would claim jobs meant for the Celery workers, training here
        raise click.ClickException(
            f"VOICEFORGE_JOB_BACKEND={settings.job_backend}: Celery workers run the jobs (`celery -A "
            "voiceforge.jobs.celery_backend worker -Q voiceforge`, see README); `flask jobs worker` is the "
            "database backend's runner.")
    configure_logging(settings.log_level, settings.log_format, install_handler=True)
    runner = JobRunner(current_app._get_current_object())  # type: ignore[attr-defined]

    def stop(_signum: int, _frame: object) -> None:
        runner.stop()  # running jobs checkpoint and are given back

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if parent_pid is not None:
        _stop_when_orphaned(runner, parent_pid)
    runner.run_forever()


def _stop_when_orphaned(runner: JobRunner, parent_pid: int) -> None:
    """Stop the runner as SIGTERM does once parent_pid is no longer this process's parent."""
    # A dead parent's children are re-parented (to init or a subreaper), so getppid() changes: a poll
    # that a pid reused by another process cannot fool, and portable. PR_SET_PDEATHSIG would need
    # ctypes and a preexec_fn in a threaded master, and fires when the *thread* that started us ends.
    # Comparing with the pid given (not getppid() at start) also catches a parent that died already.
    def watch() -> None:
        while not runner.stopping.wait(PARENT_POLL_SECONDS):
            if os.getppid() != parent_pid:
                log.warning("job runner: its parent process %d is gone; stopping", parent_pid)
                runner.stop()  # as SIGTERM does: running jobs stop and are given back
                return

    threading.Thread(target=watch, name="voiceforge-parent-watch", daemon=True).start()


@click.command("finetune")
@with_appcontext  # added to the `voices` group from here, so not wrapped by AppGroup.command
@click.argument("voice_id")
@click.argument("files", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--transcripts", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CSV of file,text (what each recording says); the file by its path relative to the CSV's "
                   "folder or as given here, or by its base name when no other file given has it.")
@click.option("--epochs", type=click.IntRange(1, MAX_EPOCHS), default=None)
@click.option("--wait", is_flag=True, help="Follow the job with a progress bar until it ends.")
def voices_finetune(voice_id: str, files: tuple[Path, ...], transcripts: Path | None,
                    epochs: int | None, wait: bool) -> None:
    """Fine-tune a cloned voice on more recordings of it."""
    from voiceforge.db import db
    from voiceforge.finetune.dataset import Recording
    from voiceforge.jobs import store
    from voiceforge.models import JobState
    from voiceforge.runtime import get_runtime
    from voiceforge.services import finetuning
    from voiceforge.services.storage import read_regular_file

    texts = _read_transcripts(transcripts, files) if transcripts else {}
    runtime = get_runtime()
    voice = finetuning.finetunable_voice(voice_id)
    recordings = [Recording(read_regular_file(path, runtime.settings.max_audio_bytes),
                            finetuning.clean_transcript(texts.get(path.resolve()))) for path in files]
    job = finetuning.fine_tune_voice(runtime, voice, recordings, epochs)
    seconds = job.dataset_seconds or 0.0
    click.echo(f"Queued job {job.id} ({seconds:.0f} s of speech).")
    if not wait:
        return
    hint_at, hinted = time.monotonic() + QUEUED_HINT_S, False
    with click.progressbar(length=1000, label="fine-tuning", show_eta=True) as bar:
        shown = 0
        while True:
            db.session.expire_all()  # read the runner's writes, not our cached row
            job = store.get_job(job.id)
            done = int(job.progress * 1000)
            bar.update(done - shown)
            shown = done
            if job.state.finished:
                break
            if job.state == JobState.queued and not hinted and time.monotonic() > hint_at:
                hinted = True  # without a runner this would wait for ever, without a word
                click.echo(f"\nStill queued after {QUEUED_HINT_S:.0f} s: is a job runner running? gunicorn "
                           "(`make run`) starts one unless VOICEFORGE_JOB_RUNNER=false; otherwise run "
                           "`flask --app voiceforge jobs worker` (with the Celery backend, a Celery worker).",
                           err=True)
            time.sleep(1.0)
    if job.state.value != "succeeded":
        raise click.ClickException(f"{job.state.value}: {job.error or job.message or ''}")
    click.echo(f"{job.state.value}: {job.message or ''}")


def _read_transcripts(path: Path, files: tuple[Path, ...]) -> dict[Path, str]:
    """`file,text` rows (a header row or Excel's byte-order mark is fine), by each given file's real path."""
    import csv

    texts: dict[Path, str] = {}
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle, strict=True)
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue
                where = f"{path}, line {reader.line_num}"
                if len(row) < 2:
                    raise click.ClickException(f"{where}: expected `file name,text`.")
                name = row[0].strip()
                file = _transcribed_file(name, path.parent, files, where)
                if file is None:
                    if not texts and name.lower() in ("file", "filename", "file name", "path"):
                        continue  # a header row
                    raise click.ClickException(f"{where}: {name!r} is not among the files given.")
                texts[file] = row[1]
    except UnicodeDecodeError:
        raise click.ClickException(f"{path} is not UTF-8 text.") from None
    except csv.Error as error:
        raise click.ClickException(f"{path} is not valid CSV: {error}.") from None
    return texts


def _transcribed_file(name: str, folder: Path, files: tuple[Path, ...], where: str) -> Path | None:
    """The given file (resolved) that a CSV row names: by its path relative to the CSV's folder, else as
    given on the command line, else by its base name if no other file given has it; None if none."""
    given = {file.resolve(): file for file in files}  # the same file given twice is one recording
    for candidate in (folder / name, Path(name)):  # an absolute path is itself either way
        if candidate.resolve() in given:
            return candidate.resolve()
    # Two recordings in different folders may share a base name: one text for both would be wrong.
    same_name = [resolved for resolved in given if resolved.name == Path(name).name]
    if len(same_name) > 1:
        clash = ", ".join(str(given[resolved]) for resolved in same_name)
        raise click.ClickException(f"{where}: {name!r} could be any of {clash}; name each by its path "
                                   "relative to the CSV's folder.")
    return same_name[0] if same_name else None
