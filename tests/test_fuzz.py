"""Schemathesis against the app's own /api/openapi.json, with every check.

Once in-process (WSGI) and once behind gunicorn with API keys configured. All of schemathesis'
phases run (explicit examples, coverage of boundaries and wrong types, fuzzing with valid and
invalid data, stateful sequences through the links it infers) and every check is on, so the
document must describe every route, status code, header and body truthfully; the one exception is
explained in CONFIG. Each test writes its figures (cases, server errors, schema violations) to the
terminal. FUZZ_EXAMPLES=200 gives a longer run; FUZZ_SEED other cases.

The data-URI, base64 and audio-decoding functions already have hypothesis properties in
tests/test_audio.py (arbitrary text and URI-like strings through parse_data_uri, base64 round trips
of any bytes, arbitrary bytes and bit-flipped real files through decode_audio); not repeated here.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import schemathesis
from flask import Flask
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import Status, events

from tests.support.registry import files_under
from tests.support.reporting import show
from tests.support.server import start_server, stop_server

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "10"))  # per operation and phase: ~15 s a test
SEED = int(os.environ.get("FUZZ_SEED", "20240611"))  # fixed: the same cases on every run

CONFIG = f"""
seed = {SEED}
continue-on-failure = true   # report every failing check, not just the first per operation
request-timeout = 60         # over HTTP; the default 10 s is shorter than a cold model load

[generation]
max-examples = {EXAMPLES}

[checks]
max_response_time = 30       # seconds: bounded time; fuzzed requests take under 2 s on the tiny model

# positive_data_acceptance demands that every schema-valid body be accepted. It is on for every
# operation but these, where validity depends on more than JSON Schema can say:
# - /api/train-voice: audioDataUri must hold >= 3 s of decodable speech; no schema describes that.
# - /api/tts and /api/tts/stream: whether a text can be spoken depends on its language: coqui-tts's
#   number expansion cannot say digits in Hindi or ordinals in Czech (422 "spell out numbers"), so "0" in
#   language "hi" is schema-valid and refused. The text pattern (a letter or digit) also only
#   approximates "something left to speak once invisible characters and emoji are dropped".
# Both operations document these 422 answers, and every other check stays on for them.
[[operations]]
include-path = "/api/train-voice"
checks.positive_data_acceptance.enabled = false

[[operations]]
include-path-regex = "^/api/tts(/stream)?$"
checks.positive_data_acceptance.enabled = false
"""


@dataclass
class Figures:
    cases: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    checks_run: Counter[str] = field(default_factory=Counter)  # by check name
    failures: list[str] = field(default_factory=list)  # "operation: check: title ..."
    errors: list[str] = field(default_factory=list)  # the engine itself failed

    @property
    def server_errors(self) -> int:
        return sum(count for status, count in self.statuses.items() if status >= 500)

    @property
    def schema_violations(self) -> int:
        return sum("conformance" in failure.split("\n", 1)[0] for failure in self.failures)

    def summary(self) -> str:
        return (f"{self.cases} cases, {self.server_errors} server errors, {self.schema_violations} "
                f"schema violations, {len(self.failures)} failed checks; "
                f"statuses {dict(sorted(self.statuses.items()))}; "
                f"{sum(self.checks_run.values())} check runs over {len(self.checks_run)} checks")


def fuzz(schema: schemathesis.schemas.BaseSchema) -> Figures:
    """Run schemathesis' engine over every operation of the document; collect figures."""
    figures = Figures()
    for event in schemathesis.engine.from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            recorder = event.recorder
            figures.cases += len(recorder.cases)
            figures.statuses.update(interaction.response.status_code
                                    for interaction in recorder.interactions.values()
                                    if interaction.response is not None)
            for checks in recorder.checks.values():
                figures.checks_run.update(check.name for check in checks)
                figures.failures += [
                    f"{recorder.label}: {check.name}: {check.failure_info.failure.title}\n"
                    f"{check.failure_info.failure.message}\n{check.failure_info.code_sample}"
                    for check in checks if check.status == Status.FAILURE and check.failure_info]
        elif isinstance(event, events.NonFatalError | events.FatalError):
            figures.errors.append(str(getattr(event, "value", None) or event.exception))
    return figures


def assert_conforms(figures: Figures, data_dir: Path) -> None:
    assert figures.errors == []
    assert figures.cases > 100
    assert figures.server_errors == 0
    assert figures.failures == [], "\n\n".join(figures.failures[:5])
    # Fuzzed uploads never enrol a voice, so nothing may have been written.
    assert files_under(data_dir) == []


def test_api_conforms_to_its_openapi_document(app: Flask, data_dir: Path,
                                              request: pytest.FixtureRequest) -> None:
    schema = schemathesis.openapi.from_wsgi("/api/openapi.json", app,
                                            config=SchemathesisConfig.from_str(CONFIG))
    figures = fuzz(schema)
    show(request, f"schemathesis, in-process: {figures.summary()}")
    assert_conforms(figures, data_dir)


API_KEY = "fuzz-key-0123456789"


@pytest.mark.slow
def test_api_with_keys_conforms_behind_gunicorn(tmp_path: Path, checkpoint_dir: Path,
                                                request: pytest.FixtureRequest) -> None:
    """With API keys configured the document declares them, and ignored_auth checks that every
    operation that says it needs a key answers 401 without one and with a wrong one.

    Over HTTP, not WSGI: in schemathesis 4.32.5 ignored_auth's probe passes `max_redirects` to
    werkzeug's test client, which refuses it, so that check can only run against a real server.
    """
    server = start_server(tmp_path, checkpoint_dir, VOICEFORGE_API_KEYS=API_KEY)
    try:
        # Load the worker's model first, so no fuzzed request waits for it.
        warm = server.post("/api/tts", {"text": "Warm up.", "voiceId": "default-female"},
                           headers={"X-API-Key": API_KEY})
        assert warm.status_code == 200, warm.text
        config = SchemathesisConfig.from_str(f'headers = {{ "X-API-Key" = "{API_KEY}" }}\n' + CONFIG)
        figures = fuzz(schemathesis.openapi.from_url(f"{server.url}/api/openapi.json", config=config))
    finally:
        stop_server(server)
    show(request, f"schemathesis, gunicorn with API keys: {figures.summary()}")
    assert figures.checks_run["ignored_auth"] > 0
    assert_conforms(figures, tmp_path / "voices")
