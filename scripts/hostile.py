"""Hostile inputs battery: malformed, out-of-range and malicious requests the API must refuse cleanly.

Run it against a live server that has a model (a few cases may legitimately synthesise speech):

    .venv/bin/python scripts/hostile.py http://127.0.0.1:8000 [--api-key KEY] [--max-seconds 60]

Every case must answer a 4xx JSON with a non-empty `detail` or, for cases marked `ok-or-4xx`, a
correct synthesis; never a 5xx. Where the contract names the status (DESIGN.md section 1: 400
malformed, 404 unknown voice, 413 too large, 415 not JSON or not audio, 422 out of range), the case
expects that one; the statuses assume the default limits (32 MiB body, 20 MiB audio, 5,000 chars).
The table shows each case's status, time and detail; the totals give cases, 2xx, 4xx, 5xx (must be 0),
missing `detail` (must be 0), unexpected statuses or answers (must be 0), slow cases (must be 0) and
the slowest case. The exit status is 1 when any must-be-0 count is not 0.

Paths are sent exactly as written (`../` and `%2e%2e` are not normalised away by the client), and
none of the cases may create a voice: the battery is safe to run against a server in use.
tests/test_hostile.py runs the same cases through Flask's test client and behind gunicorn.
"""

from __future__ import annotations

import argparse
import base64
import functools
import io
import json
import struct
import sys
import time
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import requests

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.audio import compressed_silence, encode_audio, voice  # noqa: E402

FOUR_XX = "4xx"  # only a client error is acceptable
OK_OR_4XX = "ok-or-4xx"  # a correct answer (e.g. speech for text with emoji in it) is fine too

TTS, TRAIN, VOICES = "/api/tts", "/api/train-voice", "/api/voices"
BUILTIN_VOICE = "default-female"  # an alias every server has (VOICEFORGE_VOICE_ALIASES default)
HELLO = "Hello there, this is a test."
JSON_TYPE = "application/json"
NO_DETAIL = "no JSON `detail`"


class _NoJson:
    def __repr__(self) -> str:
        return "NO_JSON"


NO_JSON: Any = _NoJson()  # Case.json's "no JSON body" (None is the JSON body `null`)


@dataclass(frozen=True)
class Case:
    """One hostile request and what answers to it are acceptable.

    The body is either `json` (serialised with json.dumps, sent as application/json) or raw
    `data` with `content_type` (None: no Content-Type header at all).
    """

    name: str
    method: str
    path: str  # percent-encoded where needed; sent byte for byte, never normalised
    json: Any = field(default=NO_JSON, repr=False)
    data: bytes | None = field(default=None, repr=False)
    content_type: str | None = None
    accept: str = FOUR_XX
    statuses: tuple[int, ...] = ()  # the 4xx the contract names for this case; () = any 4xx

    def payload(self) -> tuple[bytes | None, dict[str, str]]:
        """The body bytes and the headers that describe them."""
        if self.json is not NO_JSON:
            return json.dumps(self.json).encode("ascii"), {"Content-Type": JSON_TYPE}
        headers = {} if self.content_type is None else {"Content-Type": self.content_type}
        return self.data, headers

    def acceptable(self, status: int) -> bool:
        if 400 <= status < 500:
            return not self.statuses or status in self.statuses
        return self.accept == OK_OR_4XX and 200 <= status < 300

    def expected(self) -> str:
        client_error = "/".join(map(str, self.statuses)) or "4xx"
        return client_error if self.accept == FOUR_XX else f"2xx or {client_error}"


def verdict(case: Case, status: int, body: bytes) -> list[str]:
    """What is wrong with this answer to this case (empty when nothing is)."""
    problems: list[str] = []
    if status >= 500:
        problems.append(f"server error {status}")
    elif not case.acceptable(status):
        problems.append(f"status {status}, expected {case.expected()}")
    document = _json_or_none(body)
    if not 200 <= status < 300:
        detail = document.get("detail") if isinstance(document, dict) else None
        if not (isinstance(detail, str) and detail.strip()):
            problems.append(NO_DETAIL)
    elif case.path == TTS:
        uri = document.get("audioDataUri") if isinstance(document, dict) else None
        if not (isinstance(uri, str) and uri.startswith("data:audio/wav;base64,")):
            problems.append("2xx without a WAV audioDataUri")
    return problems


def _json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


# --- the cases ---------------------------------------------------------------------------------


def cases() -> list[Case]:
    """The whole battery: /api/tts, /api/train-voice and /api/voices/<id> (GET, PATCH, DELETE)."""
    return list(_battery())


@functools.cache
def _battery() -> tuple[Case, ...]:
    # Built once per process: a few bodies are tens of megabytes on purpose.
    return (*tts_cases(), *train_cases(), *voice_cases())


def _tts(name: str, body: dict[str, Any], accept: str = FOUR_XX, *statuses: int) -> Case:
    return Case(f"tts/{name}", "POST", TTS, json=body, accept=accept, statuses=statuses)


