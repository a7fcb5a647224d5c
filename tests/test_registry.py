"""The registry service: ids, names and crash reconciliation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.registry import add_stored_voice, files_under, left_long_ago
from voiceforge.errors import Unprocessable
from voiceforge.models import VoiceStatus
from voiceforge.services import voices


@pytest.mark.parametrize(("name", "prefix"), [
    ("My Voice", "my-voice-"), ("Ünïcödé Nàme!", "unicode-name-"), ("   ", "voice-"), ("日本語", "voice-"),
    ("default", "voice-default-"), ("Default Male", "voice-default-male-"), ("x" * 100, "x" * 40 + "-"),
])
def test_ids_are_url_safe_slugs_with_a_random_suffix(name: str, prefix: str) -> None:
    voice_id = voices.new_voice_id(name)
    assert voice_id.startswith(prefix)
    assert re.fullmatch(r"[a-z0-9-]+-[0-9a-f]{8}", voice_id)
    assert voices.is_valid_id(voice_id)
    assert voice_id != voices.new_voice_id(name)


def test_names_are_trimmed_and_validated() -> None:
    assert voices.clean_name("  Rose  ") == "Rose"
    for bad in ("", " ", "a\x00b", "x" * 101, "\u202eevil"):
        with pytest.raises(Unprocessable):
            voices.clean_name(bad)


def test_reconcile_repairs_rows_without_files_and_files_without_rows(app, data_dir: Path) -> None:
    with app.app_context():
        intact = add_stored_voice(data_dir, "Intact")
        broken = add_stored_voice(data_dir, "Broken")
        (data_dir / broken.id / "latents.pth").unlink()
        (data_dir / "orphan-12345678").mkdir()
        (data_dir / "orphan-12345678" / "reference.wav").write_bytes(b"x")
        (data_dir / ".tmp-half-written").mkdir()
        left_long_ago(data_dir / "orphan-12345678")
        left_long_ago(data_dir / ".tmp-half-written")

        dry = voices.reconcile(data_dir, repair=False)
        assert dry.missing_files == [broken.id]
        assert voices.get_voice(broken.id).status == VoiceStatus.ready  # dry run changed nothing

        report = voices.reconcile(data_dir)
        assert report.missing_files == [broken.id]
        assert report.orphan_dirs == ["orphan-12345678"]
        assert report.temp_dirs == [".tmp-half-written"]
        assert voices.get_voice(broken.id).status == VoiceStatus.failed
        assert voices.get_voice(intact.id).status == VoiceStatus.ready
        assert files_under(data_dir) == [f"{broken.id}/reference.wav", f"{intact.id}/latents.pth",
                                         f"{intact.id}/reference.wav"]
        assert not voices.reconcile(data_dir).changed


def test_reconcile_leaves_what_another_instance_may_be_writing_right_now(app, data_dir: Path) -> None:
    """On a shared data directory, one instance's restart must not pull another's enrolment apart."""
    with app.app_context():
        staging = data_dir / ".tmp-being-written"  # another instance is staging its files
        staging.mkdir(parents=True)
        left_long_ago(staging)
        (staging / "reference.wav").write_bytes(b"RIFF")  # ... and has just written one
        renamed = data_dir / "renamed-00000000"  # renamed into place, its row about to be committed
        renamed.mkdir()
        (renamed / "latents.pth").write_bytes(b"x")

        report = voices.reconcile(data_dir)
        assert report.young_dirs == [".tmp-being-written", "renamed-00000000"] and not report.changed
        assert files_under(data_dir) == [".tmp-being-written/reference.wav", "renamed-00000000/latents.pth"]

        left_long_ago(staging)
        left_long_ago(renamed)  # ten minutes on, nobody finished them: a crash's leftovers
        report = voices.reconcile(data_dir)
        assert report.temp_dirs == [".tmp-being-written"] and report.orphan_dirs == ["renamed-00000000"]
        assert files_under(data_dir) == []


def test_reconcile_leaves_a_delete_in_progress_so_a_failed_delete_can_put_the_files_back(
        app, data_dir: Path) -> None:
    """Another instance restarting mid-delete must neither empty the trash nor fail the voice's row."""
    with app.app_context():
        voice = add_stored_voice(data_dir, "Enrolled Long Ago")
        left_long_ago(data_dir / voice.id)
        trash = voices.move_to_trash(data_dir, voice.id)  # a delete has begun, its row not yet gone

        report = voices.reconcile(data_dir)
        assert report.young_dirs == [trash.name] and not report.changed
        voices.restore_from_trash(data_dir, voice.id, trash)  # ... and its row removal failed
        assert voices.get_voice(voice.id).status == VoiceStatus.ready
        assert files_under(data_dir) == [f"{voice.id}/latents.pth", f"{voice.id}/reference.wav"]

        trash = voices.move_to_trash(data_dir, voice.id)
        left_long_ago(trash)  # ten minutes on, the delete never finished: a crash's leftovers
        report = voices.reconcile(data_dir)
        assert report.missing_files == [voice.id] and report.temp_dirs == [trash.name]
        assert voices.get_voice(voice.id).status == VoiceStatus.failed
        assert files_under(data_dir) == []
