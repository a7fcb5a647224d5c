"""The voice registry: every read and write of voices and their files goes through here."""

from __future__ import annotations

import logging
import re
import secrets
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from flask import Flask
from sqlalchemy import delete, select
from sqlalchemy.orm.exc import StaleDataError

from voiceforge.db import NotMigrated, db, schema_problem
from voiceforge.errors import Conflict, NotFound, Unprocessable
from voiceforge.models import Voice, VoiceKind, VoiceStatus
from voiceforge.services.storage import (
    JOBS_DIR,
    TEMP_PREFIX,
    TRASH_PREFIX,
    check_writable,
    is_service_entry,
    is_valid_id,
    missing_data_dir,
    remove_path,
    remove_voice_dir,
)

log = logging.getLogger(__name__)

MAX_NAME_LENGTH = 100
BUILTIN_PREFIX = "default-"  # ids of the model's own speakers; cloned ids never start with it
# A directory changed more recently than this may be another instance's enrolment in progress on a
# shared data directory (being staged, or renamed into place a moment before its row is committed):
# reconcile leaves it to a later run rather than pull files from under a live write.
RECONCILE_MIN_AGE_S = 600.0
MISSING_FILES = "Voice files are missing."  # a failed row's error that reconcile undoes once they are back


@dataclass
class ReconcileReport:
    """What a reconcile found and repaired."""

    missing_files: list[str] = field(default_factory=list)  # rows marked failed (unless held back)
    restored: list[str] = field(default_factory=list)  # failed for missing files, now back: ready again
    stale_rows: list[str] = field(default_factory=list)  # unfinished rows marked failed
    orphan_dirs: list[str] = field(default_factory=list)  # rowless directories removed (unless held back)
    temp_dirs: list[str] = field(default_factory=list)  # interrupted writes and deletes removed
    young_dirs: list[str] = field(default_factory=list)  # stray but recent: left for a later reconcile
    foreign: list[str] = field(default_factory=list)  # entries this service never makes: never touched
    # Why missing_files and orphan_dirs were left alone: the registry and the files look unrelated.
    held_back: str | None = None

    @property
    def changed(self) -> bool:
        guarded = () if self.held_back else (self.missing_files, self.orphan_dirs)
        return any((*guarded, self.restored, self.stale_rows, self.temp_dirs))


# Invisible on their own, but parts of emoji: the zero-width joiner (👩‍💻) and the tag characters of
# subdivision flags (🏴󠁧󠁢󠁳󠁣󠁴󠁿, which ends with one).
_ZWJ = "\u200d"
_EMOJI_JOINERS = frozenset([_ZWJ, *map(chr, range(0xE0020, 0xE0080))])
# Controls, format characters, surrogates, private use, unassigned; line and paragraph separators.
_INVISIBLE = ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")


def clean_name(name: str) -> str:
    """Validate a display name: trimmed, printable, 1..100 characters."""
    cleaned = unicodedata.normalize("NFC", name).strip()
    if not cleaned:
        raise Unprocessable("Voice name must not be empty.")
    if len(cleaned) > MAX_NAME_LENGTH:
        raise Unprocessable(f"Voice name is longer than {MAX_NAME_LENGTH} characters.")
    invisible = [ch for ch in cleaned if unicodedata.category(ch) in _INVISIBLE and ch not in _EMOJI_JOINERS]
    if invisible or cleaned[0] in _EMOJI_JOINERS or cleaned[-1] == _ZWJ:  # a joiner must join something
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


def list_voices() -> list[Voice]:
    return list(db.session.scalars(select(Voice).order_by(Voice.created_at, Voice.id)))


def find_voice(voice_id: str) -> Voice | None:
    if not is_valid_id(voice_id):
        return None
    return db.session.get(Voice, voice_id)


def any_voice_with_files() -> bool:
    """Whether some voice is ready with files in the data directory (a cloned or fine-tuned one)."""
    ready = select(Voice.id).where(Voice.kind != VoiceKind.builtin, Voice.status == VoiceStatus.ready)
    return db.session.scalar(ready.limit(1)) is not None


def data_dir_missing(data_dir: Path) -> bool:
    """Whether voices are registered but their data directory is not there (an unmounted volume, a wrong
    VOICEFORGE_DATA_DIR). A fresh install has none until its first enrolment makes it."""
    return not data_dir.is_dir() and any_voice_with_files()