def _tts_raw(name: str, data: bytes, content_type: str | None = JSON_TYPE, accept: str = FOUR_XX,
             *statuses: int) -> Case:
    return Case(f"tts/{name}", "POST", TTS, data=data, content_type=content_type, accept=accept,
                statuses=statuses)


def _say(text: str, **extra: Any) -> dict[str, Any]:
    return {"text": text, "voiceId": BUILTIN_VOICE, **extra}


def tts_cases() -> list[Case]:
    valid = json.dumps(_say(HELLO)).encode()
    return [
        # malformed JSON
        _tts_raw("json-truncated", b'{"text": "Hello", "voiceId": ', JSON_TYPE, FOUR_XX, 400),
        _tts_raw("json-single-quotes", b"{'text': 'Hello', 'voiceId': 'default-female'}",
                 JSON_TYPE, FOUR_XX, 400),
        _tts_raw("json-trailing-comma", b'{"text": "Hello", "voiceId": "default-female",}',
                 JSON_TYPE, FOUR_XX, 400),
        _tts_raw("json-garbage-bytes", bytes(range(256)), JSON_TYPE, FOUR_XX, 400),
        _tts_raw("json-invalid-utf8", b'{"text": "caf\xe9", "voiceId": "default-female"}',
                 JSON_TYPE, FOUR_XX, 400),
        _tts_raw("json-utf16", json.dumps(_say(HELLO)).encode("utf-16"), JSON_TYPE, FOUR_XX, 400),
        _tts_raw("json-nested-100000-deep", b"[" * 100_000 + b"]" * 100_000, JSON_TYPE, FOUR_XX, 400),
        _tts_raw("json-object-nested-10000-deep", b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
                 JSON_TYPE, FOUR_XX, 400),
        _tts_raw("json-5000-digit-number", b'{"text": "Hello", "voiceId": "default-female", '
                 b'"speed": ' + b"9" * 5000 + b"}", JSON_TYPE, FOUR_XX, 400),
        _tts_raw("json-empty-body", b"", JSON_TYPE, FOUR_XX, 400),
        _tts_raw("json-null", b"null", JSON_TYPE, FOUR_XX, 400),
        _tts_raw("json-array", b'["Hello", "default-female"]', JSON_TYPE, FOUR_XX, 400),
        _tts_raw("json-string", b'"Hello"', JSON_TYPE, FOUR_XX, 400),
        _tts_raw("json-number", b"42", JSON_TYPE, FOUR_XX, 400),
        _tts_raw("json-declared-but-form-body", b"text=Hello&voiceId=default-female",
                 JSON_TYPE, FOUR_XX, 400),
        # wrong content type
        _tts_raw("content-type-form", b"text=Hello&voiceId=default-female",
                 "application/x-www-form-urlencoded", FOUR_XX, 415),
        _tts_raw("content-type-multipart", b"--x\r\nContent-Disposition: form-data; name=\"text\""
                 b"\r\n\r\nHello\r\n--x--\r\n", "multipart/form-data; boundary=x", FOUR_XX, 415),
        _tts_raw("content-type-xml", b"<tts><text>Hello</text></tts>", "application/xml",
                 FOUR_XX, 415),
        _tts_raw("content-type-octet-stream", valid, "application/octet-stream", FOUR_XX, 415),
        _tts_raw("content-type-png", valid, "image/png", FOUR_XX, 415),
        _tts_raw("content-type-garbage", valid, "no type at all;;;===", FOUR_XX, 415),
        # fetch() with a string body and no header sends text/plain: JSON sent that way is accepted.
        _tts_raw("content-type-text-plain-json", valid, "text/plain;charset=UTF-8", OK_OR_4XX),
        _tts_raw("content-type-missing-json", valid, None, OK_OR_4XX),
        # wrong types
        _tts("text-number", {"text": 123, "voiceId": BUILTIN_VOICE}, FOUR_XX, 400),
        _tts("text-list", {"text": ["Hello"], "voiceId": BUILTIN_VOICE}, FOUR_XX, 400),
        _tts("text-object", {"text": {"en": "Hello"}, "voiceId": BUILTIN_VOICE}, FOUR_XX, 400),
        _tts("text-null", {"text": None, "voiceId": BUILTIN_VOICE}, FOUR_XX, 400),
        _tts("text-bool", {"text": True, "voiceId": BUILTIN_VOICE}, FOUR_XX, 400),
        _tts("voice-number", {"text": HELLO, "voiceId": 7}, FOUR_XX, 400),
        _tts("voice-null", {"text": HELLO, "voiceId": None}, FOUR_XX, 400),
        _tts("voice-list", {"text": HELLO, "voiceId": [BUILTIN_VOICE]}, FOUR_XX, 400),
        _tts("speed-word", _say(HELLO, speed="fast"), FOUR_XX, 400),
        _tts("speed-bool", _say(HELLO, speed=True), FOUR_XX, 400),
        _tts("speed-null", _say(HELLO, speed=None), FOUR_XX, 400),
        _tts("speed-list", _say(HELLO, speed=[1.0]), FOUR_XX, 400),
        _tts("speed-object", _say(HELLO, speed={"value": 1}), FOUR_XX, 400),
        _tts("variability-word", _say(HELLO, variability="high"), FOUR_XX, 400),
        _tts("language-number", _say(HELLO, language=7), FOUR_XX, 400),
        # missing fields
        _tts("empty-object", {}, FOUR_XX, 400),
        _tts("missing-text", {"voiceId": BUILTIN_VOICE}, FOUR_XX, 400),
        _tts("missing-voice", {"text": HELLO}, FOUR_XX, 400),
        _tts("only-unknown-fields", {"txt": HELLO, "voice": BUILTIN_VOICE}, FOUR_XX, 400),
        # out-of-range numbers
        _tts("speed-zero", _say(HELLO, speed=0), FOUR_XX, 422),
        _tts("speed-negative", _say(HELLO, speed=-1.5), FOUR_XX, 422),
        _tts("speed-just-over", _say(HELLO, speed=2.0001), FOUR_XX, 422),
        _tts("speed-1e308", _say(HELLO, speed=1e308), FOUR_XX, 422),
        _tts("speed-minus-1e308", _say(HELLO, speed=-1e308), FOUR_XX, 422),
        _tts("speed-huge-integer", _say(HELLO, speed=10**30), FOUR_XX, 422),
        _tts("variability-negative", _say(HELLO, variability=-0.01), FOUR_XX, 422),
        _tts("variability-over-one", _say(HELLO, variability=1.5), FOUR_XX, 422),
        _tts("variability-tiny-denormal", _say(HELLO, variability=5e-324), OK_OR_4XX),
        # NaN and infinities: JSON literals Python's parser accepts, strings, and overflow
        _tts_raw("speed-NaN", b'{"text": "Hello", "voiceId": "default-female", "speed": NaN}',
                 JSON_TYPE, FOUR_XX, 400),
        _tts_raw("speed-Infinity", b'{"text": "Hello", "voiceId": "default-female", '
                 b'"speed": Infinity}', JSON_TYPE, FOUR_XX, 400),
        _tts_raw("variability-minus-Infinity", b'{"text": "Hello", "voiceId": "default-female", '
                 b'"variability": -Infinity}', JSON_TYPE, FOUR_XX, 400),
        _tts_raw("speed-1e400-overflows-to-inf", b'{"text": "Hello", "voiceId": "default-female", '
                 b'"speed": 1e400}', JSON_TYPE, FOUR_XX, 400),
        _tts("speed-string-nan", _say(HELLO, speed="nan"), FOUR_XX, 400),
        _tts("variability-string-inf", _say(HELLO, variability="-inf"), FOUR_XX, 400),
        # text: empty, invisible, punctuation, control, bidi, emoji, huge
        _tts("text-empty", _say(""), FOUR_XX, 422),
        _tts("text-whitespace", _say(" \t\n\r\u00a0\u2003\u3000 "), FOUR_XX, 422),
        _tts("text-newlines-only", _say("\n" * 1000), FOUR_XX, 422),
        _tts("text-punctuation-only", _say("?!... ,;:—\"'()[]{}…¿¡"), FOUR_XX, 422),
        _tts("text-control-only", _say("\x00\x01\x07\x08\x1b\x7f\x9f"), FOUR_XX, 422),
        _tts("text-control-in-words", _say("Hel\x00lo wor\x07ld\x1b[0m."), OK_OR_4XX),
        _tts("text-zero-width-only", _say("\u200b\u200c\u200d\u2060\ufeff" * 20), FOUR_XX, 422),
        _tts("text-zero-width-in-words", _say("Hel\u200blo wo\u200drld\ufeff."), OK_OR_4XX),
        _tts("text-bidi-controls-only", _say("\u200f\u200e\u202e\u202c\u2066\u2069\u061c"),
             FOUR_XX, 422),
        _tts("text-rtl-override-in-words", _say("\u202eHello world.\u202c"), OK_OR_4XX),
        _tts("text-arabic-rtl", _say("مرحبا بالعالم.", language="ar"), OK_OR_4XX),
        _tts("text-emoji-only", _say("😀🎉👍🏽❤️‍🔥🇺🇳" * 10), FOUR_XX, 422),
        _tts("text-emoji-in-words", _say("Hello 👋 world 🌍! Nice 👍🏽 day."), OK_OR_4XX),
        _tts("text-combining-marks", _say("Z̴̢̛̙a̷̡̛l̶̢̛g̸̡̛ơ̵̡ text."), OK_OR_4XX),
        _tts("text-lone-surrogate", _say("\ud800"), FOUR_XX, 422),
        _tts("text-lone-surrogate-in-words", _say("Hello \udfff world."), OK_OR_4XX),
        _tts("text-private-use-only", _say("\ue000\uf8ff\U000f0000"), FOUR_XX, 422),
        _tts("text-mixed-scripts", _say("Hello мир 世界 مرحبا 123."), OK_OR_4XX),
        _tts("text-one-300-char-word", _say("Supercalifragilistic" * 15), OK_OR_4XX),
        _tts("text-100000-chars", _say("spam " * 20_000), FOUR_XX, 422),
        # language
        _tts("language-unsupported", _say(HELLO, language="xx"), FOUR_XX, 422),
        _tts("language-klingon", _say(HELLO, language="tlh-Latn"), FOUR_XX, 422),
        _tts("language-empty", _say(HELLO, language=""), FOUR_XX, 422),
        _tts("language-nul", _say(HELLO, language="en\x00"), FOUR_XX, 422),
        _tts("language-traversal", _say(HELLO, language="../en"), FOUR_XX, 422),
        _tts("language-100000-chars", _say(HELLO, language="e" * 100_000), FOUR_XX, 422),
        # voice ids
        _tts("voice-unknown", _say(HELLO, voiceId="no-such-voice"), FOUR_XX, 404),
        _tts("voice-empty", _say(HELLO, voiceId=""), FOUR_XX, 422),
        _tts("voice-traversal", _say(HELLO, voiceId="../../etc/passwd"), FOUR_XX, 404),
        _tts("voice-encoded-traversal", _say(HELLO, voiceId="%2e%2e%2f%2e%2e%2fetc%2fpasswd"),
             FOUR_XX, 404),
        _tts("voice-absolute-path", _say(HELLO, voiceId="/etc/passwd"), FOUR_XX, 404),
        _tts("voice-nul", _say(HELLO, voiceId="voice\x00id"), FOUR_XX, 404),
        _tts("voice-sql", _say(HELLO, voiceId="x' OR '1'='1"), FOUR_XX, 404),
        _tts("voice-3000-chars", _say(HELLO, voiceId="a" * 3000), FOUR_XX, 422),
        _tts("voice-1000000-chars", _say(HELLO, voiceId="v" * 1_000_000), FOUR_XX, 422),
        # Documented: any `default-…` id that names no speaker speaks with the default speaker.
        _tts("voice-builtin-prefix-traversal", _say(HELLO, voiceId="default-../../etc/passwd"),
             OK_OR_4XX),
        # huge strings and bodies
        _tts("unknown-field-1mb", _say(HELLO, junk="x" * 1_000_000), OK_OR_4XX),
        _tts_raw("body-over-32mib", b'{"text": "' + b"a" * 36_000_000 + b'", "voiceId": '
                 b'"default-female"}', JSON_TYPE, FOUR_XX, 413),
    ]


