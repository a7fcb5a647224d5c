"""Continuous batching: one thread owns the model and decodes every sentence in flight together.

Requests (and the sentences of one request) are `Utterance`s. The scheduler admits waiting ones
at step boundaries (a request's first sentence first, and only it into the last free row),
prefills each into a free row of the GPT's key/value cache (on a GPU all that join at one step in
one pass), then advances all live rows by one token per step, each with its own sampling settings;
a row leaves when it emits the stop token, reaches the token cap, or its consumer cancels it. After
each step the vocoder windows that are ready, from any row, are vocoded together. Voices with
fine-tuned weights only share a batch with sequences of the same weights: a batch drains before the
weights change, and a waiting sequence of other weights stops newer ones from joining, so no voice
waits for ever. A sequence whose own inputs fail (at its prefill, or NaN scores later) ends alone
with the error; a failure of the batch's shared work (its weights, a step, the vocoder) ends every
sequence in the batch.

On a GPU the thread keeps one step queued ahead (`lookahead`): it queues step N+1 before it reads
step N's tokens back, so the GPU computes while the host does the scheduler's work, where waiting
for each step left the GPU idle for it. That works because a step needs no token from the host:
each row's next input token stays on the device, written there by the step before, and its
positions only grow by one a step. A row whose stop token the host has not read yet is stepped once
more, and that step's result is dropped. Vocoded audio is read back the same way, one turn later.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from voiceforge.decoding.gpt import GptDecoder, StepOutput
from voiceforge.decoding.hifigan import TrimmedGenerator
from voiceforge.decoding.sampling import SamplingTable
from voiceforge.decoding.transfers import Readback, to_device
from voiceforge.decoding.vocoder import Window, WindowedVocoding, vocode

if TYPE_CHECKING:
    from voiceforge.services.engine import Sampling

log = logging.getLogger(__name__)

_DONE = object()  # end of an utterance's audio pieces
# Token ids in stock XTTS's prompt (placeholder 1s for the prefix, then the start token), which
# transformers' repetition penalty counts as seen: penalising them too keeps tokens identical.
_PROMPT_PLACEHOLDER = 1
NON_FINITE = "decoding produced NaN or infinite scores for this sequence (damaged latents or weights?)"


@dataclass(eq=False)
class Utterance:
    """One sentence to speak: what to decode, and the queue its audio pieces arrive on.

    `first_window` and `window` are vocoder window sizes in tokens; `tokens` collects the audio
    tokens as they are chosen. `opens` marks a request's first sentence, which waits behind no other
    request's later sentences. Read the audio with `pieces()`; `cancel()` drops it at the next step.
    """

    text_tokens: torch.Tensor  # (T,) int, from the model's tokenizer
    cond_latent: torch.Tensor  # (1, 32, dim)
    speaker: torch.Tensor  # (1, 512, 1)
    settings: Sampling
    speed: float = 1.0
    weights: str | None = None  # a fine-tuned GPT's file, None for the checkpoint's
    first_window: int = 32
    window: int = 32
    opens: bool = False
    tokens: list[int] = field(default_factory=list)
    _out: queue.Queue[Any] = field(default_factory=queue.Queue, repr=False)
    _cancelled: threading.Event = field(default_factory=threading.Event, repr=False)

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def pieces(self) -> Iterator[np.ndarray]:
        """Audio pieces (float32 mono, 24 kHz) as their windows are vocoded; raises what decoding raised."""
        while (item := self._out.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item

    def audio(self) -> np.ndarray:
        pieces = list(self.pieces())
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)


@dataclass(eq=False)
class _Live:
    """An utterance in a cache row: where its next key/value goes and its vocoder state.

    `chosen` counts the steps queued, read back or not; `utterance.tokens` holds the tokens read
    back. `vocoding` is None once its last window is taken (or it ended otherwise).
    """

    utterance: Utterance
    vocoding: WindowedVocoding | None
    prefix_length: int  # positions its prefill filled
    chosen: int = 1  # tokens chosen: the prefill's, and one for each step queued for it
    finished: bool = False  # the host knows it has ended: no more of its tokens count

    @property
    def cache_length(self) -> int:
        """Positions filled in its cache row: the prefix, then the input token of each queued step."""
        return self.prefix_length + self.chosen - 1


@dataclass(eq=False)
class _QueuedStep:
    """A step queued on the device: its rows in order, which of them it advanced (the others were
    stepped only to keep the batch packed), and each row's token and whether its scores were finite."""

    rows: list[_Live]
    advanced: list[bool]
    results: Readback  # (2, rows): chosen token, finite (1) or not (0)