def require_data_dir(data_dir: Path) -> None:
    """503 when the data directory is missing under registered voices: making it anew for a new voice's
    files would hide an unmounted volume, and those files would vanish under it once mounted."""
    if data_dir_missing(data_dir):
        raise missing_data_dir(data_dir)


def still_exists(voice: Voice) -> bool:
    """Whether a voice read earlier in this request is still in the database (not deleted since)."""
    return db.session.scalar(select(Voice.id).where(Voice.id == voice.id)) is not None


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


def set_finetuned(voice: Voice, weights_path: str, latents_path: str) -> Voice:
    """Switch a voice to its fine-tuned GPT weights and latent, in one commit (files already in place)."""
    voice.kind, voice.weights_path, voice.latents_path = VoiceKind.finetuned, weights_path, latents_path
    commit()
    return voice


def refuse_builtin(voice_id: str) -> None:
    """Built-in speakers live in the model checkpoint: they cannot be renamed or deleted."""
    if voice_id.startswith(BUILTIN_PREFIX):
        raise Conflict(f"{voice_id[:80]!r} is a built-in voice of the model; it cannot be changed.")


def rename_voice(voice_id: str, name: str) -> Voice:
    refuse_builtin(voice_id)
    voice = get_voice(voice_id)
    voice.name = clean_name(name)
    try:
        commit()
    except StaleDataError:  # deleted by another request since it was read
        raise NotFound(f"Voice {voice_id[:80]!r} not found.") from None
    return voice


def delete_voice(voice_id: str, data_dir: Path) -> None:
    """Remove the row, then its files: a crash in between leaves files without a row, never the reverse.

    Its fine-tuning jobs go too (the database cascades): a running one sees its row gone at its next
    heartbeat and stops.
    """
    refuse_builtin(voice_id)
    voice = get_voice(voice_id)
    job_dirs = [data_dir / JOBS_DIR / job.id for job in voice.jobs]
    check_writable(data_dir)
    deleted = db.session.execute(delete(Voice).where(Voice.id == voice.id)).rowcount
    commit()
    if not deleted:  # another request deleted it since it was read: that one removes the files
        raise NotFound(f"Voice {voice_id[:80]!r} not found.")
    remove_voice_dir(data_dir, voice_id)
    for directory in job_dirs:
        remove_path(directory)
    log.info("voice %s deleted", voice_id)


def commit() -> None:
    """Commit, or roll back and re-raise (the error handler turns a locked database into a 503)."""
    try:
        db.session.commit()
    except BaseException:
        db.session.rollback()
        raise


def nobody_owns(_voice_id: str) -> bool:
    """The default owner check: no background job exists that could be working on a voice."""
    return False


def reconcile(data_dir: Path, *, repair: bool = True, is_owned: Callable[[str], bool] = nobody_owns,
              min_age_s: float = RECONCILE_MIN_AGE_S, force: bool = False,
              _again: bool = False) -> ReconcileReport:
    """Make the registry and the files agree after a crash: no row without files, no file without row.

    `is_owned(voice_id)` says whether a live owner (a fine-tuning job holding a lease) is working on
    a `pending` or `processing` voice; only rows whose owner is gone are marked failed. Stray
    directories changed in the last `min_age_s` seconds are reported as young and left alone, and
    only names this service makes are ever removed. When more voices disagree than agree (a wrong
    data directory or database, not a crash), no row is failed and no voice directory removed
    unless `force`: `held_back` says why.
    """
    report = ReconcileReport()
    rows = {voice.id: voice for voice in list_voices() if voice.kind != VoiceKind.builtin}
    present = 0  # ready voices whose files are in place
    for voice in rows.values():
        has_files = _files_present(data_dir, voice)
        if voice.status == VoiceStatus.ready:
            present += has_files
            if not has_files:
                report.missing_files.append(voice.id)
        elif voice.status == VoiceStatus.failed and voice.error == MISSING_FILES and has_files:
            report.restored.append(voice.id)
        elif voice.status in (VoiceStatus.pending, VoiceStatus.processing) and not is_owned(voice.id):
            # Enrolment is synchronous: after a restart only an owner's job can still be working.
            report.stale_rows.append(voice.id)
    with_row = 0  # voice directories that have their row
    for entry in sorted(data_dir.iterdir()) if data_dir.is_dir() else ():
        if entry.name == JOBS_DIR:
            continue  # each job's own files: its runner and the job's end remove them
        if entry.name in rows:
            with_row += 1
        elif not is_service_entry(entry.name):
            report.foreign.append(entry.name)
        elif _seconds_since_change(entry) < min_age_s:
            report.young_dirs.append(entry.name)
        elif entry.name.startswith((TEMP_PREFIX, TRASH_PREFIX)):
            report.temp_dirs.append(entry.name)
        else:
            report.orphan_dirs.append(entry.name)
    if not force:
        report.held_back = _unrelated(data_dir, report, present, with_row)
    if repair and report.changed:
        try:
            _repair(data_dir, report, rows)
        except StaleDataError:
            # A row went or changed meanwhile (another instance deleted a voice): look again, once.
            db.session.rollback()
            if _again:
                raise
            return reconcile(data_dir, repair=repair, is_owned=is_owned, min_age_s=min_age_s, force=force,
                             _again=True)
    return report