# --- /api/train-voice --------------------------------------------------------------------------


def _train(name: str, body: dict[str, Any], *statuses: int) -> Case:
    return Case(f"train/{name}", "POST", TRAIN, json=body, statuses=statuses)


def _train_raw(name: str, data: bytes, content_type: str | None, *statuses: int) -> Case:
    return Case(f"train/{name}", "POST", TRAIN, data=data, content_type=content_type,
                statuses=statuses)


def _upload(name: str, audio: bytes, mime: str = "audio/wav", *statuses: int) -> Case:
    return _train(name, {"modelName": "Hostile", "audioDataUri": _data_uri(audio, mime)}, *statuses)


def _uri(name: str, uri: str, *statuses: int) -> Case:
    return _train(name, {"modelName": "Hostile", "audioDataUri": uri}, *statuses)


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def train_cases() -> list[Case]:
    audio = _audio()
    speech = _data_uri(audio["speech"], "audio/wav")  # valid: isolates the other field's fault
    return [
        # malformed JSON, wrong content type
        _train_raw("json-truncated", b'{"modelName": "x", "audioDataUri": "data:', JSON_TYPE, 400),
        _train_raw("json-nested-100000-deep", b"[" * 100_000 + b"]" * 100_000, JSON_TYPE, 400),
        _train_raw("json-invalid-utf8", b'{"modelName": "\xff\xfe", "audioDataUri": "x"}',
                   JSON_TYPE, 400),
        _train_raw("json-empty-body", b"", JSON_TYPE, 400),
        _train_raw("json-array", b"[]", JSON_TYPE, 400),
        _train_raw("content-type-form", b"modelName=x&audioDataUri=data%3A",
                   "application/x-www-form-urlencoded", 415),
        _train_raw("content-type-multipart-file", _multipart(audio["speech"]),
                   "multipart/form-data; boundary=hostile", 415),
        _train_raw("content-type-raw-audio", audio["speech"], "audio/wav", 415),
        # wrong types, missing fields
        _train("name-number", {"modelName": 5, "audioDataUri": speech}, 400),
        _train("name-null", {"modelName": None, "audioDataUri": speech}, 400),
        _train("uri-number", {"modelName": "x", "audioDataUri": 12345}, 400),
        _train("uri-list", {"modelName": "x", "audioDataUri": [speech]}, 400),
        _train("uri-object", {"modelName": "x", "audioDataUri": {"data": speech}}, 400),
        _train("uri-null", {"modelName": "x", "audioDataUri": None}, 400),
        _train("language-number", {"modelName": "x", "audioDataUri": speech, "language": 1}, 400),
        _train("empty-object", {}, 400),
        _train("missing-uri", {"modelName": "x"}, 400),
        _train("missing-name", {"audioDataUri": speech}, 400),
        _train_raw("name-NaN", b'{"modelName": NaN, "audioDataUri": "data:audio/wav;base64,AAAA"}',
                   JSON_TYPE, 400),
        _train_raw("language-Infinity", b'{"modelName": "x", "audioDataUri": "data:audio/wav;'
                   b'base64,AAAA", "language": Infinity}', JSON_TYPE, 400),
        # names and languages out of range (with valid audio: only the name or language is wrong)
        _train("name-empty", {"modelName": "", "audioDataUri": speech}, 422),
        _train("name-whitespace", {"modelName": " \t\u3000 ", "audioDataUri": speech}, 422),
        _train("name-101-chars", {"modelName": "n" * 101, "audioDataUri": speech}, 422),
        _train("name-1000000-chars", {"modelName": "n" * 1_000_000, "audioDataUri": speech}, 422),
        _train("name-nul", {"modelName": "evil\x00name", "audioDataUri": speech}, 422),
        _train("name-control", {"modelName": "bell\x07\x1b[2J", "audioDataUri": speech}, 422),
        _train("name-zero-width-only", {"modelName": "\u200b\u200d", "audioDataUri": speech}, 422),
        _train("name-rtl-override", {"modelName": "voice\u202egnp.exe", "audioDataUri": speech},
               422),
        _train("name-lone-surrogate", {"modelName": "a\ud800b", "audioDataUri": speech}, 422),
        _train("language-unsupported", {"modelName": "x", "audioDataUri": speech,
                                        "language": "xx"}, 422),
        _train("language-empty", {"modelName": "x", "audioDataUri": speech, "language": ""}, 422),
        # malformed data URIs
        _uri("uri-empty", "", 400),
        _uri("uri-plain-text", "hello", 400),
        _uri("uri-http-url", "http://127.0.0.1:8000/api/openapi.json", 400),
        _uri("uri-file-url", "file:///etc/passwd", 400),
        _uri("uri-javascript", "javascript:alert(1)", 400),
        _uri("uri-scheme-only", "data:", 400),
        _uri("uri-no-comma", "data:audio/wav;base64", 400),
        _uri("uri-not-base64-declared", "data:audio/wav,RIFF....WAVEfmt ", 400),
        _uri("uri-percent-encoded", "data:audio/wav,%52%49%46%46%00%00", 400),
        _uri("uri-no-data", "data:audio/wav;base64,", 400),
        _uri("uri-header-10000-chars", "data:audio/" + "x" * 10_000 + ";base64,AAAA", 400),
        _uri("uri-media-type-garbage", "data:audio wav<script>;base64,AAAA", 400),
        _uri("uri-parameter-garbage", "data:audio/wav;;;;base64,AAAA", 400),
        # not base64
        _uri("base64-bad-characters", "data:audio/wav;base64,!!!!@@@@####", 400),
        _uri("base64-url-safe", "data:audio/wav;base64," + base64.urlsafe_b64encode(
            b"\xfb\xff\xbf" * 8).decode(), 400),
        _uri("base64-missing-padding", "data:audio/wav;base64,UklGRg", 400),
        _uri("base64-padding-in-middle", "data:audio/wav;base64,UQ==UklG", 400),
        _uri("base64-only-padding", "data:audio/wav;base64,====", 400),
        _uri("base64-non-ascii", "data:audio/wav;base64,UklGRg==é", 400),
        _uri("base64-nul", "data:audio/wav;base64,UklG\x00Rg==", 400),
        # base64 of things that are not audio
        _upload("random-bytes", audio["random"], "audio/wav", 415),
        _upload("one-byte", b"\x00", "audio/wav", 415),
        _upload("png-declared-wav", audio["png"], "audio/wav", 415),
        _upload("zip-declared-mpeg", audio["zip"], "audio/mpeg", 415),
        _upload("pdf-declared-webm", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n" * 20,
                "audio/webm", 415),
        _upload("text-declared-ogg", b"This is not audio, it is a text file.\n" * 50,
                "audio/ogg", 415),
        _upload("html-declared-mp4", b"<!doctype html><html><body>hi</body></html>" * 20,
                "audio/mp4", 415),
        # truncated and lying audio
        _upload("wav-header-only", audio["wav-header-only"], "audio/wav", 415, 422),
        _upload("wav-truncated", audio["wav-truncated"], "audio/wav", 415, 422),
        _upload("mp3-truncated", audio["mp3-truncated"], "audio/mpeg", 415, 422),
        _upload("webm-truncated", audio["webm-truncated"], "audio/webm;codecs=opus", 415, 422),
        _upload("webm-first-100-bytes", audio["webm"][:100], "audio/webm", 415, 422),
        _upload("wav-claims-billions-of-frames", audio["wav-billions"], "audio/wav", 415, 422),
        _upload("wav-zero-channels", audio["wav-0-channels"], "audio/wav", 415),
        _upload("wav-65535-channels", audio["wav-65535-channels"], "audio/wav", 415),
        _upload("wav-4096-channels", audio["wav-4096-channels"], "audio/wav", 415, 422),
        _upload("wav-rate-0", audio["wav-rate-0"], "audio/wav", 415),
        _upload("wav-rate-1", audio["wav-rate-1"], "audio/wav", 415),
        _upload("wav-rate-4e9", audio["wav-rate-4e9"], "audio/wav", 415),
        _upload("wav-rate-8mhz", audio["wav-rate-8mhz"], "audio/wav", 415),
        _upload("wav-bits-0", audio["wav-bits-0"], "audio/wav", 415),
        _upload("wav-float-nan-inf", audio["wav-nan"], "audio/wav", 415, 422),
        # silence and too little speech
        _upload("silence-10s", audio["silence"], "audio/wav", 422),
        _upload("near-silence-hiss", audio["hiss"], "audio/wav", 422),
        _upload("speech-1s-too-short", audio["speech-1s"], "audio/wav", 422),
        _upload("compressed-silence-1-hour", audio["silence-hour"], "audio/ogg;codecs=opus", 422),
        # huge
        _uri("uri-28mb-of-base64", "data:audio/wav;base64," + "A" * 28_000_000, 413),
        _train_raw("body-over-32mib", b'{"modelName": "x", "audioDataUri": "data:audio/wav;base64,'
                   + b"A" * 36_000_000 + b'"}', JSON_TYPE, 413),
    ]