@dataclass(eq=False)
class _QueuedAudio:
    """Vocoder windows queued on the device, whose samples go to their utterances once read back."""

    utterances: list[Utterance]
    windows: list[Window]
    last: list[bool]  # whether it is its utterance's last window
    samples: Readback


class BatchScheduler:
    """Owns a loaded Xtts model's decoding: submit utterances from any thread, read their pieces.

    `model_lock` is held for each step (admissions, one token for every live row, vocoding), so
    other users of the model (conditioning latents, weight swaps) interleave between steps;
    `use_weights(path)` puts a fine-tuned GPT (or the checkpoint's, for None) in place under it.
    `decoder` defaults to a GptDecoder of `rows` rows in the model's dtype; `step_runner` replaces
    its step (CUDA graphs: cuda_graphs.GraphedStep.step; fused kernels: cuda_step.choose_step), and
    `step_kernels` names whose kernels it runs (as choose_step does) and `cuda_graphs` whether it replays
    graphs (by default: whether a runner was given). `decoder_has_base_weights` says the decoder
    was built while the model held its base weights, so that its copies (oneDNN's packing, another
    dtype's weights) need no refresh before the first step: about 0.7-5 s on a CPU for XTTS-v2.
    `vocoder_dtype` runs HiFiGAN in bfloat16 or float16 (hifigan.TrimmedGenerator).
    """

    def __init__(self, model: Any, model_lock: threading.Lock, use_weights: Callable[[str | None], None], *,
                 rows: int = 8, decoder: GptDecoder | None = None,
                 step_runner: Callable[..., StepOutput] | None = None, step_kernels: str = "torch",
                 cuda_graphs: bool | None = None, decoder_has_base_weights: bool = False,
                 vocoder_dtype: torch.dtype | None = None) -> None:
        self.model = model
        self.decoder = decoder or GptDecoder(model, rows)
        self.rows = self.decoder.rows
        self._step_runner = step_runner or self.decoder.step
        self._described_step = {"cudaGraphs": step_runner is not None if cuda_graphs is None else cuda_graphs,
                                "stepKernels": step_kernels}
        self.vocoder = TrimmedGenerator(model.hifigan_decoder.waveform_decoder, vocoder_dtype)
        # The weights the decoder's copies were last refreshed from; None: unknown, refresh before a step.
        self._decoder_weights: tuple[str | None] | None = (None,) if decoder_has_base_weights else None
        self.table = SamplingTable(self.rows, model.gpt.num_audio_tokens, self.decoder.device)
        # Every row's GPT latents so far (float32, what the vocoder reads), one per audio token: a
        # step writes all rows' in one copy, and a window reads a row's as one slice.
        self.latents = torch.zeros(self.rows, self.decoder.max_new_tokens + 1, self.decoder.dim,
                                   device=self.decoder.device)
        # Every row's next input token, written by the step (or admission) that chose it: it never
        # goes through the host, so a step can be queued before the last one's tokens are read back.
        self.next_tokens = torch.zeros(self.rows, dtype=torch.long, device=self.decoder.device)
        # Steps queued ahead of reading their results: 1 on a GPU (its work overlaps the host's); 0 on a
        # CPU, where a step runs on the calling thread, so one ahead would only add a wasted step.
        self.lookahead = 1 if self.decoder.device.type == "cuda" else 0
        self._queued_steps: deque[_QueuedStep] = deque()
        self._queued_audio: list[_QueuedAudio] = []
        self._model_lock = model_lock
        self._use_weights = use_weights
        self._waiting: list[Utterance] = []
        self._live: list[_Live] = []
        self._weights: str | None = None  # the live batch's weights
        self._condition = threading.Condition()
        self._closed = False
        # Whether the last free row waits for a request's first sentence (_take_joining); benchmarks
        # turn it off to measure what it costs.
        self.keep_a_row = True
        self.steps = 0  # decoding steps run, for benchmarks and tests
        self.max_batch = 0  # the most rows ever live in one step
        self._thread = threading.Thread(target=self._run, name="voiceforge-decoder", daemon=True)
        self._thread.start()

    # -- from any thread -------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """How this decoder runs, after any fallback: what /readyz reports once it is built."""
        return {"rows": self.rows, "gptDtype": _dtype_name(self.decoder.dtype),
                "vocoderDtype": _dtype_name(self.vocoder.dtype), "matmul": self.decoder.matmul.name,
                **self._described_step}

    def submit(self, utterance: Utterance) -> Utterance:
        """Queue an utterance; its pieces arrive as it is decoded.

        First come, first served, except that a request's first sentence goes ahead of the waiting
        later sentences of requests already speaking: a new listener's first audio never waits for
        another's long text. It never goes ahead of a sentence with other weights, though: that one
        waits for the live batch to drain, and newcomers joining the batch would keep it from draining.
        (The queue holds a bounded number of requests, so nothing starves.)
        """
        with self._condition:
            if self._closed:
                raise RuntimeError("the decoder is closed")
            place = len(self._waiting)
            if utterance.opens:
                behind = max((i + 1 for i, waiting in enumerate(self._waiting)
                              if waiting.weights != utterance.weights), default=0)
                place = next((i for i in range(behind, place) if not self._waiting[i].opens), place)
            self._waiting.insert(place, utterance)
            self._condition.notify()
        return utterance

    def close(self) -> None:
        """Stop the thread; whatever is waiting or live ends with an error."""
        with self._condition:
            self._closed = True
            self._condition.notify()
        self._thread.join()

    # -- the decoding thread ---------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._closed and not self._waiting and not self._live:
                    self._condition.wait()
                if self._closed:
                    break
                joining = self._take_joining()
            try:
                with self._model_lock, torch.inference_mode():
                    # The batch's weights: a failure here (a deleted voice's file) is every sequence's,
                    # since only sequences of the same weights share a batch.
                    self._use_weights(self._weights)
                    if self._decoder_weights != (self._weights,):
                        self.decoder.refresh()
                        self._decoder_weights = (self._weights,)
                    # Prefilled together on a GPU (one pass launches its kernels once for all), one at a
                    # time on a CPU, whose arithmetic must stay bit for bit stock's.
                    group = len(joining) if self.decoder.prefill_together else 1
                    while joining:
                        self._admit(joining[:group])  # a sequence's own failure here ends only that one
                        del joining[:group]
                    self._drop_cancelled()
                    queued = self._queue_step()
                    # Read back every step but the `lookahead` newest, or all of them when none was
                    # queued (the rows left have all their tokens chosen).
                    self._read_steps(keep=self.lookahead if queued else 0)
                    self._vocode()
                    self._retire()
                    if not self._live:  # nothing more to overlap with: the last audio goes out now
                        self._read_steps(keep=0)
                        self._deliver_audio()
            except BaseException as error:  # the batch's shared work failed: every sequence in it ends
                # (except those already ended: cancelled, failed alone, or all their audio out)
                stranded = self._owed_audio() + joining
                log.exception("decoding failed; ending %d utterance(s)", len(stranded))
                for utterance in stranded:
                    _end(utterance, error)
                self._live = []  # every row is free again; their caches are simply overwritten
                self._queued_steps.clear()
                self._queued_audio = []
        self._fail_all(RuntimeError("the decoder was closed"))

    def _take_joining(self) -> list[Utterance]:
        """Waiting utterances that may join now: same weights as the batch, oldest first, rows allowing.

        With three rows or more the last free row takes only a request's first sentence (`opens`,
        queued ahead of the others): a long text's later sentences leave it free, so a new listener's
        first audio starts at once instead of after one of theirs ends. (With two, keeping one would
        halve a long text's speed.)
        """
        # Sequences cancelled while waiting (their clients left) go now: one of other weights would
        # otherwise hold newer ones back until the batch drained, then cost two weight swaps for nothing.
        for cancelled in [waiting for waiting in self._waiting if waiting.cancelled]:
            self._waiting.remove(cancelled)
            cancelled._out.put(_DONE)
        if not self._live and self._waiting:
            self._weights = self._waiting[0].weights
        joining: list[Utterance] = []
        free = self.rows - len(self._live)
        while self._waiting and len(joining) < free and self._waiting[0].weights == self._weights:
            last_free_row = free - len(joining) == 1 and self.rows > 2
            if last_free_row and self.keep_a_row and not self._waiting[0].opens:
                break
            joining.append(self._waiting.pop(0))
        return joining

    def _admit(self, group: list[Utterance]) -> None:
        """Prefill utterances into the next free rows, in one pass; one whose own inputs fail (the shape
        of its latents, NaN scores) ends alone, and the rows of others are untouched.
        """
        decoder = self.decoder
        device = decoder.device
        ready: list[Utterance] = []
        prefixes: list[torch.Tensor] = []
        for utterance in group:
            if utterance.cancelled:
                utterance._out.put(_DONE)
                continue
            try:
                prefixes.append(decoder.prefix_embeddings(utterance.cond_latent.to(device),
                                                          utterance.text_tokens.to(device)))
            except Exception as error:
                log.exception("an utterance failed at admission; the batch goes on")
                _end(utterance, error)
                continue
            ready.append(utterance)
        if not ready:
            return
        first = len(self._live)
        try:
            output = decoder.prefill_rows(first, prefixes)
        except Exception as error:  # nothing of the live rows was touched: only these end
            log.exception("%d utterance(s) failed at admission; the batch goes on", len(ready))
            for utterance in ready:
                _end(utterance, error)
            return
        finite = torch.isfinite(output.logits).all(dim=-1).tolist()
        admitted = []
        for index, utterance in enumerate(ready):
            if not finite[index]:
                log.error("an utterance's scores were NaN or infinite at admission; the batch goes on")
                _end(utterance, FloatingPointError(NON_FINITE))
                decoder.clear_row(first + index)  # its prefill's keys and values would poison the row
                continue
            row = first + len(admitted)
            if row != first + index:  # a failed one before it left a hole: keep the rows packed
                decoder.move_row(first + index, row, prefixes[index].shape[0])
            self.table.assign(row, utterance.settings, [_PROMPT_PLACEHOLDER, decoder.start_token])
            admitted.append(index)
        if not admitted:
            return
        picked = torch.tensor(admitted, device=device)
        rows = torch.arange(first, first + len(admitted), device=device)
        sample = any(not ready[index].settings.greedy for index in admitted)
        chosen = self.table.choose(output.logits[picked], rows, sample=sample)
        self.next_tokens[rows] = chosen
        self.latents[rows, 0] = output.latents[picked].float()
        tokens = chosen.tolist()
        for index, token in zip(admitted, tokens, strict=True):
            utterance = ready[index]
            vocoding = WindowedVocoding(self.model, utterance.speaker.to(device), utterance.speed,
                                        first=utterance.first_window, window=utterance.window)
            live = _Live(utterance, vocoding, prefixes[index].shape[0])
            self._record(live, token)
            self._live.append(live)

    def _record(self, live: _Live, token: int) -> None:
        """The sequence's next token, read back (its latent is already in `self.latents`)."""
        live.utterance.tokens.append(token)
        live.finished = (token == self.decoder.stop_token
                         or len(live.utterance.tokens) >= self.decoder.max_new_tokens)

    def _drop_cancelled(self) -> None:
        for live in self._live:
            if live.utterance.cancelled and not live.finished:
                live.finished = True
                live.utterance._out.put(_DONE)
                live.vocoding = None  # nothing more to vocode

    def _queue_step(self) -> bool:
        """Queue one step of every row (without waiting for the device); False if no row has a token to
        choose: all have ended, or have every token up to the cap chosen in steps already queued."""
        cap = self.decoder.max_new_tokens
        advancing = [not live.finished and live.chosen < cap for live in self._live]
        if not any(advancing):
            return False
        # Rows that do not advance (ended, or stepped only to keep the batch packed) sit among live ones
        # until _retire packs them: they write past their own keys, values and latents, and are ignored.
        n = len(self._live)
        positions = [[live.chosen for live in self._live], [live.cache_length for live in self._live]]
        audio_positions, cache_positions = to_device(positions, self.decoder.device)
        tokens = self.next_tokens[:n]
        output = self._step_runner(tokens, audio_positions, cache_positions, max(positions[1]) + 1)
        # A row with NaN or infinite scores ends alone. (A sum is not finite when a term is not, or when
        # it overflows, which needs scores near 1e35: one kernel, where isfinite().all() takes two.)
        # It would make the batch's shared draw fail for every row, so when sampling it draws from
        # neutral scores; a greedy arg-max just picks some token for it.
        finite = torch.isfinite(output.logits.sum(dim=-1))
        sample = any(not live.utterance.settings.greedy for live in self._live)
        logits = torch.where(finite[:, None], output.logits, 0.0) if sample else output.logits
        chosen = self.table.choose(logits, sample=sample)  # rows 0..n-1
        tokens.copy_(chosen)  # the next step's input tokens (the step above has read these)
        # Each row's latent goes to its next place (a copy: a graph's outputs are overwritten by its
        # next replay); a row stepped only to keep the batch packed writes past its own latents.
        self.latents[torch.arange(n, device=self.decoder.device), audio_positions] = output.latents.float()
        self._queued_steps.append(_QueuedStep(list(self._live), advancing,
                                              Readback(torch.stack([chosen, finite.long()]))))
        for live, advances in zip(self._live, advancing, strict=True):
            if advances:
                live.chosen += 1
        self.steps += 1
        self.max_batch = max(self.max_batch, sum(advancing))
        return True

    def _read_steps(self, keep: int) -> None:
        """Read back the tokens of the oldest queued steps, all but the newest `keep` (waiting for them)."""
        while len(self._queued_steps) > keep:
            step = self._queued_steps.popleft()
            chosen, usable = step.results.wait().tolist()
            for index, (live, advanced) in enumerate(zip(step.rows, step.advanced, strict=True)):
                if not advanced or live.finished:
                    continue  # stepped to keep the batch packed, or ended since: the result is ignored
                if not usable[index]:
                    log.error("a sequence's scores became NaN or infinite; it ends, the batch goes on")
                    live.finished = True
                    live.vocoding = None
                    _end(live.utterance, FloatingPointError(NON_FINITE))
                    self.decoder.clear_row(self._live.index(live))  # its row now, if _retire moved it
                    continue
                self._record(live, chosen[index])

    def _vocode(self) -> None:
        """Queue the vocoder windows that are due, from any row; on a GPU their audio goes out next turn."""
        self._deliver_audio()  # first: a window's audio sets where its sequence's next window starts
        windows: list[Window] = []
        owners: dict[int, tuple[Utterance, bool]] = {}  # id(window): its utterance, whether its last
        for row, live in enumerate(self._live):
            vocoding, count = live.vocoding, len(live.utterance.tokens)
            if vocoding is None or not vocoding.ready(count, live.finished):
                continue
            window = vocoding.take(self.latents[row, :count], live.finished)
            windows.append(window)
            owners[id(window)] = (live.utterance, live.finished)
        if not windows:
            return
        for batch, samples in vocode(self.vocoder, windows):
            utterances, last = zip(*(owners[id(window)] for window in batch), strict=True)
            self._queued_audio.append(_QueuedAudio(list(utterances), batch, list(last), samples))
        for live in self._live:
            if live.finished:  # its last window is queued (a failure before here still owes it audio)
                live.vocoding = None
        if self.lookahead == 0:
            self._deliver_audio()

    def _deliver_audio(self) -> None:
        """Send the queued windows' audio to their utterances, in the order they were queued."""
        for audio in self._queued_audio:
            wavs = audio.samples.wait().numpy()
            for utterance, window, last, wav in zip(audio.utterances, audio.windows, audio.last, wavs,
                                                    strict=True):
                piece = window.owner.finish(window, wav)
                if piece.size and not utterance.cancelled:
                    utterance._out.put(piece)
                if last:
                    utterance._out.put(_DONE)
        self._queued_audio = []

    def _retire(self) -> None:
        """Remove finished rows, moving the last live row into each hole so rows 0..n-1 stay packed."""
        for row in range(len(self._live) - 1, -1, -1):
            if not self._live[row].finished:
                continue
            last = len(self._live) - 1
            if row != last:
                # Queued after the steps in flight, so what they write into the last row moves too.
                moved = self._live[last]
                self.decoder.move_row(last, row, moved.cache_length)
                self.table.move_row(last, row)
                self.latents[row, :moved.chosen] = self.latents[last, :moved.chosen]
                self.next_tokens[row] = self.next_tokens[last]
                self._live[row] = moved
            self._live.pop()

    def _owed_audio(self) -> list[Utterance]:
        """Utterances with audio still to come: live ones with windows to take, and queued windows'."""
        owed = [live.utterance for live in self._live if live.vocoding is not None]
        owed += [utterance for audio in self._queued_audio for utterance in audio.utterances]
        return list(dict.fromkeys(owed))  # each once, in order

    def _fail_all(self, error: BaseException) -> None:
        with self._condition:
            # Live ones, those whose last audio is queued (no longer live), and those waiting.
            live = [live.utterance for live in self._live]
            stranded = list(dict.fromkeys(live + self._owed_audio())) + self._waiting
            self._live, self._waiting, self._queued_audio = [], [], []
        for utterance in stranded:
            _end(utterance, error)


def _end(utterance: Utterance, error: BaseException) -> None:
    """End an utterance with an error: its consumer raises it instead of reading more audio."""
    utterance._out.put(error)
    utterance._out.put(_DONE)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
