"""Settings checked at start: values that would pass a loose check but break the service are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from voiceforge import create_app
from voiceforge.config import ConfigError
from voiceforge.runtime import get_runtime


def refusal(tmp_path: Path) -> str:
    """The one-line message create_app refuses the current environment with."""
    with pytest.raises(ConfigError) as refused:
        create_app(instance_path=str(tmp_path))
    assert "\n" not in refused.value.message
    return refused.value.message


@pytest.mark.parametrize(("variable", "value"), [
    ("MIN_SPEECH_SECONDS", "nan"),  # would turn the minimum-speech check off
    ("MAX_REFERENCE_SECONDS", "inf"),  # every enrolment would crash converting it to a sample count
    ("JOB_LEASE_SECONDS", "inf"),
    ("FINETUNE_LEARNING_RATE", "nan"),
    ("FINETUNE_LEARNING_RATE", "-inf"),
])
def test_a_number_that_is_not_finite_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    monkeypatch.setenv(f"VOICEFORGE_{variable}", value)
    assert refusal(tmp_path).startswith(f"VOICEFORGE_{variable}={value} is not valid: a finite number")


def test_a_number_that_is_not_finite_in_instance_config_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.py").write_text("MAX_TEXT_CHARS = float('inf')\n")
    assert refusal(tmp_path).startswith("VOICEFORGE_MAX_TEXT_CHARS=inf is not valid: a finite number")


@pytest.mark.parametrize(("written", "message"), [
    # Quoted: the message names what to write instead, not only the variable and its value.
    ('MAX_BODY_BYTES = "1000"',
     "VOICEFORGE_MAX_BODY_BYTES='1000' is not valid: a number of at least 1, not text: in instance/config.py "
     "write MAX_BODY_BYTES = 1000 without quotes."),
    # A fraction where a count is meant would be cut silently (10 characters).
    ("MAX_TEXT_CHARS = 10.5", "VOICEFORGE_MAX_TEXT_CHARS=10.5 is not valid: a whole number of at least 1."),
    # More epochs than any request may ask for.
    ("FINETUNE_EPOCHS = 1000", "VOICEFORGE_FINETUNE_EPOCHS=1000 is not valid: a finite number from 1 to 50."),
])
def test_a_number_in_instance_config_that_is_text_a_fraction_or_too_big_is_refused(
        tmp_path: Path, written: str, message: str) -> None:
    (tmp_path / "config.py").write_text(written + "\n")
    assert refusal(tmp_path) == message


def test_max_reference_seconds_below_min_speech_seconds_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No recording could hold the speech enrolment asks for."""
    monkeypatch.setenv("VOICEFORGE_MIN_SPEECH_SECONDS", "5")
    monkeypatch.setenv("VOICEFORGE_MAX_REFERENCE_SECONDS", "4")
    message = refusal(tmp_path)
    assert message.startswith("VOICEFORGE_MAX_REFERENCE_SECONDS=4.0 is not valid: at least "
                              "VOICEFORGE_MIN_SPEECH_SECONDS (5)")
    monkeypatch.setenv("VOICEFORGE_MAX_REFERENCE_SECONDS", "5")  # equal is enough
    assert get_runtime(create_app(instance_path=str(tmp_path))).settings.max_reference_seconds == 5.0


@pytest.mark.parametrize(("written", "expected"), [
    ('"false"', False), ('"off"', False), ('"no"', False), ('"0"', False), ("False", False), ("0", False),
    ('"true"', True), ('"ON"', True), ("True", True), ("1", True),
])
@pytest.mark.parametrize("switch", ["JOB_RUNNER", "CUDA_GRAPHS"])
def test_a_switch_in_instance_config_reads_as_in_the_environment(
        tmp_path: Path, switch: str, written: str, expected: bool) -> None:
    (tmp_path / "config.py").write_text(f"{switch} = {written}\n")
    settings = get_runtime(create_app(instance_path=str(tmp_path))).settings
    assert getattr(settings, switch.lower()) is expected


@pytest.mark.parametrize("written", ['"nah"', "2", "None"])
def test_a_switch_in_instance_config_that_is_no_switch_is_refused(tmp_path: Path, written: str) -> None:
    (tmp_path / "config.py").write_text(f"JOB_RUNNER = {written}\n")
    assert "is not valid: true or false" in refusal(tmp_path)


@pytest.mark.parametrize(("variable", "value", "pair"), [
    ("VOICE_ALIASES", "default-female:Ana Florence,default-male:Damien Black", "default-female:Ana Florence"),
    ("OPENAI_VOICES", "alloy=default-female,nova:default-male", "nova:default-male"),
])
def test_a_pair_without_an_equals_sign_is_refused_naming_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, pair: str) -> None:
    monkeypatch.setenv(f"VOICEFORGE_{variable}", value)
    assert refusal(tmp_path) == (f'VOICEFORGE_{variable}={pair} is not valid: name=value pairs separated by '
                                 'commas; this pair has no "=".')


def test_pairs_keep_working_with_a_trailing_comma(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICEFORGE_VOICE_ALIASES", "default-narrator = Ana Florence,")
    settings = get_runtime(create_app(instance_path=str(tmp_path))).settings
    assert settings.voice_aliases["default-narrator"] == "Ana Florence"


def test_names_in_instance_config_that_nothing_reads_are_said(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "config.py").write_text('WORKERS = 4\nDEFAUL_LANGUAGE = "de"\nDEFAULT_LANGUAGE = "fr"\n')
    app = create_app(instance_path=str(tmp_path))
    assert get_runtime(app).settings.default_language == "fr"
    warnings = " | ".join(record.getMessage() for record in caplog.records if record.levelname == "WARNING")
    assert "sets WORKERS, which only the environment sets (VOICEFORGE_WORKERS)" in warnings
    assert "sets DEFAUL_LANGUAGE, which is not a setting" in warnings
    assert "DEFAULT_LANGUAGE," not in warnings


def test_a_relative_instance_path_is_the_working_directory_s(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VOICEFORGE_INSTANCE_PATH", "deploy/instance")
    app = create_app()
    assert Path(app.instance_path) == tmp_path / "deploy" / "instance" and Path(app.instance_path).is_dir()


def test_an_instance_path_that_cannot_be_created_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICEFORGE_INSTANCE_PATH", "/proc/voiceforge-cannot-be-here")
    with pytest.raises(ConfigError) as refused:
        create_app()
    assert refused.value.message.startswith("VOICEFORGE_INSTANCE_PATH=/proc/voiceforge-cannot-be-here is not "
                                            "valid: a directory this user can create")
