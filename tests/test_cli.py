"""The flask CLI: voice admin through Flask's test runner."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.support.migrations import HEAD
from tests.support.registry import add_stored_voice, files_under, left_long_ago
from voiceforge import create_app


def test_voices_list_as_table_and_json(app, runner, data_dir: Path) -> None:
    assert "No voices." in runner.invoke(args=["voices", "list"]).output
    with app.app_context():
        voice = add_stored_voice(data_dir, "Narrator")
    table = runner.invoke(args=["voices", "list"])
    assert table.exit_code == 0
    header, row = table.output.splitlines()[:2]
    assert header.split() == ["ID", "NAME", "LANGUAGE", "KIND", "STATUS", "CREATEDAT"]
    assert row.startswith(voice.id) and "Narrator" in row and "ready" in row
    listed = json.loads(runner.invoke(args=["voices", "list", "--json"]).output)
    assert [v["id"] for v in listed] == [voice.id]
    with_builtin = json.loads(runner.invoke(args=["voices", "list", "--builtin", "--json"]).output)
    assert "default-ana-florence" in {v["id"] for v in with_builtin}


def test_voices_show_rename_remove(app, runner, data_dir: Path) -> None:
    with app.app_context():
        voice = add_stored_voice(data_dir, "Narrator")
    shown = json.loads(runner.invoke(args=["voices", "show", voice.id, "--json"]).output)
    assert shown["name"] == "Narrator" and shown["latentsPath"] == f"{voice.id}/latents.pth"
    assert "Narrator" in runner.invoke(args=["voices", "show", voice.id]).output

    renamed = runner.invoke(args=["voices", "rename", voice.id, "Storyteller"])
    assert renamed.exit_code == 0
    shown = json.loads(runner.invoke(args=["voices", "show", voice.id, "--json"]).output)
    assert shown["name"] == "Storyteller"

    declined = runner.invoke(args=["voices", "remove", voice.id], input="n\n")
    assert declined.exit_code != 0 and files_under(data_dir)
    removed = runner.invoke(args=["voices", "remove", voice.id, "--yes"])
    assert removed.exit_code == 0 and files_under(data_dir) == []


def test_voices_show_finds_every_voice_the_list_shows(runner) -> None:
    listed = json.loads(runner.invoke(args=["voices", "list", "--builtin", "--json"]).output)
    assert listed  # the test checkpoint's speakers and the default aliases
    for voice in listed:
        shown = runner.invoke(args=["voices", "show", voice["id"], "--json"])
        assert shown.exit_code == 0, shown.output
        assert json.loads(shown.output)["name"] == voice["name"]
    assert json.loads(runner.invoke(args=["voices", "show", "default-female", "--json"]).output)["speaker"]
    # Any other default-… id is shown with the speaker it speaks with, as GET /api/voices/<id> shows it.
    other = runner.invoke(args=["voices", "show", "default-nobody-here", "--json"])
    assert other.exit_code == 0 and json.loads(other.output)["speaker"] == "Ana Florence", other.output


def test_cli_errors_are_clear(runner) -> None:
    missing = runner.invoke(args=["voices", "show", "nope-00000000"])
    assert missing.exit_code == 1 and "not found" in missing.output
    assert runner.invoke(args=["voices", "rename", "nope-00000000", "x"]).exit_code == 1


def test_reconcile_command_reports_and_repairs(app, runner, data_dir: Path) -> None:
    with app.app_context():
        voice = add_stored_voice(data_dir, "Narrator")
        add_stored_voice(data_dir, "Intact")
    (data_dir / voice.id / "latents.pth").unlink()
    (data_dir / "stray-00000000").mkdir()
    dry = runner.invoke(args=["voices", "reconcile", "--dry-run", "--min-age", "0"])
    assert voice.id in dry.output and "stray-00000000" in dry.output
    assert (data_dir / "stray-00000000").exists()
    # By default a stray this recent is left: another instance may be writing it.
    cautious = runner.invoke(args=["voices", "reconcile"])
    assert "recent strays (left: changed under 600 s ago): stray-00000000" in cautious.output
    assert (data_dir / "stray-00000000").exists()
    fixed = runner.invoke(args=["voices", "reconcile", "--min-age", "0"])
    assert fixed.exit_code == 0 and not (data_dir / "stray-00000000").exists()
    assert "Registry and files agree." in runner.invoke(args=["voices", "reconcile"]).output


def test_reconcile_command_holds_back_when_the_files_look_like_another_registrys(
        app, runner, data_dir: Path) -> None:
    with app.app_context():
        voice = add_stored_voice(data_dir, "Narrator")
    (data_dir / voice.id).rename(data_dir / "someone-else-00000000")  # a directory no row knows
    left_long_ago(data_dir / "someone-else-00000000")
    held = runner.invoke(args=["voices", "reconcile"])
    assert held.exit_code == 1, held.output
    assert "rows missing files (held back: marked failed): " + voice.id in held.output
    assert "1 ready voices have no files and only 0 have theirs" in held.output
    assert "run again with --force" in held.output
    assert (data_dir / "someone-else-00000000").exists()
    forced = runner.invoke(args=["voices", "reconcile", "--force"])
    assert forced.exit_code == 0
    assert "orphan directories (repaired: removed): someone-else-00000000" in forced.output
    assert files_under(data_dir) == []


def test_model_info_does_not_load_the_model(make_app, checkpoint_dir: Path) -> None:
    app = make_app(INFERENCE_QUEUE_SIZE=2)  # an engine of its own, not the session's shared one
    result = app.test_cli_runner().invoke(args=["model", "info", "--json"])
    assert result.exit_code == 0
    info = json.loads(result.output)
    assert info["modelDir"] == str(checkpoint_dir) and info["available"] is True
    assert info["builtinSpeakers"] == 3 and info["loaded"] is False
    from voiceforge.runtime import get_runtime

    assert get_runtime(app).engine.loaded is False


def test_voices_add_clones_from_an_audio_file(runner, tmp_path: Path, data_dir: Path) -> None:
    from tests.support.audio import encode_audio, voice

    recording = tmp_path / "me.mp3"
    recording.write_bytes(encode_audio(voice(4.0, rate=44100), 44100, "mp3")[0])
    added = runner.invoke(args=["voices", "add", "Me Myself", str(recording), "--language", "de", "--json"])
    assert added.exit_code == 0, added.output
    voice = json.loads(added.output)
    assert voice["name"] == "Me Myself" and voice["language"] == "de" and voice["status"] == "ready"
    assert files_under(data_dir) == [f"{voice['id']}/latents.pth", f"{voice['id']}/reference.wav"]

    not_audio = tmp_path / "notes.txt"
    not_audio.write_text("just text")
    rejected = runner.invoke(args=["voices", "add", "Nope", str(not_audio)])
    assert rejected.exit_code == 1 and "text" in rejected.output.lower()
    assert len(json.loads(runner.invoke(args=["voices", "list", "--json"]).output)) == 1


def test_voices_add_refuses_what_is_not_a_regular_file(runner, tmp_path: Path, data_dir: Path) -> None:
    """/dev/zero would be read until memory ran out, a FIFO would block for ever."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for path in ("/dev/zero", str(fifo)):
        refused = runner.invoke(args=["voices", "add", "Endless", path])
        assert refused.exit_code == 1 and "is not a regular file" in refused.output
    assert files_under(data_dir) == []