def _multipart(audio: bytes) -> bytes:
    return (b"--hostile\r\nContent-Disposition: form-data; name=\"modelName\"\r\n\r\nx\r\n"
            b"--hostile\r\nContent-Disposition: form-data; name=\"audio\"; filename=\"a.wav\"\r\n"
            b"Content-Type: audio/wav\r\n\r\n" + audio + b"\r\n--hostile--\r\n")


# --- /api/voices/<id> --------------------------------------------------------------------------

# Percent-encoded where a raw character could not travel in a request line.
HOSTILE_IDS: dict[str, str] = {
    "dotdot": "..",
    "dotdot-slash": "../../etc/passwd",
    "dotdot-encoded": "%2e%2e",
    "dotdot-slash-encoded": "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "dotdot-database": "..%2f..%2fvoiceforge.db",
    "dotdot-double-encoded": "%252e%252e%252fetc%252fpasswd",
    "dotdot-backslash": "..%5c..%5cwindows%5cwin.ini",
    "absolute": "/etc/passwd",
    "absolute-encoded": "%2fetc%2fpasswd",
    "nul": "%00",
    "nul-inside": "voice%00.wav",
    "control": "a%0d%0aSet-Cookie:x",
    "rtl-override": "%E2%80%AEvoice",
    "zero-width": "vo%E2%80%8Bice",
    "invalid-utf8": "%ff%fe%fd",
    "lone-surrogate-utf8": "%ED%A0%80",
    "sql": "x'%20OR%20'1'='1",
    "temp-dir-prefix": ".tmp-voice",
    "3000-chars": "a" * 3000,
}


