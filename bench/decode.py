"""Benchmark our decoding engine against stock XTTS `inference`, side by side in one run.

Run: .venv/bin/python bench/decode.py [--size tiny|full] [--max-tokens N] [--device cpu|cuda]
Builds a random-weight XTTS-v2 checkpoint in the release layout (no download). Random weights never
emit the stop token, so every sentence runs to the token cap (--max-tokens - 3 tokens): the figures
are per token and per second of audio produced (1,024 samples at 22.05 kHz per token, 46 ms).
Prints: ms per token at batch 1 (stock, ours; on CUDA also ours with CUDA graphs, in fp32, with the
GPT in bf16, and with the GPT and the vocoder in bf16, and the same three with the step in fused
Triton kernels (decoding/triton_step.py), and with those for one row only (VOICEFORGE_CUDA_STEP=auto,
decoding/cuda_step.py); "ours+graphs" is PyTorch's kernels; each of those also as "... sync", which
reads every step back before queueing the next, as the engine did before it queued one ahead; on a
CPU also ours with transformers' addmm instead of oneDNN, and, where the CPU has bf16 natively, ours
with the GPT, the vocoder or both in bf16; --only picks some of them), the aggregate real-time factor
at 1, 4, 8 and 32 concurrent requests against stock serial decoding, a 10-sentence text at once
against sentence by sentence, time to first audio, and greedy-token agreement with stock over
--agreement sequences. --phases adds a run of the least and of the most concurrent requests, timed
phase by phase (bench/phases.py: prefill, GPT step, sampling, vocoder, bookkeeping). --json writes the
figures to a file. Stock is timed first, then each variant of ours in turn, one decoder alive at a
time (voiceforge/decoding/threads.py says why).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.phases import PhaseTimer  # noqa: E402
from tests.support.checkpoint import build_checkpoint  # noqa: E402
from voiceforge.decoding.gpt import GptDecoder  # noqa: E402
from voiceforge.decoding.scheduler import BatchScheduler, Utterance  # noqa: E402
from voiceforge.decoding.threads import on_passing_thread  # noqa: E402
from voiceforge.services.engine import Sampling, cpu_has_bfloat16, load_xtts, read_speakers  # noqa: E402

SAMPLES_PER_TOKEN = 1024 / 22050  # seconds of audio per GPT token at speed 1
PENALTY = 5.0
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "She sells sea shells by the sea shore, every single morning.",
    "A journey of a thousand miles begins with a single step.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "The weather today is sunny with a light breeze from the west.",
    "Numbers like twelve and forty two are spelled out here.",
    "Every voice deserves to be heard clearly and without delay.",
    "We measured the engine side by side, round after round.",
    "Short one.",
    "This sentence is a little longer than the others, so its prompt is longer too.",
]
FOREIGN = {"de": "Ein kurzer deutscher Satz zum Testen.", "fr": "Une courte phrase en français.",
           "es": "Una frase corta en español para probar.", "it": "Una breve frase in italiano."}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def stock_tokens(model, text: str, lang: str, voice) -> list[int]:
    """Greedy audio tokens exactly as `model.inference` picks them (its gpt.generate call)."""
    tokens = torch.IntTensor(model.tokenizer.encode(text.strip().lower(), lang=lang)).unsqueeze(0)
    with torch.inference_mode():
        codes = model.gpt.generate(cond_latents=voice.gpt_cond_latent.to(model.device),
                                   text_inputs=tokens.to(model.device), do_sample=False, top_p=1.0, top_k=50,
                                   temperature=1.0, num_return_sequences=1, num_beams=1, length_penalty=1.0,
                                   repetition_penalty=PENALTY, output_attentions=False)
    return codes[0].tolist()


def stock_speak(model, text: str, lang: str, voice, device: str) -> float:
    """Seconds for one stock `model.inference` (greedy, cached latents), audio included."""
    sync(device)
    started = time.perf_counter()
    with torch.inference_mode():
        model.inference(text, lang, voice.gpt_cond_latent, voice.speaker_embedding, do_sample=False,
                        top_p=1.0, top_k=50, temperature=1.0, repetition_penalty=PENALTY)
    sync(device)
    return time.perf_counter() - started


def utterance(model, text: str, lang: str, voice, *, first_window: int = 96, window: int = 96,
              opens: bool = True) -> Utterance:
    """A greedy sentence; `opens`: a request's first (by default each is a request of one sentence)."""
    tokens = torch.IntTensor(model.tokenizer.encode(text.strip().lower(), lang=lang))
    return Utterance(tokens, voice.gpt_cond_latent, voice.speaker_embedding,
                     Sampling(greedy=True, temperature=1.0, top_p=1.0, repetition_penalty=PENALTY),
                     first_window=first_window, window=window, opens=opens)