def test_commands_before_the_first_migration_say_to_run_it(checkpoint_dir: Path, tmp_path: Path) -> None:
    app = create_app({"DATABASE_URL": f"sqlite:///{tmp_path / 'new.db'}", "DATA_DIR": str(tmp_path / "v"),
                      "MODEL_DIR": str(checkpoint_dir)})
    for command in (["voices", "list"], ["jobs", "list"], ["voices", "reconcile"]):
        result = app.test_cli_runner().invoke(args=command)
        assert result.exit_code == 1 and result.output.strip().splitlines() == [
            "Error: The database has no VoiceForge tables yet: run `flask --app voiceforge db upgrade` "
            "first."]


def test_commands_on_a_database_behind_the_migrations_say_to_upgrade(checkpoint_dir: Path,
                                                                   tmp_path: Path) -> None:
    """New code deployed, `flask db upgrade` forgotten: one line, not SQLAlchemy's "no such column"."""
    from flask_migrate import upgrade

    app = create_app({"DATABASE_URL": f"sqlite:///{tmp_path / 'old.db'}", "DATA_DIR": str(tmp_path / "v"),
                      "MODEL_DIR": str(checkpoint_dir)})
    with app.app_context():
        upgrade(revision="0002")  # before 0003's voices.version, which these commands read
    for command in (["voices", "list"], ["voices", "reconcile"]):
        result = app.test_cli_runner().invoke(args=command)
        assert result.exit_code == 1 and result.output.strip().splitlines() == [
            f"Error: The database schema is at migration 0002 and this code needs {HEAD}: run "
            "`flask --app voiceforge db upgrade`."], command


def test_commands_on_an_unreachable_database_say_so_in_one_line(checkpoint_dir: Path, tmp_path: Path) -> None:
    app = create_app({"DATABASE_URL": f"sqlite:///{tmp_path / 'no-such-dir' / 'x.db'}",
                      "DATA_DIR": str(tmp_path / "v"), "MODEL_DIR": str(checkpoint_dir)})
    result = app.test_cli_runner().invoke(args=["voices", "list"])
    assert result.exit_code == 1 and result.output.strip().splitlines() == [
        "Error: The database is unavailable: unable to open database file"]


def test_reconcile_refuses_a_min_age_that_is_not_a_number(runner) -> None:
    refused = runner.invoke(args=["voices", "reconcile", "--min-age", "nan"])
    assert refused.exit_code == 2 and "not a number of seconds" in refused.output


def test_model_warmup_loads_and_speaks(runner) -> None:
    result = runner.invoke(args=["model", "warmup"])
    assert result.exit_code == 0, result.output
    assert "Warm:" in result.output and "cpu" in result.output


def test_model_commands_without_a_model_say_how_to_get_one(make_app, tmp_path: Path) -> None:
    runner = make_app(MODEL_DIR=None).test_cli_runner()
    info = json.loads(runner.invoke(args=["model", "info", "--json"]).output)
    assert info["available"] is False and "COQUI_TOS_AGREED" in info["problem"]
    warm = runner.invoke(args=["model", "warmup"])
    assert warm.exit_code == 1 and "VOICEFORGE_MODEL_DIR" in warm.output
    declined = runner.invoke(args=["model", "download"], input="n\n")
    assert declined.exit_code != 0 and "License" in declined.output
