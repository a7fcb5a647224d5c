"""Turn a prepared Speech into encoded bytes as the audio is produced, for streamed HTTP responses."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import numpy as np
from flask import Response, request
from werkzeug.wsgi import ClosingIterator

from voiceforge.audio.encode import FORMATS, StreamEncoder
from voiceforge.services.synthesis import Speech

log = logging.getLogger(__name__)


def audio_response(speech: Speech, fmt: str) -> Response:
    """A chunked HTTP response that sends `fmt` bytes as the audio is synthesised."""
    response = Response(encoded_stream(speech, fmt), mimetype=FORMATS[fmt].mime_type_at(speech.rate),
                        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
    # Anything that asks for the length (a logger, an after_request hook) would otherwise silently
    # read the whole stream into memory first; with this it gets None instead.
    response.implicit_sequence_conversion = False
    return response


def encoded_stream(speech: Speech, fmt: str) -> ClosingIterator:
    """Bytes of `fmt` as each chunk of audio is synthesised; closing it early stops synthesis.

    The first audio is awaited here, in the view, so a failure before it (a fine-tuned voice
    deleted while its request waited) is still answered as a JSON error: no byte has been sent.
    The server closes the iterator when a client disconnects, even before it began sending: the
    chunks are closed with it, so synthesis stops within one chunk and the queue place is given
    back. A failure after the first byte cannot become a JSON error any more: it is logged and
    re-raised, so the server aborts the response without its final chunk and the client can tell.
    """
    chunks = speech.stream()
    _bound_send_time(speech.runtime.settings.stream_send_timeout)
    return ClosingIterator(_encoded(speech, chunks, fmt), [chunks.close, speech.close])


def _bound_send_time(seconds: float) -> None:
    """Give up on a client that stays connected but stops reading, after `seconds` of one blocked write.

    gunicorn's gthread worker writes with no timeout: such a client would hold its thread and its place
    in the inference queue for ever, and as many of them as there are places answer everyone 503. The
    write's timeout ends the response as a disconnect does (synthesis stops, the place is given back).
    gunicorn puts a kept-alive connection's socket back in blocking mode for its next request.
    """
    sock = request.environ.get("gunicorn.socket")
    if sock is not None and seconds > 0:
        sock.settimeout(seconds)


def _encoded(speech: Speech, chunks: Iterator[np.ndarray], fmt: str) -> Iterator[bytes]:
    encoder = StreamEncoder(fmt, speech.rate)
    started = time.perf_counter()
    sent = 0
    try:
        for chunk in chunks:
            data = encoder.write(chunk)
            if data:
                sent += len(data)
                yield data
        data = encoder.close()
        if data:
            sent += len(data)
            yield data
        log.info("streamed %d bytes of %s in %.2f s", sent, fmt, time.perf_counter() - started)
    except GeneratorExit:
        log.info("client went away after %d bytes of %s; synthesis stopped", sent, fmt)
        raise
    except Exception:
        log.exception("synthesis failed after %d bytes of %s were sent; the stream ends here", sent, fmt)
        raise
    finally:
        chunks.close()
        speech.close()
        encoder.close()
