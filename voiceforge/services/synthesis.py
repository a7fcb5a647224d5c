"""Speech synthesis in two steps: prepare (each 4xx and 503 known before decoding), then audio by chunk."""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Generator, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from voiceforge import logs, metrics
from voiceforge.errors import Busy, Conflict
from voiceforge.finetune.weights import UnusableWeights
from voiceforge.runtime import Runtime
from voiceforge.services.catalogue import VoiceHandle
from voiceforge.services.engine import OUTPUT_RATE, Sampling, first_line, out_of_memory

if TYPE_CHECKING:
    from voiceforge.decoding.scheduler import Utterance
from voiceforge.services.abbreviations import spell_out
from voiceforge.services.languages import normalise_language
from voiceforge.services.text import clean_text, split_text

log = logging.getLogger(__name__)


def sampling_for(variability: float) -> Sampling:
    """Map variability 0..1 monotonically onto XTTS sampling.

    0 -> greedy decoding (identical requests give identical audio); 0.5 -> XTTS defaults
    (temperature 0.75, top-p 0.85); 1 -> temperature 1.0, top-p 0.95. Linear in between.
    """
    if variability <= 0:
        # Neutral values: transformers warns about sampling flags that greedy decoding ignores.
        return Sampling(greedy=True, temperature=1.0, top_p=1.0)
    if variability <= 0.5:
        share = variability / 0.5
        return Sampling(greedy=False, temperature=max(0.05, 0.75 * share), top_p=0.5 + 0.35 * share)
    share = (variability - 0.5) / 0.5
    return Sampling(greedy=False, temperature=0.75 + 0.25 * share, top_p=0.85 + 0.10 * share)


@dataclass
class Speech:
    """A prepared request: validated, its voice resolved and its queue place held until it is done.

    Iterate `chunks()` once (or call `close()`): the queue place is released when the audio is
    finished, when the consumer stops early (a client that disconnects), or on any error.
    """

    runtime: Runtime
    chunks_of_text: list[str]
    language: str
    voice: VoiceHandle
    sampling: Sampling
    speed: float
    _place: ExitStack = field(default_factory=ExitStack, repr=False)

    @property
    def rate(self) -> int:
        return OUTPUT_RATE

    def chunks(self) -> Iterator[np.ndarray]:
        """Mono float32 audio at 24 kHz: each sentence chunk, with the configured pause between them.

        Every chunk is handed to the decoder at once, so the sentences are decoded together.
        """
        yield from self._speak(streaming=False)

    def stream(self) -> Iterator[np.ndarray]:
        """Like chunks(), but each sentence arrives in windows of up to 3 s of audio as decoded.

        The first window is 0.35 s: the first audio is ready after it and one vocoder pass, whatever
        the length of the text. With variability 0 the audio tokens are the ones chunks() speaks.
        Decoding starts here and this returns once the first piece is ready, so a failure before any
        audio (a voice deleted while its request waited: 404) is raised while an HTTP error can still
        be answered. Close the iterator to stop early.
        """
        return _Started(self._speak(streaming=True))

    def _speak(self, *, streaming: bool) -> Generator[np.ndarray, None, None]:
        # Recorded once the audio is all out: the time spent here, not in the consumer's hands.
        return metrics.measured_stream(self._decode(streaming=streaming))

    def _decode(self, *, streaming: bool) -> Generator[np.ndarray, None, tuple[float, int]]:
        """The audio pieces, a pause between chunks (not sentences); returns (seconds of speech, tokens)."""
        engine = self.runtime.engine
        # The pause keeps pace with the speech: at speed 2 the whole text takes half the time.
        pause_seconds = self.runtime.settings.sentence_pause_ms / 1000 / self.speed
        pause = np.zeros(round(OUTPUT_RATE * pause_seconds), dtype=np.float32)
        # A whole response hands every chunk to the decoder at once (decoded together). A stream starts
        # with its first chunk alone, so its first audio does not wait behind a long text's prefills
        # and bigger batches; once that audio is out the rest join it, decoded while it plays, and
        # the stream takes no longer in all than the whole response.
        chunks = list(self.chunks_of_text)
        later = chunks[1:] if streaming else []
        in_flight: list[Utterance] = []

        def start(texts: list[str], *, continuing: bool) -> None:
            in_flight.extend(engine.speak(texts, self.language, self.voice.latents, self.sampling,
                                          self.speed, self.voice.weights, streaming=streaming,
                                          continuing=continuing))

        def start_the_rest() -> None:  # a stream's first audio is out (or its first chunk gave none)
            if later:
                start(later, continuing=True)
                later.clear()

        with self._place:
            samples = tokens = 0
            try:
                start(chunks[:1] if streaming else chunks, continuing=False)
                index = 0
                while in_flight:
                    # It leaves in_flight only once all its audio is out: a consumer that stops while it
                    # plays cancels it too (below), or it would decode on to the token cap, unheard.
                    utterance = in_flight[0]
                    if index and pause.size:
                        yield pause
                    for piece in utterance.pieces():
                        start_the_rest()
                        samples += piece.size
                        yield piece
                    in_flight.pop(0)
                    tokens += len(utterance.tokens)
                    start_the_rest()
                    index += 1
            except FileNotFoundError as error:
                # The decoder reads a fine-tuned voice's GPT weights when its turn comes: a voice
                # deleted meanwhile (or its files lost) is the client's 404 (or 409), not a 500.
                if self.voice.weights is None or os.path.exists(self.voice.weights):
                    raise
                raise self.runtime.catalogue.vanished(self.voice) from error
            except UnusableWeights as error:  # checked as the decoder reads them, like a vanished file
                log.error("voice %s cannot speak: %s", self.voice.voice_id, error)
                raise Conflict(f"Voice {self.voice.voice_id!r} has fine-tuned weights this model cannot use "
                               "(made for another checkpoint, or damaged); fine-tune it again.") from error
            except (MemoryError, RuntimeError) as error:  # torch.OutOfMemoryError is a RuntimeError
                if not out_of_memory(error):
                    raise
                # A peak of long texts can exhaust the GPU's memory (or the RAM) in a step: that
                # batch's sequences end and the decoder goes on, so this is a retry, not a 500.
                raise Busy(f"The speech engine ran out of memory while decoding ({first_line(error)}); "
                           "retry shortly. If this recurs, the operator should lower VOICEFORGE_MAX_BATCH.",
                           retry_after=2) from error
            finally:
                for utterance in in_flight:  # a consumer that stops early frees the decoder's rows
                    utterance.cancel()  # (one that has ended already ignores it)
        return samples / OUTPUT_RATE, tokens

    def close(self) -> None:
        """Give the queue place back without speaking (or after an early stop)."""
        self._place.close()

    def audio(self) -> np.ndarray:
        """All chunks joined: the whole-response path."""
        return np.concatenate(list(self.chunks()))