def _unrelated(data_dir: Path, report: ReconcileReport, present: int, with_row: int) -> str | None:
    """Why the registry and the data directory look like a wrong pairing rather than a crash's, or None."""
    if report.missing_files and not data_dir.is_dir():
        return f"the data directory {data_dir} does not exist"
    if len(report.missing_files) > present:
        return (f"{len(report.missing_files)} ready voices have no files and only {present} have theirs "
                f"in {data_dir}")
    if len(report.orphan_dirs) > with_row:
        return f"{len(report.orphan_dirs)} voice directories have no row and only {with_row} have one"
    return None


def _repair(data_dir: Path, report: ReconcileReport, rows: dict[str, Voice]) -> None:
    if not report.held_back:
        for voice_id in report.missing_files:
            rows[voice_id].status, rows[voice_id].error = VoiceStatus.failed, MISSING_FILES
        for name in report.orphan_dirs:
            remove_path(data_dir / name)
    for voice_id in report.restored:
        rows[voice_id].status, rows[voice_id].error = VoiceStatus.ready, None
    for voice_id in report.stale_rows:
        rows[voice_id].status, rows[voice_id].error = VoiceStatus.failed, "Interrupted by a restart."
    for name in report.temp_dirs:
        remove_path(data_dir / name)
    commit()


def _seconds_since_change(path: Path) -> float:
    """Seconds since a directory or anything directly in it last changed (0 if it changes under us)."""
    try:
        entries = [path, *path.iterdir()] if path.is_dir() and not path.is_symlink() else [path]
        newest = max(entry.lstat().st_mtime for entry in entries)
    except FileNotFoundError:
        return 0.0
    return time.time() - newest


def _files_present(data_dir: Path, voice: Voice) -> bool:
    paths = [voice.reference_path, voice.latents_path]
    return all(path and (data_dir / path).is_file() for path in paths)


def reconcile_at_startup(app: Flask) -> ReconcileReport:
    """Run reconcile once before serving (gunicorn's master calls this before forking workers).

    Raises NotMigrated, saying to run `flask db upgrade`, when the schema is behind this code's migrations.
    """
    with app.app_context():
        problem = schema_problem()
        if problem:
            raise NotMigrated(problem)
        from voiceforge.jobs import store  # jobs -> voices: imported here

        report = reconcile(Path(app.config["DATA_DIR"]), is_owned=store.owned_voice_ids().__contains__)
    if report.held_back:
        log.error("startup reconcile failed no row and removed no voice directory: %s. Is "
                  "VOICEFORGE_DATA_DIR the right (mounted) directory and VOICEFORGE_DATABASE_URL the "
                  "right database? If they are, "
                  "`flask --app voiceforge voices reconcile --force` repairs: rows without files %s, "
                  "directories without rows %s", report.held_back, report.missing_files, report.orphan_dirs)
    if report.changed:
        held = bool(report.held_back)
        log.warning("startup reconcile repaired: missing files %s, orphans %s, restored %s, interrupted %s, "
                    "temp %s", [] if held else report.missing_files, [] if held else report.orphan_dirs,
                    report.restored, report.stale_rows, report.temp_dirs)
    if report.foreign:
        log.info("the data directory holds entries this service never makes, left alone: %s", report.foreign)
    if report.young_dirs:
        log.info("startup reconcile left %d recent stray directories for a later run (another instance "
                 "may be writing them): %s", len(report.young_dirs), report.young_dirs)
    return report