def ours_speak(scheduler: BatchScheduler, model, items: list[tuple[str, str, object]], *,
               one_request: bool = False) -> tuple[float, list]:
    """Seconds until every utterance's audio is in, all submitted at once; and the utterances.

    Each item is a request of its own, or with `one_request` the sentences of one request.
    """
    started = time.perf_counter()
    utterances = [scheduler.submit(utterance(model, text, lang, voice, opens=index == 0 or not one_request))
                  for index, (text, lang, voice) in enumerate(items)]
    for item in utterances:
        item.audio()
    return time.perf_counter() - started, utterances


def first_audio(scheduler: BatchScheduler, model, voice, text: str = TEXTS[0]) -> float:
    """Seconds from submitting a streamed request's first sentence to its first audio piece."""
    started = time.perf_counter()
    item = scheduler.submit(utterance(model, text, "en", voice, first_window=8, window=32))
    pieces = item.pieces()
    next(pieces)
    elapsed = time.perf_counter() - started
    for _ in pieces:
        pass
    return elapsed


_STOCK: dict[tuple[str, str, int], list[int]] = {}  # stock's tokens, computed once for every variant


def replay_ms(graphed, batch: int, kv_len: int, repeats: int = 200) -> float:
    """Milliseconds per replay of one captured step (CUDA events), rows at position kv_len - 1."""
    device = graphed.decoder.device
    args = (torch.full((batch,), 7, device=device), torch.full((batch,), 5, device=device),
            torch.full((batch,), kv_len - 1, device=device), kv_len)
    for _ in range(10):
        graphed.step(*args)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        graphed.step(*args)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


