"""Our decoding engine (voiceforge/decoding/) against stock XTTS: same tokens, batched, continuous.

Every test runs the real model code of a random-weight checkpoint; the CUDA tests run only where
CUDA is present (a GPU machine), and skip cleanly elsewhere.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.support.checkpoint import build_checkpoint
from tests.support.stepping import stepping_ahead
from voiceforge.decoding.matmul import PackedMatmul, ReferenceMatmul
from voiceforge.decoding.sampling import SamplingTable
from voiceforge.decoding.scheduler import Utterance
from voiceforge.finetune.export import export_gpt
from voiceforge.services.engine import Engine, EngineSettings, Latents, Sampling, read_speakers

# What variability 0 and 1 mean (voiceforge.services.synthesis.sampling_for), spelled out so these
# tests import no web stack: they also run on a bare GPU machine.
GREEDY = Sampling(greedy=True, temperature=1.0, top_p=1.0)
VARIED = Sampling(greedy=False, temperature=1.0, top_p=0.95)


def every_text() -> list[tuple[str, str]]:
    """(language, text) pairs of TEXTS, in order."""
    return [(language, text) for language, texts in TEXTS.items() for text in texts]
TEXTS = {
    "en": ["Hello there.", "The quick brown fox jumps over the lazy dog.", "Numbers like 42 are spelled out.",
           "A somewhat longer sentence, with a comma, to make a longer prompt for the model."],
    "de": ["Guten Morgen, wie geht es dir?", "Ein kurzer Satz."],
    "fr": ["Bonjour à tous.", "Une phrase un peu plus longue que la première."],
    "es": ["Hola, ¿qué tal?"], "pt": ["Bom dia a todos."], "pl": ["Dzień dobry."],
    "ru": ["Привет, как дела?"], "nl": ["Goedemorgen allemaal."], "tr": ["Günaydın."],
}


def stock_tokens(engine: Engine, text: str, language: str, latents: Latents) -> list[int]:
    """Greedy audio tokens exactly as stock `model.inference` chooses them (its gpt.generate call)."""
    model = engine.model
    tokens = torch.IntTensor(model.tokenizer.encode(text.strip().lower(), lang=language)).unsqueeze(0)
    with torch.inference_mode():
        codes = model.gpt.generate(cond_latents=latents.gpt_cond_latent.to(model.device),
                                   text_inputs=tokens.to(model.device), do_sample=False, top_p=1.0, top_k=50,
                                   temperature=1.0, num_return_sequences=1, num_beams=1, length_penalty=1.0,
                                   repetition_penalty=GREEDY.repetition_penalty, output_attentions=False)
    return codes[0].tolist()


@pytest.fixture(scope="module")
def voices(checkpoint_dir: Path) -> list[Latents]:
    return list(read_speakers(checkpoint_dir).values())


@pytest.fixture(scope="module")
def long_engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    """Sequences of 247 tokens (about 11 s of audio): long enough to join or cancel mid-way."""
    checkpoint = build_checkpoint(tmp_path_factory.mktemp("long") / "xtts", max_audio_tokens=250)
    return Engine(EngineSettings(model_dir=str(checkpoint), model_name="unused", device="cpu", queue_size=8))


@pytest.mark.parametrize("cpu_matmul", ["onednn", "reference"])
def test_greedy_tokens_equal_stock_over_texts_voices_and_languages(
        shared_engine: Engine, checkpoint_dir: Path, voices, cpu_matmul: str) -> None:
    # reference: transformers' arithmetic, equal by construction; onednn (the default): other rounding,
    # equal wherever no near-tie flips (bench/decode.py counts agreement on the full-size model).
    engine = shared_engine if cpu_matmul == "onednn" else Engine(EngineSettings(
        model_dir=str(checkpoint_dir), model_name="unused", device="cpu", queue_size=8,
        cpu_matmul=cpu_matmul))
    expected = {"onednn": PackedMatmul, "reference": ReferenceMatmul}[cpu_matmul]
    assert isinstance(engine.decoder().decoder.matmul, expected)
    items = [(text, language, voices[n % len(voices)]) for n, (language, text) in enumerate(every_text())]
    # All at once: more than the decoder's 8 rows, so sequences join as others leave.
    spoken = [(item, engine.speak([item[0]], item[1], item[2], GREEDY)[0]) for item in items]
    for (text, language, latents), utterance in spoken:
        utterance.audio()
        assert utterance.tokens == stock_tokens(engine, text, language, latents), (text, language)
    assert len(items) > 8 and engine.decoder().max_batch > 1
    if engine is not shared_engine:
        engine.decoder().close()


def test_a_sequence_decoded_in_a_batch_gives_the_tokens_and_audio_it_gives_alone(
        shared_engine: Engine, voices, lookahead: int) -> None:
    text, latents = "The same sentence, alone and in company.", voices[0]
    (alone,) = shared_engine.speak([text], "en", latents, GREEDY)
    alone_audio = alone.audio()
    # In company: sampled rows (variability 1), other voices, other speeds, in the same steps.
    crowd = [shared_engine.speak([f"Other words number {n}."], "en", voices[n % len(voices)],
                                 VARIED, speed=0.8 + 0.1 * n)[0] for n in range(5)]
    (together,) = shared_engine.speak([text], "en", latents, GREEDY)
    together_audio = together.audio()
    for utterance in crowd:
        assert utterance.audio().size > 0
    assert together.tokens == alone.tokens
    assert np.abs(together_audio - alone_audio).max() < 1e-6


@pytest.fixture(params=[0, 1], ids=["each-step-read", "a-step-ahead"])
def long_lookahead(request: pytest.FixtureRequest, long_engine: Engine) -> Iterator[int]:
    with stepping_ahead(long_engine.decoder(), request.param):
        yield request.param


def test_a_step_ahead_changes_no_token_and_no_sample(shared_engine: Engine, voices) -> None:
    """On a GPU the decoder queues each step before reading the last one's tokens back, so that the GPU
    works while the host does the scheduler's work. Sequences joining and leaving a batch at different
    steps (so rows move as others end), streamed or not, at several speeds, get the same tokens and the
    same audio as when each step is read back first."""
    scheduler = shared_engine.decoder()
    requests = [(f"Sentence number {n} of a crowd.", voices[n % len(voices)], 0.8 + 0.1 * (n % 4), n % 3 == 0)
                for n in range(11)]  # more than the decoder's 8 rows: some join as others leave
    unread_at_each_step: dict[int, list[int]] = {}
    spoken: dict[int, list[tuple[list[int], np.ndarray]]] = {}
    real_step = scheduler._step_runner
    for lookahead in (0, 1):
        unread = unread_at_each_step[lookahead] = []

        def counting(*args: object, unread: list[int] = unread) -> object:
            unread.append(len(scheduler._queued_steps))  # steps queued and not read back yet
            return real_step(*args)

        scheduler._step_runner = counting
        try:
            with stepping_ahead(scheduler, lookahead):
                utterances = []
                for text, latents, speed, streaming in requests:  # two steps apart, so rows end apart
                    steps, deadline = scheduler.steps, time.monotonic() + 5  # (or the batch emptied)
                    utterances += shared_engine.speak([text], "en", latents, GREEDY, speed=speed,
                                                      streaming=streaming)
                    while scheduler.steps < steps + 2 and time.monotonic() < deadline:
                        time.sleep(0.001)
                spoken[lookahead] = [(utterance.tokens, utterance.audio()) for utterance in utterances]
        finally:
            scheduler._step_runner = real_step
    for (tokens, audio), (ahead_tokens, ahead_audio) in zip(spoken[0], spoken[1], strict=True):
        assert ahead_tokens == tokens
        assert ahead_audio.shape == audio.shape and np.abs(ahead_audio - audio).max() < 1e-6
    assert max(unread_at_each_step[0]) == 0
    # One step ahead: most steps are queued while the last one is unread (not the first after the batch
    # emptied).
    assert max(unread_at_each_step[1]) == 1 and statistics.mean(unread_at_each_step[1]) > 0.8


def test_sequences_join_and_leave_at_step_boundaries(long_engine: Engine, voices,
                                                      long_lookahead: int) -> None:
    decoder = long_engine.decoder()
    steps_before = decoder.steps
    (first,) = long_engine.speak(["A first sentence starts alone."], "en", voices[0], GREEDY,
                                 streaming=True)
    pieces = first.pieces()
    next(pieces)  # the first window is out: `first` is mid-sequence
    (second,) = long_engine.speak(["A second one joins it."], "en", voices[1], GREEDY)
    second.audio()
    list(pieces)
    # Decoded side by side: far fewer steps than one after the other would take.
    assert decoder.steps - steps_before < (len(first.tokens) + len(second.tokens)) * 0.75
    assert second.tokens == stock_tokens(long_engine, "A second one joins it.", "en", voices[1])
    assert first.tokens == stock_tokens(long_engine, "A first sentence starts alone.", "en", voices[0])


def test_a_cancelled_sequence_leaves_the_batch_at_the_next_step(long_engine: Engine, voices,
                                                                long_lookahead: int) -> None:
    decoder = long_engine.decoder()
    (doomed,) = long_engine.speak(["Nobody listens to the end of this."], "en", voices[0], GREEDY,
                                  streaming=True)
    pieces = doomed.pieces()
    next(pieces)
    doomed.cancel()
    assert len(list(pieces)) <= 1  # at most the window that was being vocoded
    assert len(doomed.tokens) < decoder.decoder.max_new_tokens / 2
    (after,) = long_engine.speak(["Room for the next one."], "en", voices[1], GREEDY)
    assert after.audio().size > 0


def test_a_new_requests_first_sentence_goes_ahead_of_other_requests_later_ones(
        checkpoint_dir: Path, voices) -> None:
    """One row, so sentences run one at a time: a listener who just arrived is not kept waiting
    until a long text already being spoken has finished."""
    engine = Engine(EngineSettings(model_dir=str(checkpoint_dir), model_name="unused", device="cpu",
                                   queue_size=8, max_batch=1))
    long = engine.speak([f"Sentence number {n} of a long text." for n in range(4)], "en", voices[0], GREEDY)
    (newcomer,) = engine.speak(["A newcomer's first words."], "en", voices[1], GREEDY, streaming=True)
    finished = finishing_order({**{f"long {n}": item for n, item in enumerate(long)}, "newcomer": newcomer})
    assert finished == ["long 0", "newcomer", "long 1", "long 2", "long 3"]
    engine.decoder().close()


@pytest.mark.parametrize("keep_a_row", [True, False])
def test_a_long_text_leaves_a_row_free_for_a_new_listener(checkpoint_dir: Path, voices,
                                                           keep_a_row: bool) -> None:
    """Three rows and a long text: its later sentences leave the last row to a request's first
    sentence, so a newcomer is spoken alongside instead of after them (not when turned off)."""
    engine = Engine(EngineSettings(model_dir=str(checkpoint_dir), model_name="unused", device="cpu",
                                   queue_size=8, max_batch=3))
    decoder = engine.decoder()
    decoder.keep_a_row = keep_a_row
    steps = decoder.steps
    long = engine.speak([f"Sentence number {n} of a long text." for n in range(5)], "en", voices[0], GREEDY)
    while decoder.steps == steps:  # the long text is being decoded
        time.sleep(0.001)
    (newcomer,) = engine.speak(["A newcomer's first words."], "en", voices[1], GREEDY, streaming=True)
    finished = finishing_order({**{f"long {n}": item for n, item in enumerate(long)}, "newcomer": newcomer})
    assert newcomer.tokens == stock_tokens(engine, "A newcomer's first words.", "en", voices[1])
    # The first two sentences were already running; the third waits for a row, or took the last one.
    assert finished.index("newcomer") < finished.index("long 2") if keep_a_row else \
        finished.index("newcomer") > finished.index("long 2")
    engine.decoder().close()


def finishing_order(utterances: dict[str, Utterance]) -> list[str]:
    """The names of the utterances in the order their audio was all out."""
    finished: list[str] = []
    lock = threading.Lock()

    def wait(name: str, utterance: Utterance) -> None:
        utterance.audio()
        with lock:
            finished.append(name)

    threads = [threading.Thread(target=wait, args=item) for item in utterances.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return finished


def submitted_together(engine: Engine, requests: list[tuple[Latents, Sampling]], text: str) -> list:
    """Utterances that the decoder takes into one batch: it cannot take any until all are queued."""
    decoder = engine.decoder()
    with decoder._condition:
        return [engine.speak([text], "en", latents, sampling)[0] for latents, sampling in requests]


@pytest.mark.parametrize("damage", ["wrong shape", "nan"])
def test_a_sequence_whose_own_inputs_fail_ends_alone_and_its_batch_goes_on(
        shared_engine: Engine, voices, damage: str) -> None:
    """Latents of another checkpoint or with NaN (which a sampled row's draw would choke on) fail
    their own sequence at admission; the others in the batch speak exactly as they would alone."""
    text = "Innocent bystanders keep talking."
    alone = [shared_engine.speak([text], "en", latents, GREEDY)[0] for latents in voices[:2]]
    alone_audio = [utterance.audio() for utterance in alone]
    good = voices[0]
    bad = Latents(torch.zeros(1, 32, 7), good.speaker_embedding) if damage == "wrong shape" else \
        Latents(torch.full_like(good.gpt_cond_latent, float("nan")), good.speaker_embedding)
    first, doomed, second = submitted_together(
        shared_engine, [(voices[0], GREEDY), (bad, VARIED), (voices[1], GREEDY)], text)
    with pytest.raises((RuntimeError, FloatingPointError)):
        doomed.audio()
    for utterance, tokens, audio in zip((first, second), alone, alone_audio, strict=True):
        assert np.abs(utterance.audio() - audio).max() < 1e-6
        assert utterance.tokens == tokens.tokens


def test_sequences_admitted_together_are_prefilled_in_one_pass_each_in_its_own_row(
        checkpoint_dir: Path, voices) -> None:
    """As on a GPU: the sequences that join at a step are prefilled together. One whose latents fail
    (wrong shape before the pass, NaN scores after it) ends alone, the rows after it close up, and
    every other sequence speaks exactly as it does alone. (One text for all: prefixes of one length,
    whose oneDNN matmuls and attention give the same bits in a pass of one or of four.)"""
    engine = Engine(EngineSettings(model_dir=str(checkpoint_dir), model_name="unused", device="cpu",
                                   queue_size=8))
    scheduler = engine.decoder()
    scheduler.decoder.prefill_together = True
    passes: list[int] = []
    prefill_rows = scheduler.decoder.prefill_rows
    scheduler.decoder.prefill_rows = lambda row, prefixes: (passes.append(len(prefixes)),
                                                            prefill_rows(row, prefixes))[1]
    text = "Everyone says the same words."
    alone, alone_audio = [], []
    for latents in voices:
        alone.append(engine.speak([text], "en", latents, GREEDY)[0])
        alone_audio.append(alone[-1].audio())
    assert passes == [1, 1, 1]
    wrong_shape = Latents(torch.zeros(1, 32, 7), voices[0].speaker_embedding)
    nan = Latents(torch.full_like(voices[0].gpt_cond_latent, float("nan")), voices[0].speaker_embedding)
    first, bad_shape, bad_scores, second, third = submitted_together(
        engine, [(voices[0], GREEDY), (wrong_shape, GREEDY), (nan, GREEDY), (voices[1], GREEDY),
                 (voices[2], GREEDY)], text)
    with pytest.raises(RuntimeError):
        bad_shape.audio()
    with pytest.raises(FloatingPointError):
        bad_scores.audio()
    for utterance, expected, audio in zip((first, second, third), alone, alone_audio, strict=True):
        assert np.abs(utterance.audio() - audio).max() < 1e-6
        assert utterance.tokens == expected.tokens
    assert passes[3:] == [4]  # the wrong shape failed before the pass; the NaN one was in it
    # The voices' audio differs (through the GPT's latents, as each row attends to its own voice):
    # a sequence that read another's row would not have matched above.
    assert min(np.abs(alone_audio[a] - alone_audio[b]).max() for a, b in ((0, 1), (1, 2), (0, 2))) > 1e-3
    scheduler.close()


def test_a_pass_of_prefixes_of_different_lengths_equals_each_alone(shared_engine: Engine) -> None:
    """prefill_rows pads shorter prefixes: their outputs and cache rows are each one's own pass's."""
    from voiceforge.decoding.gpt import GptDecoder

    with torch.inference_mode():
        decoder = GptDecoder(shared_engine.model, 6)
        prefixes = [torch.randn(length, decoder.dim, generator=torch.Generator().manual_seed(length))
                    for length in (40, 57, 45)]
        together = decoder.prefill_rows(3, prefixes)
        for index, prefix in enumerate(prefixes):
            alone = decoder.prefill(index, prefix)
            torch.testing.assert_close(together.logits[index], alone.logits[0], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(together.latents[index], alone.latents[0], atol=1e-4, rtol=1e-4)
            length = prefix.shape[0]
            torch.testing.assert_close(decoder.cache[:, :, 3 + index, :, :length],
                                       decoder.cache[:, :, index, :, :length], atol=1e-4, rtol=1e-4)


def test_the_gpu_step_arithmetic_computes_the_cpu_steps_formulas(shared_engine: Engine) -> None:
    """On CUDA a step folds biases and residuals into its matmuls and attends in fused kernels; run
    here on a CPU, those formulas give the exact step's logits up to rounding."""
    from voiceforge.decoding.gpt import GptDecoder, _bmm_mask, _fused_attention

    with torch.inference_mode():
        decoder = GptDecoder(shared_engine.model, 4, cpu_matmul_kind="reference")
        for row in range(4):
            prefix = torch.randn(30 + row, decoder.dim, generator=torch.Generator().manual_seed(row))
            decoder.prefill(row, prefix)
        args = (torch.tensor([5, 9, 2, 7]), torch.tensor([1, 4, 2, 3]), torch.tensor([30, 31, 32, 33]), 34)
        exact = decoder.step(*args).logits
        # (The second step writes each row's new key and value again, at the same place, before reading.)
        decoder._finish_step = decoder._finish_step_block  # the GPU's
        decoder._mask, decoder._attend = _bmm_mask, _fused_attention
        gpu_formulas = decoder.step(*args).logits
    torch.testing.assert_close(gpu_formulas, exact, atol=1e-4, rtol=1e-4)
    assert (gpu_formulas - exact).abs().max() > 0  # it did run other arithmetic


@pytest.mark.parametrize(("sampling", "poison"), [("varied", float("nan")), ("greedy", float("nan")),
                                                  ("greedy", float("-inf"))])
def test_a_row_whose_scores_turn_nan_mid_sequence_ends_alone(shared_engine: Engine, voices, sampling: str,
                                                            poison: float, lookahead: int) -> None:
    """NaN or infinite scores in one row (a damaged fine-tuned weight), sampled or greedy, neither break
    the batch's shared draw nor pass for tokens: that sequence ends with an error and the others go on."""
    text = "Innocent bystanders keep talking."
    (alone,) = shared_engine.speak([text], "en", voices[0], GREEDY)
    alone_audio = alone.audio()
    decoder = shared_engine.decoder()
    real_step = decoder._step_runner
    steps = {"n": 0}

    def poisoning_row_1_once(*args: object):
        output = real_step(*args)
        steps["n"] += 1
        if steps["n"] == 2:
            output.logits[1, 5] = poison
        return output

    decoder._step_runner = poisoning_row_1_once
    try:
        first, doomed, third = submitted_together(
            shared_engine, [(voices[0], GREEDY), (voices[1], {"varied": VARIED, "greedy": GREEDY}[sampling]),
                            (voices[0], GREEDY)], text)
        with pytest.raises(FloatingPointError):
            doomed.audio()
        for utterance in (first, third):
            assert np.abs(utterance.audio() - alone_audio).max() < 1e-6
            assert utterance.tokens == alone.tokens
    finally:
        decoder._step_runner = real_step


@pytest.mark.parametrize("when", ["at admission", "mid-sequence"])
def test_the_row_of_a_sequence_ended_by_nan_speaks_its_next_sequence_as_alone(checkpoint_dir: Path, voices,
                                                                              when: str) -> None:
    """A sequence that ends on NaN scores may leave NaN keys and values in its cache row. A shorter
    sequence put in that row beside a longer one reads past its own length there (masked, but a weight
    of 0 times NaN is NaN): it must still speak as it does alone, not fail for the rest of the process."""
    engine = Engine(EngineSettings(model_dir=str(checkpoint_dir), model_name="unused", device="cpu",
                                   queue_size=8))
    scheduler = engine.decoder()
    long_text, short_text = TEXTS["en"][3], TEXTS["en"][0]
    (short_alone,) = engine.speak([short_text], "en", voices[1], GREEDY)
    short_alone_audio = short_alone.audio()
    real_step = scheduler._step_runner
    steps = {"n": 0}

    def poisoning_row_1_once(tokens: torch.Tensor, audio_positions: torch.Tensor,
                             cache_positions: torch.Tensor, kv_len: int):
        output = real_step(tokens, audio_positions, cache_positions, kv_len)
        steps["n"] += 1
        if steps["n"] == 2:  # as a damaged weight would: the row's new key and value, and its scores
            scheduler.decoder.cache[:, :, 1, :, int(cache_positions[1])] = float("nan")
            output.logits[1] = float("nan")
        return output

    if when == "at admission":
        doomed_latents = Latents(torch.full_like(voices[0].gpt_cond_latent, float("nan")),
                                 voices[0].speaker_embedding)
    else:
        doomed_latents = voices[1]
        scheduler._step_runner = poisoning_row_1_once
    first, doomed = submitted_together(engine, [(voices[0], GREEDY), (doomed_latents, GREEDY)], long_text)
    with pytest.raises(FloatingPointError):
        doomed.audio()
    first.audio()
    scheduler._step_runner = real_step
    with scheduler._condition:  # one batch: the long sequence in row 0, the short one in row 1
        (long,) = engine.speak([long_text], "en", voices[0], GREEDY)
        (short,) = engine.speak([short_text], "en", voices[1], GREEDY)
    long.audio()
    assert np.abs(short.audio() - short_alone_audio).max() < 1e-6
    assert short.tokens == short_alone.tokens
    scheduler.close()


def fine_tuned_weights(engine: Engine, directory: Path) -> str:
    """A voice's fine-tuned GPT file as export_gpt writes it: the base weights plus noise."""
    generator = torch.Generator().manual_seed(3)
    trainer_state = {f"xtts.gpt.{name}": tensor + 0.05 * torch.randn(tensor.shape, generator=generator)
                     for name, tensor in engine.model.gpt.state_dict().items() if tensor.is_floating_point()}
    torch.save({"model": trainer_state}, directory / "checkpoint.pth")
    return str(export_gpt(directory / "checkpoint.pth", directory / "gpt.pth").path)


def test_fine_tuned_weights_decode_only_with_their_own(shared_engine: Engine, voices, tmp_path: Path,
                                                      lookahead: int) -> None:
    weights = fine_tuned_weights(shared_engine, tmp_path)
    text, latents = "Whose weights speak this?", voices[0]
    (base_alone,) = shared_engine.speak([text], "en", latents, GREEDY)
    base_alone.audio()
    (tuned_alone,) = shared_engine.speak([text], "en", latents, GREEDY, weights=weights)
    tuned_alone.audio()
    assert tuned_alone.tokens != base_alone.tokens  # the weights matter
    # Interleaved requests: each is decoded with its own weights, never in a batch with the other's.
    mixed = [shared_engine.speak([text], "en", latents, GREEDY, weights=weights if n % 2 else None)[0]
             for n in range(6)]
    for n, utterance in enumerate(mixed):
        utterance.audio()
        assert utterance.tokens == (tuned_alone if n % 2 else base_alone).tokens
    (base_again,) = shared_engine.speak([text], "en", latents, GREEDY)
    base_again.audio()
    assert base_again.tokens == base_alone.tokens


def test_a_sentence_decoding_with_weights_whose_file_is_removed_finishes_with_them(
        shared_engine: Engine, voices, tmp_path: Path) -> None:
    """A retrain removes the voice's previous weight file once the new one is in place: a sentence
    already decoding with the old weights (in memory) finishes with them instead of failing mid-way."""
    weights = fine_tuned_weights(shared_engine, tmp_path)
    text = "The tuned voice keeps speaking for a while."
    (alone,) = shared_engine.speak([text], "en", voices[0], GREEDY, weights=weights, streaming=True)
    alone_audio = alone.audio()
    (speaking,) = shared_engine.speak([text], "en", voices[0], GREEDY, weights=weights, streaming=True)
    pieces = speaking.pieces()
    first = next(pieces)
    Path(weights).unlink()
    audio = np.concatenate([first, *pieces])
    assert speaking.tokens == alone.tokens
    assert np.abs(audio - alone_audio).max() < 1e-6
    (later,) = shared_engine.speak(["A later request."], "en", voices[0], GREEDY)  # the base weights again
    later.audio()
    (gone,) = shared_engine.speak([text], "en", voices[0], GREEDY, weights=weights)
    with pytest.raises(FileNotFoundError):
        gone.audio()


def test_the_decoder_repacks_its_weights_only_when_a_voice_brings_other_ones(
        checkpoint_dir: Path, voices, tmp_path: Path) -> None:
    """Repacking XTTS-v2's weights for oneDNN takes 0.7-5 s on a CPU: never for the base voices' requests."""
    engine = Engine(EngineSettings(model_dir=str(checkpoint_dir), model_name="unused", device="cpu",
                                   queue_size=8))
    weights = fine_tuned_weights(engine, tmp_path)
    matmul = engine.decoder().decoder.matmul
    repacks: list[int] = []
    matmul.refresh = lambda repack=matmul.refresh: (repacks.append(1), repack())
    for voice_weights, expected in ((None, 0), (None, 0), (weights, 1), (weights, 1), (None, 2)):
        engine.speak(["A short one."], "en", voices[0], GREEDY, weights=voice_weights)[0].audio()
        assert len(repacks) == expected, voice_weights
    engine.decoder().close()


def test_a_sentence_of_other_weights_is_not_kept_waiting_by_new_first_sentences(
        checkpoint_dir: Path, voices, tmp_path: Path) -> None:
    """A fine-tuned voice's later sentence waits for the base voices' batch to drain. Base-voice
    listeners who keep arriving (whose first sentences go ahead of waiting later ones) must not keep
    the batch from ever draining: it is spoken while they go on."""
    engine = Engine(EngineSettings(model_dir=str(checkpoint_dir), model_name="unused", device="cpu",
                                   queue_size=8))
    weights = fine_tuned_weights(engine, tmp_path)
    engine.speak(["Warm up."], "en", voices[0], GREEDY, weights=weights)[0].audio()
    scheduler = engine.decoder()
    stop = threading.Event()

    def base_listener(n: int) -> None:
        while not stop.is_set():
            engine.speak([f"Listener {n} keeps asking."], "en", voices[1], GREEDY)[0].audio()

    first = threading.Thread(target=base_listener, args=(1,))
    second = threading.Thread(target=base_listener, args=(2,))
    first.start()
    while scheduler.steps < 5:  # the listeners a few steps apart: the batch never empties by chance
        time.sleep(0.01)
    second.start()
    try:
        (tuned,) = engine.speak(["A tuned voice's later sentence."], "en", voices[0], GREEDY, weights=weights,
                                continuing=True)
        spoken = threading.Thread(target=tuned.audio, daemon=True)
        spoken.start()
        spoken.join(timeout=60)
        assert not spoken.is_alive(), "the fine-tuned sentence waited as long as base listeners kept coming"
    finally:
        stop.set()
        first.join()
        second.join()
    scheduler.close()


def test_a_sentence_cancelled_while_waiting_costs_no_weight_swap(checkpoint_dir: Path, voices,
                                                                  tmp_path: Path) -> None:
    """A client that left before its fine-tuned sentence was admitted: the sentence leaves the queue
    at once, instead of holding back newer ones and then swapping the weights in and out for nothing."""
    engine = Engine(EngineSettings(model_dir=str(checkpoint_dir), model_name="unused", device="cpu",
                                   queue_size=8))
    weights = fine_tuned_weights(engine, tmp_path)
    scheduler = engine.decoder()
    matmul = scheduler.decoder.matmul
    repacks: list[int] = []
    matmul.refresh = lambda repack=matmul.refresh: (repacks.append(1), repack())
    with scheduler._condition:  # queued together
        (speaking,) = engine.speak(["A base voice speaks."], "en", voices[1], GREEDY)
        (abandoned,) = engine.speak(["Nobody waits for this."], "en", voices[0], GREEDY, weights=weights)
        abandoned.cancel()
        (newcomer,) = engine.speak(["A newcomer."], "en", voices[2], GREEDY)
    order = finishing_order({"speaking": speaking, "abandoned": abandoned, "newcomer": newcomer})
    assert order[0] == "abandoned" and not abandoned.tokens
    assert repacks == []
    scheduler.close()


def test_sampling_follows_transformers_logits_processing() -> None:
    from transformers.generation.logits_process import (
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    generator = torch.Generator().manual_seed(0)
    vocab, rows = 1026, 5
    table = SamplingTable(rows, vocab, torch.device("cpu"))
    settings = [Sampling(False, temperature=t, top_k=k, top_p=p, repetition_penalty=r)
                for t, k, p, r in ((0.75, 50, 0.85, 5.0), (1.0, 10, 0.95, 2.0), (0.3, 1026, 0.5, 1.0),
                                   (1.5, 3, 1.0, 10.0))]
    settings.append(Sampling(True, temperature=1.0, top_k=50, top_p=1.0, repetition_penalty=5.0))
    history = torch.randint(0, vocab, (rows, 12), generator=generator)
    for row, (setting, seen) in enumerate(zip(settings, history, strict=True)):
        table.assign(row, setting, seen.tolist())
    logits = torch.randn(rows, vocab, generator=generator) * 4
    all_rows = torch.arange(rows)
    ours = table.filtered(table.penalised(logits, all_rows), all_rows)
    for row, setting in enumerate(settings[:4]):
        scores = RepetitionPenaltyLogitsProcessor(setting.repetition_penalty)(history[row:row + 1],
                                                                              logits[row:row + 1].clone())
        for warper in (TemperatureLogitsWarper(setting.temperature), TopKLogitsWarper(setting.top_k),
                       TopPLogitsWarper(setting.top_p)):
            scores = warper(history[row:row + 1], scores)
        kept = torch.isfinite(scores[0])
        assert torch.equal(kept, torch.isfinite(ours[row]))
        assert torch.allclose(scores[0][kept], ours[row][kept])
    greedy = RepetitionPenaltyLogitsProcessor(5.0)(history[4:5], logits[4:5].clone()).argmax()
    assert table.choose(logits, all_rows)[4] == greedy



def test_a_huge_finite_score_over_a_low_temperature_fails_no_row() -> None:
    # 3e37 is finite, so the step's NaN check lets it through; over temperature 0.05 it would be +inf.
    generator = torch.Generator().manual_seed(0)
    table = SamplingTable(2, 1026, torch.device("cpu"))
    coldest = Sampling(False, temperature=0.05, top_k=50, top_p=0.5, repetition_penalty=5.0)  # variability ~0
    for row in range(2):
        table.assign(row, coldest, [0])
    logits = torch.randn(2, 1026, generator=generator)
    logits[0, 7] = 3e37
    for _ in range(20):
        table.seen[:] = False  # the penalty would otherwise shrink the huge score back into range
        tokens = table.choose(logits, generator=generator)
        assert tokens[0] == 7  # what its scores say, as a greedy row would pick it
        assert tokens[1] in logits[1].topk(50).indices


# -- bfloat16 on a CPU (where the CPU multiplies it natively) ---------------------------------------
def assert_speaks_in_bfloat16(engine: Engine, latents: Latents, cap: int) -> None:
    """The engine decodes in bf16 and every English text gives finite audio within the token cap."""
    spoken = [engine.speak([text], "en", latents, GREEDY)[0] for text in TEXTS["en"]]
    for utterance in spoken:
        audio = utterance.audio()
        assert audio.size > 0 and np.isfinite(audio).all() and 0 < len(utterance.tokens) <= cap
    assert engine.decoder().decoder.dtype == torch.bfloat16
    engine.decoder().close()


def test_bfloat16_on_a_cpu_decodes_speech_where_the_cpu_has_it_and_float32_elsewhere(
        checkpoint_dir: Path, voices, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    from voiceforge.services import engine as engine_module

    settings = EngineSettings(model_dir=str(checkpoint_dir), model_name="unused", device="cpu", queue_size=8,
                              max_batch=4, decoder_dtype="bfloat16", vocoder_dtype="bfloat16")
    if engine_module.cpu_has_bfloat16():
        engine = Engine(settings)
        assert engine.decoder().vocoder.dtype == torch.bfloat16
        assert engine.describe()["decoding"]["vocoderDtype"] == "bfloat16"
        assert_speaks_in_bfloat16(engine, voices[0], cap=21)
    monkeypatch.setattr(engine_module, "cpu_has_bfloat16", lambda: False)
    emulated = Engine(settings)
    (utterance,) = emulated.speak([TEXTS["en"][0]], "en", voices[0], GREEDY)
    utterance.audio()  # decoded to the end
    assert utterance.tokens == stock_tokens(emulated, TEXTS["en"][0], "en", voices[0])  # float32's tokens
    assert emulated.decoder().decoder.dtype == emulated.decoder().vocoder.dtype == torch.float32
    decoding = emulated.describe()["decoding"]  # what /readyz shows an operator: the fallback in use
    assert (decoding["gptDtype"], decoding["vocoderDtype"]) == ("float32", "float32")
    for setting in ("DECODER_DTYPE", "VOCODER_DTYPE"):
        assert f"VOICEFORGE_{setting}=bfloat16 is not fast on this CPU" in caplog.text
    emulated.decoder().close()


# -- CUDA: graphs and half precision (a GPU machine only) ------------------------------------------
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(scope="module")
def cuda_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp("cuda") / "xtts", max_audio_tokens=120)


@cuda
@pytest.mark.parametrize(("graphs", "step"), [(True, "torch"), (False, "torch"), (True, "triton"),
                                              (False, "triton"), (True, "auto")])
def test_on_cuda_greedy_tokens_equal_stock(cuda_checkpoint: Path, graphs: bool, step: str) -> None:
    engine = Engine(EngineSettings(model_dir=str(cuda_checkpoint), model_name="unused", device="cuda",
                                   queue_size=8, max_batch=8, cuda_graphs=graphs, cuda_step=step))
    # auto: the fused kernels for one row (each request here decodes alone), PyTorch's for more
    assert engine.decoder().describe()["stepKernels"] == {"auto": "triton-one-row"}.get(step, step)
    voices = list(read_speakers(cuda_checkpoint).values())
    items = [(text, language, voices[n % len(voices)]) for n, (language, text) in enumerate(every_text())]
    spoken = [engine.speak([text], language, latents, GREEDY)[0] for text, language, latents in items]
    for (text, language, latents), utterance in zip(items, spoken, strict=True):
        assert utterance.audio().size > 0
        assert utterance.tokens == stock_tokens(engine, text, language, latents), (text, language)
    engine.decoder().close()


@cuda
@pytest.mark.parametrize("step", ["torch", "triton", "auto"])  # auto: rows come and go, 16 to 1
def test_on_cuda_concurrent_streams_stay_apart(cuda_checkpoint: Path, step: str) -> None:
    engine = Engine(EngineSettings(model_dir=str(cuda_checkpoint), model_name="unused", device="cuda",
                                   queue_size=32, max_batch=32, cuda_step=step))
    voices = list(read_speakers(cuda_checkpoint).values())
    results: dict[int, list[int]] = {}

    def one(n: int) -> None:
        (utterance,) = engine.speak([f"Stream number {n} speaks."], "en", voices[n % 3], GREEDY,
                                    streaming=True)
        if sum(piece.size for piece in utterance.pieces()) > 0:
            results[n] = utterance.tokens

    threads = [threading.Thread(target=one, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 16
    for n in (0, 5, 15):  # each as stock decodes it alone: sixteen streams at once never mix
        assert results[n] == stock_tokens(engine, f"Stream number {n} speaks.", "en", voices[n % 3])
    engine.decoder().close()


@cuda
def test_on_cuda_bfloat16_decodes_speech(cuda_checkpoint: Path) -> None:
    engine = Engine(EngineSettings(model_dir=str(cuda_checkpoint), model_name="unused", device="cuda",
                                   queue_size=8, max_batch=8, decoder_dtype="bfloat16",
                                   vocoder_dtype="bfloat16"))
    assert engine.decoder().vocoder.dtype == torch.bfloat16
    assert_speaks_in_bfloat16(engine, next(iter(read_speakers(cuda_checkpoint).values())), cap=117)


@cuda
def test_on_cuda_a_step_ahead_gives_the_tokens_and_audio_of_reading_each_step_first(
        cuda_checkpoint: Path) -> None:
    """What the CPU cannot show: the GPU's asynchronous copies (positions up, tokens and audio back through
    pinned memory) deliver what they should. Each sentence alone, so both ways run the same kernels."""
    engine = Engine(EngineSettings(model_dir=str(cuda_checkpoint), model_name="unused", device="cuda",
                                   queue_size=8, max_batch=8))
    scheduler = engine.decoder()
    assert scheduler.lookahead == 1  # the default on a GPU
    voices = list(read_speakers(cuda_checkpoint).values())
    spoken = {}
    for lookahead in (0, 1):
        with stepping_ahead(scheduler, lookahead):
            spoken[lookahead] = []
            for n, (language, text) in enumerate(every_text()[:4]):
                (utterance,) = engine.speak([text], language, voices[n % len(voices)], GREEDY,
                                            streaming=n % 2 == 0)
                spoken[lookahead].append((utterance.audio(), utterance.tokens))
    for (audio, tokens), (ahead_audio, ahead_tokens) in zip(spoken[0], spoken[1], strict=True):
        assert ahead_tokens == tokens
        assert ahead_audio.shape == audio.shape and np.abs(ahead_audio - audio).max() < 1e-4
    scheduler.close()


def test_closing_the_decoder_ends_a_sequence_whose_last_audio_was_still_queued(checkpoint_dir: Path,
                                                                               voices) -> None:
    """One step ahead, a sequence's last window is read back a turn after it left its row. Closed in
    between, the decoder must still end that sequence (with its error), or its listener waits for ever."""
    engine = Engine(EngineSettings(model_dir=str(checkpoint_dir), model_name="unused", device="cpu",
                                   queue_size=8))
    scheduler = engine.decoder()
    scheduler.lookahead = 1
    retire = scheduler._retire
    closed_with_audio_queued = threading.Event()

    def retire_then_close() -> None:
        retire()  # the decoding thread closes itself once a sequence that left has its last audio queued
        if scheduler._live and any(any(audio.last) for audio in scheduler._queued_audio):
            closed_with_audio_queued.set()
            scheduler._closed = True

    scheduler._retire = retire_then_close
    texts = every_text()[:8]
    utterances = engine.speak([texts[0][1]], "en", voices[0], GREEDY)
    deadline = time.monotonic() + 10
    while scheduler.steps < 2 and time.monotonic() < deadline:  # the first leaves while the others speak
        time.sleep(0.001)
    utterances += [engine.speak([text], language, voices[n % len(voices)], GREEDY)[0]
                   for n, (language, text) in enumerate(texts[1:], start=1)]
    outcomes: list[str] = []

    def listen(utterance: Utterance) -> None:
        try:
            utterance.audio()
            outcomes.append("spoken")
        except RuntimeError as error:
            outcomes.append(str(error))

    listeners = [threading.Thread(target=listen, args=(utterance,), daemon=True) for utterance in utterances]
    for listener in listeners:
        listener.start()
    for listener in listeners:
        listener.join(timeout=60)
    assert closed_with_audio_queued.is_set()
    assert len(outcomes) == len(utterances), "a listener was left waiting"
    assert "the decoder was closed" in outcomes
