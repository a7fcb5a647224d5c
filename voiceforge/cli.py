"""`flask voices …` and `flask model …`: voice admin and model management on the same services."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import click
from flask import Flask

from voiceforge.commands import CommandGroup
from voiceforge.jobs.cli import jobs_cli, voices_finetune
from voiceforge.runtime import get_runtime
from voiceforge.schemas import VoiceSchema
from voiceforge.services.voices import RECONCILE_MIN_AGE_S

voices_cli = CommandGroup("voices", help="Manage the voice registry.")
model_cli = CommandGroup("model", help="Inspect, download and warm up the XTTS-v2 model.")
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
voices_cli.add_command(voices_finetune)


def register_cli(app: Flask) -> None:
    app.cli.add_command(voices_cli)
    app.cli.add_command(model_cli)
    app.cli.add_command(jobs_cli)


def _data_dir() -> Path:
    return get_runtime().settings.data_dir


def _echo_voices(rows: list[Any], as_json: bool) -> None:
    dumped = VoiceSchema(many=True).dump(rows)
    if as_json:
        click.echo(json.dumps(dumped, indent=2))
        return
    if not dumped:
        click.echo("No voices.")
        return
    columns = ("id", "name", "language", "kind", "status", "createdAt")
    table = [[str(row.get(column) or "") for column in columns] for row in dumped]
    widths = [max(len(column), *(len(line[i]) for line in table)) for i, column in enumerate(columns)]
    click.echo("  ".join(column.upper().ljust(width) for column, width in zip(columns, widths, strict=True)))
    for line in table:
        click.echo("  ".join(value.ljust(width) for value, width in zip(line, widths, strict=True)).rstrip())


@voices_cli.command("list")
@click.option("--builtin", is_flag=True, help="Include the model's built-in speakers.")
@json_option
def voices_list(builtin: bool, as_json: bool) -> None:
    """List voices."""
    from voiceforge.services import voices

    rows = voices.list_voices() + (get_runtime().catalogue.builtin_voices() if builtin else [])
    _echo_voices(rows, as_json)


@voices_cli.command("show")
@click.argument("voice_id")
@json_option
def voices_show(voice_id: str, as_json: bool) -> None:
    """Show one voice (a cloned one, or a built-in speaker or alias)."""
    from voiceforge.services.catalogue import BuiltinVoice

    voice = get_runtime().catalogue.describe(voice_id)  # what GET /api/voices/<id> shows
    dumped = VoiceSchema().dump(voice)
    if isinstance(voice, BuiltinVoice):
        dumped["speaker"] = voice.speaker
    else:
        dumped["referencePath"] = voice.reference_path
        dumped["latentsPath"] = voice.latents_path
    if as_json:
        click.echo(json.dumps(dumped, indent=2))
    else:
        for key, value in dumped.items():
            click.echo(f"{key:>13}: {'' if value is None else value}")


@voices_cli.command("rename")
@click.argument("voice_id")
@click.argument("name")
def voices_rename(voice_id: str, name: str) -> None:
    """Rename a voice."""
    from voiceforge.services import voices

    voice = voices.rename_voice(voice_id, name)
    click.echo(f"Renamed {voice.id} to {voice.name!r}.")


@voices_cli.command("remove")
@click.argument("voice_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def voices_remove(voice_id: str, yes: bool) -> None:
    """Delete a voice and its files."""
    from voiceforge.services import voices

    voices.refuse_builtin(voice_id)  # says why, where the registry lookup would say "not found"
    voice = voices.get_voice(voice_id)
    if not yes:
        click.confirm(f"Delete voice {voice.id} ({voice.name!r}) and its files?", abort=True)
    voices.delete_voice(voice_id, _data_dir())
    click.echo(f"Removed {voice_id}.")


@voices_cli.command("add")
@click.argument("name")
@click.argument("audio_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--language", default=None, help="The voice's language (XTTS code, e.g. en, ru, zh-cn).")
@json_option
def voices_add(name: str, audio_file: Path, language: str | None, as_json: bool) -> None:
    """Clone a voice from an audio file (any format FFmpeg reads, at least 3 s of speech)."""
    from voiceforge.services.storage import read_regular_file
    from voiceforge.services.training import enrol_voice

    runtime = get_runtime()
    audio = read_regular_file(audio_file, runtime.settings.max_audio_bytes)
    voice = enrol_voice(runtime, name, audio, language)
    if as_json:
        click.echo(json.dumps(VoiceSchema().dump(voice), indent=2))
    else:
        click.echo(f"Added voice {voice.id} ({voice.name!r}, {voice.language}).")


@voices_cli.command("reconcile")
@click.option("--dry-run", is_flag=True, help="Report only; change nothing.")
@click.option("--min-age", type=click.FloatRange(min=0), default=RECONCILE_MIN_AGE_S, show_default=True,
              callback=lambda _ctx, _param, value: _finite(value),
              help="Leave stray directories changed in the last SECONDS (another instance may be writing "
                   "them); 0 when no instance is running.")
@click.option("--force", is_flag=True,
              help="Repair even when more voices disagree than agree (check the data directory and the "
                   "database first: a wrong one of either looks like that).")
def voices_reconcile(dry_run: bool, min_age: float, force: bool) -> None:
    """Make the registry and the voice files agree after a crash."""
    from voiceforge.services import voices

    report = voices.reconcile(_data_dir(), repair=not dry_run, min_age_s=min_age, force=force)
    verb = "found" if dry_run else "held back" if report.held_back else "repaired"
    click.echo(f"rows missing files ({verb}: marked failed): {', '.join(report.missing_files) or '-'}")
    click.echo(f"orphan directories ({verb}: removed): {', '.join(report.orphan_dirs) or '-'}")
    verb = "found" if dry_run else "repaired"
    click.echo(f"files back ({verb}: ready again): {', '.join(report.restored) or '-'}")
    click.echo(f"interrupted rows ({verb}: marked failed): {', '.join(report.stale_rows) or '-'}")
    click.echo(f"unfinished writes and deletes ({verb}: removed): {', '.join(report.temp_dirs) or '-'}")
    if report.young_dirs:
        click.echo(f"recent strays (left: changed under {min_age:g} s ago): {', '.join(report.young_dirs)}")
    if report.foreign:
        click.echo(f"not this service's (left alone): {', '.join(report.foreign)}")
    if report.held_back:
        raise click.ClickException(
            f"{report.held_back}: that looks like a wrong data directory or database, not a crash, so no "
            "row was failed and no voice directory removed. Check VOICEFORGE_DATA_DIR and "
            "VOICEFORGE_DATABASE_URL; if both are right, run again with --force.")
    if not report.changed:
        click.echo("Registry and files agree.")


def _finite(seconds: float) -> float:
    if not math.isfinite(seconds):  # FloatRange lets NaN through, and NaN would act as 0
        raise click.BadParameter(f"{seconds} is not a number of seconds.")
    return seconds


@model_cli.command("info")
@json_option
def model_info(as_json: bool) -> None:
    """Where the model comes from and whether it is available (does not load it)."""
    engine = get_runtime().engine
    info = {**engine.describe(), "deviceSetting": engine.settings.device,
            "modelDir": engine.settings.model_dir, "modelName": engine.settings.model_name,
            "licenceAgreed": os.environ.get("COQUI_TOS_AGREED") == "1",
            "builtinSpeakers": len(engine.speaker_names(load=False))}
    info["available"] = info["loadable"]
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            click.echo(f"{key:>16}: {value}")
    if not info["available"]:
        raise SystemExit(1)  # scripts and health checks can test the exit status


@model_cli.command("download")
@click.option("--agree-license", is_flag=True,
              help="Accept the Coqui Public Model License (non-commercial) without a prompt.")
def model_download(agree_license: bool) -> None:
    """Download the official XTTS-v2 (about 1.8 GB) with a progress bar."""
    from voiceforge.services.engine import download_official

    if os.environ.get("COQUI_TOS_AGREED") != "1":
        if not agree_license:
            click.confirm("XTTS-v2 is under the Coqui Public Model License (non-commercial use; "
                          "https://coqui.ai/cpml). Do you agree?", abort=True)
        os.environ["COQUI_TOS_AGREED"] = "1"
    path = download_official(get_runtime().settings.model_name, progress=True)
    click.echo(f"Model ready in {path}")
    click.echo(f"Run the service with VOICEFORGE_MODEL_DIR={path} (or keep COQUI_TOS_AGREED=1).")


@model_cli.command("warmup")
@click.option("--text", default="Hello, this is VoiceForge.", show_default=True)
@click.option("--language", default=None)
def model_warmup(text: str, language: str | None) -> None:
    """Load the model and speak one short sentence with the default speaker."""
    from voiceforge.services import synthesis

    runtime = get_runtime()
    started = time.perf_counter()
    speech = synthesis.prepare(runtime, text, "default-speaker", variability=0.0, language=language)
    audio = speech.audio()
    click.echo(f"Warm: {audio.size / synthesis.OUTPUT_RATE:.2f} s of audio in "
               f"{time.perf_counter() - started:.1f} s on {runtime.engine.describe()['device']}.")
    sys.stdout.flush()
