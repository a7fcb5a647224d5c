"""Registry helpers for tests: stored placeholder voices and listing the files under a directory."""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path

from voiceforge.models import Voice, VoiceKind
from voiceforge.services import voices


def add_stored_voice(data_dir: Path, name: str = "Stored Voice", language: str = "en") -> Voice:
    """A registry voice with placeholder files, for tests of the registry itself (not of speech)."""
    voice_id = voices.new_voice_id(name)
    directory = data_dir / voice_id
    directory.mkdir(parents=True)
    (directory / "reference.wav").write_bytes(b"RIFF")
    (directory / "latents.pth").write_bytes(b"latents")
    return voices.add_ready_voice(voice_id, name, language, VoiceKind.cloned,
                                  f"{voice_id}/reference.wav", f"{voice_id}/latents.pth")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def left_long_ago(directory: Path, seconds: float = 3600) -> Path:
    """Date a directory and what is in it `seconds` back: what a crash left before the last restart."""
    then = time.time() - seconds
    for path in [*directory.rglob("*"), directory]:
        os.utime(path, (then, then), follow_symlinks=False)
    return directory


def files_under(directory: Path) -> list[str]:
    """Every file below `directory`, relative, sorted (empty when it does not exist)."""
    if not directory.exists():
        return []
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())
