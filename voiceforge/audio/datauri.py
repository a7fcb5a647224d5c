"""Data URIs: parse uploaded `data:<mime>;base64,...` strings and build them for playback."""

from __future__ import annotations

import base64
import binascii
import logging
import re
from dataclasses import dataclass, field

from voiceforge.errors import BadRequest, PayloadTooLarge

log = logging.getLogger(__name__)

# WHATWG's "ASCII whitespace": what line-wrapped base64 may legitimately contain.
_ASCII_WHITESPACE = " \t\n\r\f"
_STRIP_WHITESPACE = str.maketrans("", "", _ASCII_WHITESPACE)
_TOKEN = r"[!#$&'*+.^_`|~0-9A-Za-z-]+"  # RFC 2045 token characters
_MEDIA_TYPE = re.compile(rf"{_TOKEN}/{_TOKEN}")
# Firefox's MediaRecorder blobs say "audio/ogg; codecs=opus": a space may precede a parameter. A value
# may hold a comma: Chromium's FileReader writes an audio+video recording's type as is,
# "data:video/webm;codecs=vp8,opus;base64,...".
_PARAMETER = re.compile(rf"[ \t]*{_TOKEN}=[^;]*")
_BASE64_MARKER = ";base64,"
_NOT_BASE64 = re.compile(r"[^A-Za-z0-9+/=]")
# RFC 2397 leaves the header unbounded; a real one ("audio/webm;codecs=opus") is tiny, and a cap
# keeps a pathological header from being scanned or echoed back at length.
_MAX_HEADER_CHARS = 256
_DEFAULT_MEDIA_TYPE = "text/plain"  # RFC 2397's default when the media type is omitted


@dataclass(frozen=True)
class DataUri:
    """A parsed data URI: the declared MIME type (a hint only) and the decoded bytes."""

    mime_type: str
    data: bytes = field(repr=False)  # never dump megabytes of audio into logs or tracebacks


def parse_data_uri(uri: str, *, max_bytes: int) -> DataUri:
    """Parse a strict RFC 2397 base64 data URI, bounding the decoded size before decoding.

    Only the standard base64 alphabet is accepted (RFC 2397 refers to RFC 2045, and browsers'
    FileReader.readAsDataURL emit it): URL-safe `-`/`_` are rejected with a hint rather than
    guessed at. ASCII whitespace inside the payload is ignored; padding is required.
    Raises BadRequest (400) for malformed input and PayloadTooLarge (413) over `max_bytes`.
    """
    if not isinstance(uri, str):
        raise BadRequest(f"The audio must be a data URI string, not {type(uri).__name__}.")
    uri = uri.strip(_ASCII_WHITESPACE)
    if uri[:5].lower() != "data:":
        raise BadRequest("The audio must be a data URI starting with 'data:'.")
    comma = _header_end(uri)
    if comma < 0:
        raise BadRequest(_missing_comma_detail(uri))
    mime_type = _parse_header(uri[5:comma])
    data = _decode_base64(uri[comma + 1:], max_bytes=max_bytes)
    log.debug("parsed data URI: declared %s, %d bytes", mime_type, len(data))
    return DataUri(mime_type=mime_type, data=data)


def _header_end(uri: str) -> int:
    """The index of the comma that ends the header: the one after ';base64' where there is one.

    A parameter value may contain commas (`codecs=vp8,opus`) while base64 data never contains ';',
    so the first ';base64,' is the separator; without one, the first comma is (and the header is
    then refused as not base64).
    """
    window = uri[:5 + _MAX_HEADER_CHARS + len(_BASE64_MARKER)].lower()
    marker = window.find(_BASE64_MARKER, 5)
    if 0 <= marker <= 5 + _MAX_HEADER_CHARS - len(";base64"):
        return marker + len(_BASE64_MARKER) - 1
    return uri.find(",", 5, 5 + _MAX_HEADER_CHARS + 1)