def agreement(model, scheduler: BatchScheduler, voices: list, count: int) -> tuple[int, int, int]:
    """(sequences with identical greedy tokens, sequences, identical tokens per 10,000) batched vs stock.

    Identical tokens are counted up to the first difference in each sequence.
    """
    items = []
    languages = ["en", *FOREIGN]
    for index in range(count):
        lang = languages[index % len(languages)]
        text = TEXTS[index % len(TEXTS)] if lang == "en" else FOREIGN[lang]
        items.append((f"{text} {index}" if index >= len(TEXTS) else text, lang, voices[index % len(voices)]))
    same_sequences = same_tokens = total_tokens = 0
    for start in range(0, count, scheduler.rows):
        batch = items[start:start + scheduler.rows]
        _elapsed, utterances = ours_speak(scheduler, model, batch)
        for (text, lang, voice), item in zip(batch, utterances, strict=True):
            key = (text, lang, id(voice))
            if key not in _STOCK:
                _STOCK[key] = on_passing_thread(stock_tokens, model, text, lang, voice)
            stock = _STOCK[key]
            same_sequences += stock == item.tokens
            prefix = next((i for i, (a, b) in enumerate(zip(stock, item.tokens, strict=False)) if a != b),
                          min(len(stock), len(item.tokens)))
            same_tokens += prefix
            total_tokens += len(stock)
    return same_sequences, count, same_tokens * 10_000 // max(total_tokens, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--max-tokens", type=int, default=64,
                        help="gpt_max_audio_tokens (the cap is N - 3 tokens)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--concurrency", default="1,4,8,32")
    parser.add_argument("--agreement", type=int, default=64, help="sequences compared with stock (greedy)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--checkpoint", type=Path, help="an existing checkpoint directory (skips the build)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--phases", action="store_true",
                        help="time a run of the most concurrent requests phase by phase")
    parser.add_argument("--only", help="comma-separated variants of ours to run (stock always runs)")
    parser.add_argument("--tiling", default="", help="the fused Triton kernels' tiling for the triton and "
                        "auto variants, as bench/triton_step.py's --configs (default: triton_step.Tiling())")
    parser.add_argument("--ten-sentences", action=argparse.BooleanOptionalAction, default=True,
                        help="time a 10-sentence text (stock takes about 40 s of it on a GPU at full size)")
    args = parser.parse_args()
    torch.manual_seed(0)
    figures: dict[str, object] = {"size": args.size, "device": args.device, "max_tokens": args.max_tokens}
    if args.device.startswith("cuda"):
        figures["gpu"] = torch.cuda.get_device_name()
    # Removed when the run ends (a full-size checkpoint is 1.8 GB); pass --checkpoint to keep one.
    scratch = tempfile.TemporaryDirectory(prefix="voiceforge-bench-")
    directory = args.checkpoint or Path(scratch.name) / "xtts"
    if not args.checkpoint:
        build_checkpoint(directory, size=args.size, max_audio_tokens=args.max_tokens,
                         speakers=("Ana Florence", "Claribel Dervla", "Damien Black", "Zoe Z"))
    # Torch work of the main thread would keep OpenMP workers that slow every decoder's (and stock's)
    # parallel operators once they outnumber the CPUs (voiceforge/decoding/threads.py): loading, stock
    # and each decoder's build run on passing threads, and one decoder is alive at a time.
    model, device = on_passing_thread(load_xtts, directory, args.device)
    voices = list(read_speakers(directory).values())
    voice = voices[0]
    concurrency = [int(n) for n in args.concurrency.split(",")]
    # Room for every request, and for the 10-sentence text plus the row the decoder keeps for another
    # request's first sentence (BatchScheduler._take_joining).
    rows = max([*concurrency, 11])
    lock = threading.Lock()
    cap = model.gpt.max_gen_mel_tokens
    report = []

    def show(label: str, value: str) -> None:
        report.append(f"{label:<58} {value}")
        print(report[-1], flush=True)

    def stock(text: str) -> float:
        return on_passing_thread(stock_speak, model, text, "en", voice, device)

    # Stock, batch 1 (also the serial baseline for concurrency: one request at a time).
    stock(TEXTS[0])
    stock_s = statistics.median(stock(TEXTS[0]) for _ in range(args.repeats))
    figures["stock_ms_per_token"] = 1000 * stock_s / cap
    show("stock inference, ms per token (batch 1, vocoder incl.)", f"{figures['stock_ms_per_token']:.2f}")
    stock_rtf = stock_s / (cap * SAMPLES_PER_TOKEN)
    show("stock serial: real-time factor (any number of requests)", f"{stock_rtf:.3f}")
    if args.ten_sentences:
        serial = sum(stock(text) for text in TEXTS)
        figures["ten_sentences_stock_s"] = serial
        show("10 sentences, stock sentence by sentence, s", f"{serial:.2f}")

    def plain(dtype=None, vocoder_dtype=None, matmul: str = "onednn") -> Callable[[], BatchScheduler]:
        return lambda: BatchScheduler(model, lock, lambda _weights: None, vocoder_dtype=vocoder_dtype,
                                      decoder=GptDecoder(model, rows, dtype=dtype, cpu_matmul_kind=matmul))

    def graphed(name: str, dtype, vocoder_dtype, kernels: str = "torch", lookahead: int | None = None,
                tiling_text: str = args.tiling) -> Callable[[], BatchScheduler]:
        def build() -> BatchScheduler:
            from voiceforge.decoding.cuda_graphs import GraphedStep
            from voiceforge.decoding.cuda_step import choose_step
            from voiceforge.decoding.triton_step import Tiling

            decoder = GptDecoder(model, rows, dtype=dtype)
            tiling = Tiling.parse(tiling_text) if tiling_text else None
            step, lengths, _kernels = choose_step(decoder, kernels, tiling)  # as the engine builds it
            runner = GraphedStep(decoder, step=step, length_buckets=lengths)
            started = time.perf_counter()
            runner.capture()
            figures[f"{name} capture_s"] = time.perf_counter() - started
            for batch in (1, 8, 32):  # the GPT step alone: one graph replay, no sampling or vocoder
                step_ms = replay_ms(runner, batch, 256)
                figures[f"{name} step_ms@{batch}"] = step_ms
                show(f"{name}, GPT step alone (graph replay), batch {batch}, ms", f"{step_ms:.3f}")
            scheduler = BatchScheduler(model, lock, lambda _weights: None, decoder=decoder,
                                       step_runner=runner.step, vocoder_dtype=vocoder_dtype)
            if lookahead is not None:
                scheduler.lookahead = lookahead
            return scheduler
        return build

    variants: dict[str, Callable[[], BatchScheduler]] = {"ours": plain()}
    specs: dict[str, tuple] = {}  # a CUDA variant's graphed() arguments after its name
    bf16 = torch.bfloat16
    if device.startswith("cuda"):
        precisions = (("", None, None), (" bf16", bf16, None), (" bf16 both", bf16, bf16))
        # PyTorch's kernels; fused Triton ones at every batch size; those for one row only (auto). Each
        # also as " sync": every step's tokens read back before the next step is queued (lookahead 0),
        # what the engine did before it queued a step ahead.
        for label, kernels in (("graphs", "torch"), ("triton", "triton"), ("auto", "auto")):
            for suffix, dtype, vocoder_dtype in precisions:
                for sync in ("", " sync"):
                    name = f"ours+{label}{suffix}{sync}"
                    specs[name] = (dtype, vocoder_dtype, kernels, 0 if sync else None)
                    variants[name] = graphed(name, *specs[name])
    else:
        # "ours" multiplies by oneDNN-prepacked weights (the default); "ours addmm" is transformers'
        # own arithmetic (VOICEFORGE_CPU_MATMUL=reference), the one bit-identical to stock.
        variants["ours addmm"] = plain(matmul="reference")
        if cpu_has_bfloat16():  # AVX512-BF16 or AMX: bf16 GEMMs and convolutions run natively
            variants["ours bf16"] = plain(dtype=bf16)
            variants["ours bf16 vocoder"] = plain(vocoder_dtype=bf16)
            variants["ours bf16 both"] = plain(dtype=bf16, vocoder_dtype=bf16)
    if args.only:
        # "NAME @TILING": a CUDA variant with another tiling of the fused kernels, its fields separated by
        # spaces ("ours+auto bf16 both @to_row_length=1 block_t=64"), beside the same with --tiling's.
        tiled = [name for name in args.only.split(",") if " @" in name and name.split(" @")[0] in specs]
        for name in tiled:
            base, tiling_text = name.split(" @")
            variants[name] = graphed(name, *specs[base], tiling_text=tiling_text.replace(" ", ","))
        variants = {name: variants[name] for name in args.only.split(",") if name in variants}
    for name, build in variants.items():
        scheduler = on_passing_thread(build)
        ours_speak(scheduler, model, [(TEXTS[0], "en", voice)])
        ours_s = statistics.median(ours_speak(scheduler, model, [(TEXTS[0], "en", voice)])[0]
                                   for _ in range(args.repeats))
        figures[f"{name} ms_per_token"] = 1000 * ours_s / cap
        show(f"{name}, ms per token (batch 1, vocoder incl.)", f"{figures[f'{name} ms_per_token']:.2f}")
        if device.startswith("cuda"):  # the first window's shapes, new to cuDNN the first time
            first_audio(scheduler, model, voice)
        figures[f"{name} first_audio_ms"] = 1000 * statistics.median(
            first_audio(scheduler, model, voice) for _ in range(args.repeats))
        show(f"{name}, first audio (8-token window), ms", f"{figures[f'{name} first_audio_ms']:.1f}")

        for n in concurrency:
            items = [(TEXTS[i % len(TEXTS)], "en", voices[i % len(voices)]) for i in range(n)]
            if device.startswith("cuda"):  # a first run of new shapes pays cuBLAS's and cuDNN's set-up
                ours_speak(scheduler, model, items)
            elapsed = min(ours_speak(scheduler, model, items)[0] for _ in range(max(1, args.repeats - 1)))
            audio = n * cap * SAMPLES_PER_TOKEN
            figures[f"{name} rtf@{n}"] = elapsed / audio
            show(f"{name}, {n} concurrent: aggregate RTF (x real time; x stock)",
                 f"{elapsed / audio:.4f} ({audio / elapsed:.1f}x; {stock_rtf * audio / elapsed:.2f}x)")

        if args.phases:  # instrumented (on CUDA it synchronises at every phase): not among the figures above
            for n in sorted({min(concurrency), max(concurrency)}):
                items = [(TEXTS[i % len(TEXTS)], "en", voices[i % len(voices)]) for i in range(n)]
                with PhaseTimer(scheduler) as timer:
                    elapsed = ours_speak(scheduler, model, items)[0]
                figures[f"{name} phases@{n}"] = {"wall_s": elapsed, "steps": timer.steps, **timer.seconds}
                show(f"{name}, {n} concurrent, time by phase", timer.summary(elapsed))

        if args.ten_sentences:
            ten = [(text, "en", voice) for text in TEXTS]
            together = min(ours_speak(scheduler, model, ten, one_request=True)[0]
                           for _ in range(max(1, args.repeats - 1)))
            figures[f"ten_sentences {name} s"] = together
            show(f"10 sentences, {name}, all at once, s (x faster)",
                 f"{together:.2f} ({serial / together:.2f}x)")

        if args.agreement:
            same, count, per_10k = agreement(model, scheduler, voices, args.agreement)
            figures[f"{name} agreement"] = [same, count, per_10k / 100]
            show(f"{name}: greedy sequences identical to stock",
                 f"{same}/{count} ({per_10k / 100:.2f}% of tokens)")
        scheduler.close()  # its thread ends, and its OpenMP workers with it
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    title = f"{args.size} architecture on {figures.get('gpu', device)}, cap {cap} tokens:"
    print("\n".join(["", title, *report]))


if __name__ == "__main__":
    main()
