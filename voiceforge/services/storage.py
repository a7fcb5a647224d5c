"""Voice files on disk: atomic writes, staged directories renamed into place, and a trash for deletes.

A voice's files appear all at once (a `.tmp-…` directory is filled, fsynced and renamed) before
its row is committed, and leave all at once (renamed to `.trash-…`, then emptied) after its row is
gone. A crash can therefore leave only a staging or trash directory, or a directory without a row,
which reconcile removes, never a row without its files.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from voiceforge.errors import BadRequest, InsufficientStorage, NotFound, PayloadTooLarge, ServiceUnavailable

log = logging.getLogger(__name__)

TEMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"
_TRASH_SUFFIX_BYTES = 3  # a trash is .trash-<voice id>-<6 hex digits>
JOBS_DIR = ".jobs"  # DATA_DIR/.jobs/<job id>/: a fine-tuning job's recordings and work
# A voice id is also a directory name: lower-case ASCII, digits and hyphens, so no id can escape.
VOICE_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")


def is_valid_id(voice_id: str) -> bool:
    return bool(VOICE_ID.match(voice_id))


def voice_dir(data_dir: Path, voice_id: str) -> Path:
    """The directory of a voice's files; refuses ids that could escape DATA_DIR."""
    if not is_valid_id(voice_id):
        raise NotFound(f"Voice {voice_id[:80]!r} not found.")
    return data_dir / voice_id


def store_voice_files(data_dir: Path, voice_id: str, files: Mapping[str, bytes]) -> Path:
    """Write `files` (name -> bytes) as the voice's directory, all or nothing; return the directory.

    A failed write leaves nothing behind and answers 507 (disk full) or 503 (other storage errors).
    """
    final_dir = voice_dir(data_dir, voice_id)
    staging = data_dir / f"{TEMP_PREFIX}{voice_id}"
    try:
        staging.mkdir(parents=True)
        for name, data in files.items():
            write_file_atomic(staging / name, data)
        staging.rename(final_dir)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise storage_error(error) from error
    return final_dir


def is_service_entry(name: str) -> bool:
    """Whether a name in DATA_DIR is one this service makes: a voice directory, staging or trash.

    Reconcile touches nothing else (`lost+found`, an operator's notes or backups).
    """
    if name.startswith(TRASH_PREFIX):
        name = re.sub(r"-[0-9a-f]+$", "", name.removeprefix(TRASH_PREFIX))
    return is_valid_id(name.removeprefix(TEMP_PREFIX))


def missing_data_dir(data_dir: Path) -> ServiceUnavailable:
    """503 for a voice whose files cannot be found because the whole data directory is not there: an
    unmounted volume, or a wrong VOICEFORGE_DATA_DIR, which re-enrolling the voice would not mend."""
    log.error("the data directory %s does not exist: is its volume mounted, and VOICEFORGE_DATA_DIR right?",
              data_dir)
    return ServiceUnavailable(f"The voice files are unavailable: the data directory {data_dir} does not "
                              "exist (an unmounted volume, or a wrong VOICEFORGE_DATA_DIR); the operator "
                              "must fix it.")


def check_writable(data_dir: Path) -> None:
    """503 before a delete changes anything, when the data directory cannot be changed (read-only mount)."""
    if not os.access(data_dir, os.W_OK | os.X_OK):
        log.error("the data directory %s is not writable: voices cannot be deleted", data_dir)
        raise ServiceUnavailable("The voice could not be deleted (storage error); retry later.")


def remove_voice_dir(data_dir: Path, voice_id: str) -> None:
    """Remove a deleted voice's directory: one rename makes it vanish at once, then it is emptied.

    Called after the voice's row is gone, so a crash or a failure here leaves only files without a
    row, which reconcile removes; a directory already gone (a concurrent delete) is no error.
    """
    trash = data_dir / f"{TRASH_PREFIX}{voice_id}-{secrets.token_hex(_TRASH_SUFFIX_BYTES)}"
    try:
        voice_dir(data_dir, voice_id).rename(trash)
    except FileNotFoundError:
        return
    except OSError as error:
        log.error("voice %s was deleted but its files could not be removed (%s); `voices reconcile` "
                  "removes them once the data directory is writable", voice_id, error)
        return
    shutil.rmtree(trash, ignore_errors=True)


def remove_path(path: Path) -> None:
    """Remove a file or a directory tree (never following a symlink out of the data directory)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def storage_error(error: OSError) -> Exception:
    """A deliberate answer for a failed write: 507 when the disk is full, 503 otherwise."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return InsufficientStorage("The server's disk is full; the voice was not saved.")
    log.error("writing voice files failed: %s", error)
    return ServiceUnavailable("The voice could not be saved (storage error); retry later.")


def write_file_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so readers see the old file or the whole new one, never a part.

    The temporary file lives in the same directory (os.replace is only atomic within one file
    system) and is removed on any failure; the error, ENOSPC included, propagates unchanged.
    The file is created owner-only (mkstemp's 0600): voice recordings are personal data.
    """
    path = Path(path)
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        try:
            os.unlink(temp_name)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """Persist the rename itself; best effort, since some file systems refuse directory fsync."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        log.debug("could not fsync directory %s: %s", directory, exc)
    finally:
        os.close(fd)


def read_regular_file(path: Path, max_bytes: int) -> bytes:
    """A recording from disk (the CLI's uploads): a regular file of at most `max_bytes`.

    A device (/dev/zero) or a FIFO would be read without end, or block: refused before reading.
    """
    if not path.is_file():
        raise BadRequest(f"{path} is not a regular file.")
    with path.open("rb") as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"{path} is larger than {max_bytes} bytes (VOICEFORGE_MAX_AUDIO_BYTES).")
    return data