def voice_cases() -> list[Case]:
    found: list[Case] = []
    for label, voice_id in HOSTILE_IDS.items():
        path = f"{VOICES}/{voice_id}"
        found += [
            Case(f"voices/get-{label}", "GET", path, statuses=(404,)),
            Case(f"voices/patch-{label}", "PATCH", path, json={"name": "Renamed"}, statuses=(404,)),
            Case(f"voices/delete-{label}", "DELETE", path, statuses=(404,)),
        ]
    # Built-in speakers are listed by GET /api/voices but are not registry rows: showing one is
    # fine, renaming or deleting one must be refused (today: 404, as for any unknown id).
    builtin = f"{VOICES}/{BUILTIN_VOICE}"
    unknown = f"{VOICES}/no-such-voice"
    found += [
        Case("voices/get-builtin", "GET", builtin, accept=OK_OR_4XX),
        Case("voices/patch-builtin", "PATCH", builtin, json={"name": "Renamed"}),
        Case("voices/delete-builtin", "DELETE", builtin),
        Case("voices/patch-json-truncated", "PATCH", unknown, data=b'{"name": ',
             content_type=JSON_TYPE, statuses=(400,)),
        Case("voices/patch-json-nested-deep", "PATCH", unknown, data=b"[" * 100_000,
             content_type=JSON_TYPE, statuses=(400,)),
        Case("voices/patch-content-type-form", "PATCH", unknown, data=b"name=x",
             content_type="application/x-www-form-urlencoded", statuses=(415,)),
        Case("voices/patch-name-number", "PATCH", unknown, json={"name": 5}, statuses=(400,)),
        Case("voices/patch-name-null", "PATCH", unknown, json={"name": None}, statuses=(400,)),
        Case("voices/patch-name-NaN", "PATCH", unknown, data=b'{"name": NaN}',
             content_type=JSON_TYPE, statuses=(400,)),
        Case("voices/patch-missing-name", "PATCH", unknown, json={}, statuses=(400,)),
        Case("voices/patch-name-empty", "PATCH", unknown, json={"name": ""}, statuses=(422,)),
        Case("voices/patch-name-1000000-chars", "PATCH", unknown, json={"name": "n" * 1_000_000},
             statuses=(422,)),
        # The body is well-formed, so the unknown voice is what is reported (or the bad name).
        Case("voices/patch-name-zero-width", "PATCH", unknown, json={"name": "\u200b"},
             statuses=(404, 422)),
    ]
    return found