class _Started(Iterator[np.ndarray]):
    """Audio pieces whose first one (or the error before it) has been awaited already."""

    def __init__(self, pieces: Generator[np.ndarray, None, None]) -> None:
        self._pieces = pieces
        self._first = list(itertools.islice(pieces, 1))  # raises what decoding raised before any audio

    def __next__(self) -> np.ndarray:
        return self._first.pop() if self._first else next(self._pieces)

    def close(self) -> None:
        """Stop early: the decoder drops this request's sentences and its queue place is given back."""
        self._pieces.close()


def prepare(runtime: Runtime, text: str, voice_id: str, *, speed: float = 1.0, variability: float = 0.5,
            language: str | None = None) -> Speech:
    """Everything that can fail with a 4xx or a 503, before any audio exists.

    Text (422), language (422), voice (404/409), the model (503 unavailable) and a place in the
    engine's queue (503 busy). The returned Speech holds that place.
    """
    settings = runtime.settings
    cleaned = clean_text(text, max_chars=settings.max_text_chars)
    requested = normalise_language(language) if language else None
    voice = runtime.catalogue.handle(voice_id)
    lang = requested or voice.language or settings.default_language
    spoken = spell_out(cleaned, lang)
    chunks = split_text(spoken, lang, too_long=lambda chunk: runtime.engine.too_long(chunk, lang))
    for chunk in chunks:
        runtime.engine.check_text(chunk, lang)
    place = ExitStack()
    place.enter_context(metrics.queue_place(runtime.engine.reserve()))  # counts depth and 503 refusals
    logs.bind(voice_id=voice_id, chars=len(cleaned))  # the request's log lines carry them; never the text
    log.info("speaking %d chunk(s), %d chars, voice %s, %s", len(chunks), len(cleaned), voice_id, lang)
    return Speech(runtime, chunks, lang, voice, sampling_for(variability), speed, place)
