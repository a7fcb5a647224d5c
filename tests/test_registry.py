"""The registry service: ids, names and crash reconciliation."""

from __future__ import annotations

import re
import shutil
import unicodedata
from pathlib import Path

import pytest

from tests.support.registry import add_stored_voice, files_under, left_long_ago
from voiceforge.db import db
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
    for bad in ("", " ", "a\x00b", "x" * 101, "\u202eevil", "line\u2028break", "\u200dRose", "Rose\u200d"):
        with pytest.raises(Unprocessable):
            voices.clean_name(bad)


@pytest.mark.parametrize("name", [
    " " + "a" * 100,  # 100 characters once trimmed
    "e\u0301" * 60,  # 60 characters once NFC joins each e and its accent (as macOS writes file names)
    "\U0001f469\u200d\U0001f4bb Coder",  # a ZWJ emoji sequence
    "\U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f Scotland",  # a tag flag
])
def test_names_of_up_to_100_characters_with_emoji_are_accepted_by_the_api(client, name: str) -> None:
    from tests.support.speech import recording

    enrolled = client.post("/api/train-voice", json={"modelName": name, "audioDataUri": recording()})
    assert enrolled.status_code == 200, enrolled.json
    shown = client.get(f"/api/voices/{enrolled.json['modelId']}").json["name"]
    assert shown == unicodedata.normalize("NFC", name).strip()


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


def test_reconcile_copes_with_a_voice_deleted_by_another_instance_while_it_runs(
        app, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An instance starting (its master reconciles) while another one serves a DELETE: the row it is
    about to mark failed is gone. Reconcile must look again, not crash the start with StaleDataError."""
    import sqlite3

    with app.app_context():
        kept = [add_stored_voice(data_dir, "Kept one"), add_stored_voice(data_dir, "Kept two")]
        broken = add_stored_voice(data_dir, "Broken").id  # the id: the row object goes with the row
        kept = [voice.id for voice in kept]
        (data_dir / broken / "latents.pth").unlink()
        files_present = voices._files_present

        def deleted_elsewhere_meanwhile(directory: Path, voice) -> bool:
            if voice.id == broken and (data_dir / broken).exists():
                database = app.config["SQLALCHEMY_DATABASE_URI"].removeprefix("sqlite:///")
                with sqlite3.connect(database) as other:
                    other.execute("DELETE FROM voices WHERE id = ?", (broken,))
                shutil.rmtree(data_dir / broken)
            return files_present(directory, voice)

        monkeypatch.setattr(voices, "_files_present", deleted_elsewhere_meanwhile)
        report = voices.reconcile(data_dir)
        assert report.missing_files == []
        assert voices.find_voice(broken) is None
        assert [voices.get_voice(voice_id).status for voice_id in kept] == [VoiceStatus.ready] * 2


def test_reconcile_leaves_what_another_instance_may_be_writing_right_now(app, data_dir: Path) -> None:
    """On a shared data directory, one instance's restart must not pull another's enrolment apart."""
    with app.app_context():
        enrolled = add_stored_voice(data_dir, "Enrolled Long Ago")
        staging = data_dir / ".tmp-being-written"  # another instance is staging its files
        staging.mkdir(parents=True)
        left_long_ago(staging)
        (staging / "reference.wav").write_bytes(b"RIFF")  # ... and has just written one
        renamed = data_dir / "renamed-00000000"  # renamed into place, its row about to be committed
        renamed.mkdir()
        (renamed / "latents.pth").write_bytes(b"x")

        report = voices.reconcile(data_dir)
        assert report.young_dirs == [".tmp-being-written", "renamed-00000000"] and not report.changed
        assert files_under(data_dir) == [".tmp-being-written/reference.wav", f"{enrolled.id}/latents.pth",
                                         f"{enrolled.id}/reference.wav", "renamed-00000000/latents.pth"]

        left_long_ago(staging)
        left_long_ago(renamed)  # ten minutes on, nobody finished them: a crash's leftovers
        report = voices.reconcile(data_dir)
        assert report.temp_dirs == [".tmp-being-written"] and report.orphan_dirs == ["renamed-00000000"]
        assert files_under(data_dir) == [f"{enrolled.id}/latents.pth", f"{enrolled.id}/reference.wav"]


def test_a_crash_between_a_delete_and_its_files_leaves_files_without_a_row(
        app, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The row goes first: a crash leaves a directory without a row (reconcile removes it), never a row
    that is listed as ready but has no files."""
    with app.app_context():
        kept = add_stored_voice(data_dir, "Kept")
        deleted = add_stored_voice(data_dir, "Deleted")

        def crash(*_args: object) -> None:
            raise SystemExit("killed")

        monkeypatch.setattr(voices, "remove_voice_dir", crash)
        with pytest.raises(SystemExit):
            voices.delete_voice(deleted.id, data_dir)
        monkeypatch.undo()
        assert voices.find_voice(deleted.id) is None
        assert voices.reconcile(data_dir, min_age_s=0).orphan_dirs == [deleted.id]
        assert files_under(data_dir) == [f"{kept.id}/latents.pth", f"{kept.id}/reference.wav"]


def test_reconcile_touches_nothing_when_the_database_and_the_files_look_unrelated(
        app, data_dir: Path) -> None:
    """A start with an empty or wrong database, or without the data volume, must not wipe voices."""
    with app.app_context():
        on_disk = [add_stored_voice(data_dir, f"Voice {n}") for n in range(3)]
        for voice in on_disk:  # the rows go, as if this instance were given a fresh database
            db.session.delete(voice)
        voices.commit()
        (data_dir / "lost+found").mkdir()
        (data_dir / "notes.txt").write_text("the operator's own file")
        left_long_ago(data_dir)

        report = voices.reconcile(data_dir)
        assert report.held_back == "3 voice directories have no row and only 0 have one"
        assert report.foreign == ["lost+found", "notes.txt"] and not report.changed
        assert len(files_under(data_dir)) == 7

        forced = voices.reconcile(data_dir, force=True)
        assert forced.held_back is None and len(forced.orphan_dirs) == 3
        assert files_under(data_dir) == ["notes.txt"]  # what the service never makes stays, forced or not

        ready = [add_stored_voice(data_dir, f"Ready {n}") for n in range(2)]
        elsewhere = data_dir.parent / "not-mounted"
        report = voices.reconcile(elsewhere)
        assert report.held_back == f"the data directory {elsewhere} does not exist"
        assert [voices.get_voice(voice.id).status for voice in ready] == [VoiceStatus.ready] * 2


def test_a_voice_failed_for_missing_files_is_ready_again_once_they_are_back(app, data_dir: Path) -> None:
    with app.app_context():
        intact = add_stored_voice(data_dir, "Intact")
        moved = add_stored_voice(data_dir, "Moved Away")
        (data_dir / moved.id).rename(data_dir.parent / "elsewhere")
        assert voices.reconcile(data_dir).missing_files == [moved.id]
        assert voices.get_voice(moved.id).status == VoiceStatus.failed
        (data_dir.parent / "elsewhere").rename(data_dir / moved.id)

        report = voices.reconcile(data_dir)
        assert report.restored == [moved.id] and report.changed
        assert voices.get_voice(moved.id).status == VoiceStatus.ready
        assert voices.get_voice(moved.id).error is None
        assert voices.get_voice(intact.id).status == VoiceStatus.ready