# --- test audio --------------------------------------------------------------------------------


@functools.cache
def _audio() -> dict[str, bytes]:
    """Every upload the battery needs, built in memory in well under a second."""
    rate = 16000
    speech = _pcm16(voice(4.0, rate=rate))
    six_seconds = encode_audio(voice(6.0, rate=rate), rate, "wav")[0]
    mp3 = encode_audio(voice(6.0, rate=rate), rate, "mp3")[0]
    webm = encode_audio(voice(6.0, rate=48000), 48000, "webm/opus")[0]
    second = _pcm16(voice(1.0, rate=rate))
    rng = np.random.default_rng(0)
    return {
        "speech": _wav(payload=speech, rate=rate),
        "speech-1s": _wav(payload=second, rate=rate),
        "random": rng.integers(0, 256, 8192, dtype=np.uint8).tobytes(),
        "png": _png(),
        "zip": _zip({"speech.wav": _wav(payload=speech, rate=rate)}),
        "wav-header-only": _wav(rate=rate, data_size=rate * 2),
        "wav-truncated": six_seconds[: len(six_seconds) // 4],  # 1.5 s of the 6
        "mp3-truncated": mp3[: len(mp3) // 5],
        "webm": webm,
        "webm-truncated": webm[: len(webm) // 5],
        "wav-billions": _wav(payload=second, rate=rate, data_size=0xFFFFFFF0),
        "wav-0-channels": _wav(channels=0, payload=bytes(40_000)),
        "wav-65535-channels": _wav(channels=65535, payload=bytes(40_000)),
        "wav-4096-channels": _wav(channels=4096, payload=bytes(4096 * 2 * 50)),
        "wav-rate-0": _wav(rate=0, payload=second),
        "wav-rate-1": _wav(rate=1, payload=second),
        "wav-rate-4e9": _wav(rate=4_000_000_000, payload=second),
        "wav-rate-8mhz": _wav(rate=8_000_000, payload=speech),
        "wav-bits-0": _wav(bits=0, payload=second),
        "wav-nan": _wav(fmt_tag=3, bits=32, rate=rate, payload=np.array(
            [np.nan, np.inf, -np.inf] * rate * 2, "<f4").tobytes()),
        "silence": _wav(payload=bytes(rate * 2 * 10), rate=rate),
        "hiss": _wav(payload=_pcm16(0.0002 * rng.standard_normal(rate * 6)), rate=rate),
        "silence-hour": compressed_silence(3600),
    }


def _pcm16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


def _wav(*, channels: int = 1, rate: int = 22050, bits: int = 16, fmt_tag: int = 1,
         payload: bytes = b"", data_size: int | None = None) -> bytes:
    """A hand-built RIFF/WAVE file whose header may lie about everything."""
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", fmt_tag, channels, rate & 0xFFFFFFFF, (rate * block) & 0xFFFFFFFF,
                      block & 0xFFFF, bits)
    size = len(payload) if data_size is None else data_size
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data"
    body += struct.pack("<I", size) + payload
    return b"RIFF" + struct.pack("<I", len(body) & 0xFFFFFFFF) + body


def _png() -> bytes:
    """A real 1x1 PNG."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00")) + chunk(b"IEND", b""))


def _zip(files: dict[str, bytes]) -> bytes:
    """A ZIP archive (of a perfectly good WAV: the archive itself must still be refused)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return out.getvalue()


# --- running against a server ------------------------------------------------------------------


@dataclass
class Result:
    case: Case
    status: int  # 0: no answer (connection error)
    seconds: float
    detail: str
    problems: list[str]


@dataclass
class Totals:
    cases: int = 0
    ok: int = 0  # 2xx
    client_errors: int = 0  # 4xx
    server_errors: int = 0  # 5xx or no answer: must be 0
    missing_detail: int = 0  # non-2xx without a JSON `detail`: must be 0
    unexpected: int = 0  # status outside the case's acceptable set, or a bad 2xx body: must be 0
    slow: int = 0  # over the per-case time limit: must be 0
    slowest_seconds: float = 0.0
    slowest_case: str = ""
    total_seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return not (self.server_errors or self.missing_detail or self.unexpected or self.slow)


def send(session: requests.Session, base_url: str, case: Case, *, api_key: str | None = None,
         timeout: float = 120.0) -> tuple[int, bytes, float]:
    """Send one case exactly as written; returns status (0 when no answer), body and seconds."""
    data, headers = case.payload()
    if api_key:
        headers["X-API-Key"] = api_key
    prepared = session.prepare_request(requests.Request(case.method, base_url + "/", data=data,
                                                        headers=headers))
    # requests would resolve `../` and decode `%2e%2e` before sending: put the path back verbatim.
    prepared.url = base_url.rstrip("/") + case.path
    started = time.perf_counter()
    try:
        response = session.send(prepared, timeout=timeout)
    except requests.RequestException as error:
        return 0, str(error).encode(), time.perf_counter() - started
    return response.status_code, response.content, time.perf_counter() - started


def judge(case: Case, status: int, body: bytes, seconds: float, max_seconds: float) -> Result:
    problems = verdict(case, status, body) if status else [f"no answer: {body.decode()[:200]}"]
    if seconds > max_seconds:
        problems.append(f"took {seconds:.1f} s (limit {max_seconds:.0f} s)")
    document = _json_or_none(body)
    detail = document.get("detail") if isinstance(document, dict) else None
    return Result(case, status, seconds, str(detail or ""), problems)


def run(base_url: str, battery: Iterable[Case] | None = None, *, api_key: str | None = None,
        max_seconds: float = 60.0) -> list[Result]:
    """Run every case against `base_url`, one at a time, each on a fresh connection.

    Fresh connections keep the cases independent: gunicorn drains at most 64 KiB of a body the
    application did not read and then closes the connection (while its answer said keep-alive),
    so reusing it for the next case would charge that case with a connection error.
    """
    results = []
    for case in cases() if battery is None else battery:
        with requests.Session() as session:
            status, body, seconds = send(session, base_url, case, api_key=api_key,
                                         timeout=max(max_seconds * 2, 30.0))
        results.append(judge(case, status, body, seconds, max_seconds))
    return results


def summarise(results: Sequence[Result]) -> Totals:
    totals = Totals(cases=len(results))
    for result in results:
        status, problems = result.status, result.problems
        totals.ok += 200 <= status < 300
        totals.client_errors += 400 <= status < 500
        totals.server_errors += status >= 500 or status == 0
        totals.missing_detail += NO_DETAIL in problems
        totals.unexpected += any(p.startswith(("status ", "2xx")) for p in problems)
        totals.slow += any(p.startswith("took ") for p in problems)
        totals.total_seconds += result.seconds
        if result.seconds >= totals.slowest_seconds:
            totals.slowest_seconds, totals.slowest_case = result.seconds, result.case.name
    return totals


def report(results: Sequence[Result], totals: Totals, out: Any = None) -> None:
    """Print one line per case, then the totals."""
    out = out or sys.stdout
    width = max((len(r.case.name) for r in results), default=10)
    print(f"{'case':<{width}}  {'method':<6} {'status':>6} {'seconds':>8}  detail / problems", file=out)
    for result in results:
        note = "; ".join(result.problems) if result.problems else result.detail
        note = note.replace("\n", " ")
        marker = "!!" if result.problems else "  "
        print(f"{result.case.name:<{width}}  {result.case.method:<6} {result.status:>6} "
              f"{result.seconds:>8.3f}{marker}{note[:100]}", file=out)
    print(f"\ncases {totals.cases}, 2xx {totals.ok}, 4xx {totals.client_errors}, "
          f"5xx {totals.server_errors} (must be 0), missing detail {totals.missing_detail} "
          f"(must be 0), unexpected {totals.unexpected} (must be 0), slow {totals.slow} "
          f"(must be 0)", file=out)
    print(f"slowest case {totals.slowest_seconds:.2f} s ({totals.slowest_case}); "
          f"all cases {totals.total_seconds:.1f} s", file=out)


def run_battery(base_url: str, *, api_key: str | None = None, max_seconds: float = 60.0,
                out: Any = None) -> Totals:
    """Run, print and summarise the whole battery: what main() and the tests call."""
    results = run(base_url, api_key=api_key, max_seconds=max_seconds)
    totals = summarise(results)
    report(results, totals, out)
    return totals


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base_url", help="e.g. http://127.0.0.1:8000")
    parser.add_argument("--api-key", help="sent as X-API-Key when the server requires keys")
    parser.add_argument("--max-seconds", type=float, default=60.0,
                        help="a case slower than this counts as a failure (default 60)")
    args = parser.parse_args(argv)
    totals = run_battery(args.base_url.rstrip("/"), api_key=args.api_key,
                         max_seconds=args.max_seconds)
    return 0 if totals.passed else 1


if __name__ == "__main__":
    sys.exit(main())