def _missing_comma_detail(uri: str) -> str:
    if "," in uri:
        return f"The data URI header is longer than {_MAX_HEADER_CHARS} characters."
    return "The data URI has no ',' separating the header from the data."


def _parse_header(header: str) -> str:
    """Validate `[<type/subtype>][;attr=value]*;base64` and return the lowercased media type."""
    parts = header.split(";")
    if len(parts) < 2 or parts[-1].lower() != "base64":
        raise BadRequest("Audio data URIs must be base64-encoded: 'data:<mime type>;base64,<data>'.")
    media_type, parameters = parts[0], parts[1:-1]
    if media_type and not _MEDIA_TYPE.fullmatch(media_type):
        raise BadRequest(f"The data URI's media type {media_type[:64]!r} is not 'type/subtype'.")
    for parameter in parameters:
        # Parameters such as MediaRecorder's `codecs=opus` are tolerated but never trusted.
        if not _PARAMETER.fullmatch(parameter):
            raise BadRequest(f"The data URI parameter {parameter[:64]!r} is not 'name=value'.")
    return media_type.lower() or _DEFAULT_MEDIA_TYPE


def _decode_base64(payload: str, *, max_bytes: int) -> bytes:
    # Size first, from the length alone: counting whitespace needs no copy, so an oversized
    # upload is refused before any memory is spent on stripping or decoding it.
    length = len(payload) - sum(payload.count(char) for char in _ASCII_WHITESPACE)
    if length == 0:
        raise BadRequest("The data URI contains no audio data.")
    tail = payload[-16:].translate(_STRIP_WHITESPACE)
    padding = min(2, len(tail) - len(tail.rstrip("=")))
    _check_size(length * 3 // 4 - padding, max_bytes)
    compact = payload.translate(_STRIP_WHITESPACE)
    _check_base64_alphabet(compact)
    try:
        data = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest(f"The data URI's base64 data is invalid ({exc}).") from exc
    if not data:
        raise BadRequest("The data URI contains no audio data.")
    # The estimate can be 2 bytes short when whitespace hides the padding; the result is exact.
    _check_size(len(data), max_bytes)
    return data


def _check_size(size: int, max_bytes: int) -> None:
    if size > max_bytes:
        shown, limit = _megabytes(size), _megabytes(max_bytes)
        if shown == limit:
            # Just over the limit both round alike ("21.0 MB; the limit is 21.0 MB"): be exact.
            shown, limit = f"{size:,} bytes", f"{max_bytes:,} bytes"
        raise PayloadTooLarge(f"The audio is {shown}; the limit is {limit}.")


def _check_base64_alphabet(compact: str) -> None:
    """Explain the usual base64 mistakes precisely instead of echoing binascii's terse errors."""
    bad = _NOT_BASE64.search(compact)
    if bad:
        hint = " (URL-safe base64 is not accepted; use '+' and '/')" if bad[0] in "-_" else ""
        raise BadRequest(f"The data URI's base64 data contains {bad[0]!r} at position "
                         f"{bad.start()}, which is not a base64 character{hint}.")
    stripped = compact.rstrip("=")
    if "=" in stripped or len(compact) - len(stripped) > 2:
        raise BadRequest("The data URI's base64 padding '=' may appear only at the end, "
                         "at most twice.")
    if len(compact) % 4:
        raise BadRequest("The data URI's base64 data has missing or extra characters "
                         "(its length is not a multiple of 4; is the '=' padding missing?).")


def _megabytes(size: int) -> str:
    return f"{size / 1_000_000:.1f} MB" if size >= 100_000 else f"{size} bytes"


def audio_data_uri(data: bytes, mime_type: str) -> str:
    """Wrap encoded audio in a `data:<mime_type>;base64,...` URI that a browser can play."""
    return f"data:{mime_type};base64," + base64.b64encode(data).decode("ascii")


def wav_data_uri(wav: bytes) -> str:
    """Wrap WAV bytes in the `data:audio/wav;base64,...` URI the frontend plays."""
    return audio_data_uri(wav, "audio/wav")
