"""The voice registry: every read and write of voices and their files goes through here."""

from __future__ import annotations

import logging
import re
import secrets
import shutil
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from flask import Flask
from sqlalchemy import inspect, select

from voiceforge.db import db
from voiceforge.errors import Conflict, NotFound, Unprocessable
from voiceforge.models import Voice, VoiceKind, VoiceStatus

log = logging.getLogger(__name__)

VOICE_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
MAX_NAME_LENGTH = 100
BUILTIN_PREFIX = "default-"  # ids of the model's own speakers; cloned ids never start with it
TEMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"


@dataclass(frozen=True)
class BuiltinVoice:
    """A speaker shipped inside the XTTS checkpoint; shaped like a Voice row for listing."""

    id: str
    name: str
    language: str | None = None
    kind: VoiceKind = VoiceKind.builtin
    status: VoiceStatus = VoiceStatus.ready
    error: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass
class ReconcileReport:
    """What a reconcile found and repaired."""

    missing_files: list[str] = field(default_factory=list)  # rows marked failed
    stale_rows: list[str] = field(default_factory=list)  # unfinished rows marked failed
    orphan_dirs: list[str] = field(default_factory=list)  # directories removed
    temp_dirs: list[str] = field(default_factory=list)  # interrupted writes removed

    @property
    def changed(self) -> bool:
        return any((self.missing_files, self.stale_rows, self.orphan_dirs, self.temp_dirs))


def clean_name(name: str) -> str:
    """Validate a display name: trimmed, printable, 1..100 characters."""
    cleaned = unicodedata.normalize("NFC", name).strip()
    if not cleaned:
        raise Unprocessable("Voice name must not be empty.")
    if len(cleaned) > MAX_NAME_LENGTH:
        raise Unprocessable(f"Voice name is longer than {MAX_NAME_LENGTH} characters.")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn") for ch in cleaned):
        raise Unprocessable("Voice name contains control or invisible characters.")
    return cleaned


def slugify(text: str, max_length: int = 40) -> str:
    """ASCII, lower-case, hyphen-separated slug of `text` (may be empty)."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    return slug[:max_length].rstrip("-")


def new_voice_id(name: str) -> str:
    """URL-safe id from the name plus a random suffix; never in the built-in `default-` namespace."""
    slug = slugify(name) or "voice"
    if slug == "default" or slug.startswith(BUILTIN_PREFIX):
        slug = f"voice-{slug}"[:40].rstrip("-")
    return f"{slug}-{secrets.token_hex(4)}"


def is_valid_id(voice_id: str) -> bool:
    return bool(VOICE_ID.match(voice_id))


def voice_dir(data_dir: Path, voice_id: str) -> Path:
    """The directory of a voice's files; refuses ids that could escape DATA_DIR."""
    if not is_valid_id(voice_id):
        raise NotFound(f"Voice {voice_id[:80]!r} not found.")
    return data_dir / voice_id


def list_voices() -> list[Voice]:
    return list(db.session.scalars(select(Voice).order_by(Voice.created_at, Voice.id)))


def find_voice(voice_id: str) -> Voice | None:
    if not is_valid_id(voice_id):
        return None
    return db.session.get(Voice, voice_id)


def get_voice(voice_id: str) -> Voice:
    voice = find_voice(voice_id)
    if voice is None:
        raise NotFound(f"Voice {voice_id[:80]!r} not found.")
    return voice


def add_ready_voice(voice_id: str, name: str, language: str, kind: VoiceKind,
                    reference_path: str, latents_path: str) -> Voice:
    """Insert a voice whose files are already in place (the caller wrote them first)."""
    voice = Voice(id=voice_id, name=name, language=language, kind=kind, status=VoiceStatus.ready,
                  reference_path=reference_path, latents_path=latents_path)
    db.session.add(voice)
    commit()
    log.info("voice %s added (%s, %s)", voice_id, kind.value, language)
    return voice


def refuse_builtin(voice_id: str) -> None:
    """Built-in speakers live in the model checkpoint: they cannot be renamed or deleted."""
    if voice_id.startswith(BUILTIN_PREFIX):
        raise Conflict(f"{voice_id[:80]!r} is a built-in voice of the model; it cannot be changed.")


def rename_voice(voice_id: str, name: str) -> Voice:
    refuse_builtin(voice_id)
    voice = get_voice(voice_id)
    voice.name = clean_name(name)
    commit()
    return voice


def delete_voice(voice_id: str, data_dir: Path) -> None:
    """Remove the row and its files together: files move aside first and return if the row stays."""
    refuse_builtin(voice_id)
    voice = get_voice(voice_id)
    directory = voice_dir(data_dir, voice_id)
    trash = data_dir / f"{TRASH_PREFIX}{voice_id}-{secrets.token_hex(3)}"
    moved = directory.exists()
    if moved:
        directory.rename(trash)
    try:
        db.session.delete(voice)
        commit()
    except BaseException:
        if moved:
            trash.rename(directory)
        raise
    if moved:
        shutil.rmtree(trash, ignore_errors=True)
    log.info("voice %s deleted", voice_id)


def commit() -> None:
    """Commit, or roll back and re-raise (the error handler turns a locked database into a 503)."""
    try:
        db.session.commit()
    except BaseException:
        db.session.rollback()
        raise


def reconcile(data_dir: Path, *, repair: bool = True) -> ReconcileReport:
    """Make the registry and the files agree after a crash: no row without files, no file without row."""
    report = ReconcileReport()
    voices = {voice.id: voice for voice in list_voices()}
    for voice in voices.values():
        if voice.kind == VoiceKind.builtin:
            continue
        if voice.status == VoiceStatus.ready and not _files_present(data_dir, voice):
            report.missing_files.append(voice.id)
            if repair:
                voice.status, voice.error = VoiceStatus.failed, "Voice files are missing."
        elif voice.status in (VoiceStatus.pending, VoiceStatus.processing):
            # Enrolment is synchronous: after a restart nothing is still working on these rows.
            report.stale_rows.append(voice.id)
            if repair:
                voice.status, voice.error = VoiceStatus.failed, "Interrupted by a restart."
    if data_dir.is_dir():
        for entry in sorted(data_dir.iterdir()):
            if entry.name.startswith((TEMP_PREFIX, TRASH_PREFIX)):
                report.temp_dirs.append(entry.name)
            elif entry.name not in voices:
                report.orphan_dirs.append(entry.name)
            else:
                continue
            if repair:
                _remove(entry)
    if repair and report.changed:
        commit()
    return report


def _files_present(data_dir: Path, voice: Voice) -> bool:
    paths = [voice.reference_path, voice.latents_path]
    return all(path and (data_dir / path).is_file() for path in paths)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def reconcile_at_startup(app: Flask) -> ReconcileReport | None:
    """Run reconcile once before serving (gunicorn's master calls this before forking workers)."""
    with app.app_context():
        if not inspect(db.engine).has_table(Voice.__tablename__):
            log.warning("voices table missing: run `flask --app voiceforge db upgrade`")
            return None
        report = reconcile(Path(app.config["DATA_DIR"]))
    if report.changed:
        log.warning("startup reconcile repaired: missing files %s, interrupted %s, orphans %s, temp %s",
                    report.missing_files, report.stale_rows, report.orphan_dirs, report.temp_dirs)
    return report
