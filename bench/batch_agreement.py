"""Greedy tokens of sequences decoded in a batch against the same sequences decoded alone, over many.

Run: .venv/bin/python bench/batch_agreement.py [--size tiny|full] [--sequences N] [--rows R]
Builds a random-weight XTTS-v2 checkpoint (no download) and decodes N sentences (texts in several
languages, every voice of the checkpoint) twice through the real BatchScheduler: one at a time, then
all submitted at once so that they join and leave a batch of R rows as in the server. Counts the
sequences whose greedy tokens are identical, for each CPU matmul (decoding/matmul.py). Tokens do not
depend on the vocoder, so HiFiGAN is replaced by silence here to keep 1,000 sequences quick; every
token still comes from the real GPT code.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.checkpoint import build_checkpoint  # noqa: E402
from voiceforge.decoding.gpt import GptDecoder  # noqa: E402
from voiceforge.decoding.scheduler import BatchScheduler, Utterance  # noqa: E402
from voiceforge.decoding.threads import on_passing_thread  # noqa: E402
from voiceforge.services.engine import Sampling, load_xtts, read_speakers  # noqa: E402

GREEDY = Sampling(greedy=True, temperature=1.0, top_p=1.0)
TEXTS = {
    "en": ["The quick brown fox jumps over the lazy dog.", "Please call Stella.", "A journey of miles.",
           "Every voice deserves to be heard clearly and without delay, whatever it says."],
    "de": ["Ein kurzer deutscher Satz.", "Guten Morgen, wie geht es dir heute?"],
    "fr": ["Une courte phrase en français.", "Bonjour à tous et bienvenue."],
    "es": ["Una frase corta en español.", "Hola, ¿qué tal estás hoy?"],
    "it": ["Una breve frase in italiano."], "pt": ["Bom dia a todos."], "nl": ["Goedemorgen allemaal."],
}


def silence(frames: torch.Tensor, _speakers: torch.Tensor, keep_from: int, keep_to: int) -> torch.Tensor:
    """Stands in for HiFiGAN (tokens never depend on it): zeros of the shape it would return."""
    return torch.zeros(frames.shape[0], keep_to - keep_from)


def sentences(model, voices: list, count: int) -> list[Utterance]:
    items = [(language, text) for language, texts in TEXTS.items() for text in texts]
    made = []
    for index in range(count):
        language, text = items[index % len(items)]
        # A number spelled into every text after the first round makes each prompt different.
        spoken = text if index < len(items) else f"{text} {index}"
        tokens = torch.IntTensor(model.tokenizer.encode(spoken.strip().lower(), lang=language))
        voice = voices[index % len(voices)]
        # Each a request's first sentence: together they may fill every row.
        made.append(Utterance(tokens, voice.gpt_cond_latent, voice.speaker_embedding, GREEDY, opens=True))
    return made


def first_difference(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def decode(scheduler: BatchScheduler, utterances: list[Utterance], *, together: bool) -> list[list[int]]:
    if together:
        for utterance in utterances:
            scheduler.submit(utterance)
    for utterance in utterances:
        if not together:
            scheduler.submit(utterance)
        utterance.audio()
    return [utterance.tokens for utterance in utterances]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--sequences", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64, help="gpt_max_audio_tokens (cap: N - 3)")
    args = parser.parse_args()
    scratch = tempfile.TemporaryDirectory(prefix="voiceforge-bench-")  # removed when the run ends
    directory = Path(scratch.name) / "xtts"
    build_checkpoint(directory, size=args.size, max_audio_tokens=args.max_tokens,
                     speakers=("Ana Florence", "Claribel Dervla", "Damien Black", "Zoe Z"))
    # Off the main thread, which would keep OpenMP workers beside the decoder's (decoding/threads.py).
    model, _device = on_passing_thread(load_xtts, directory, "cpu")
    voices = list(read_speakers(directory).values())
    print(f"{args.size} architecture, {args.sequences} greedy sequences of up to {args.max_tokens - 3} "
          f"tokens, batches of {args.rows} rows, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    for kind in ("onednn", "reference"):
        decoder = on_passing_thread(GptDecoder, model, args.rows, cpu_matmul_kind=kind)
        scheduler = on_passing_thread(BatchScheduler, model, threading.Lock(), lambda _weights: None,
                                      decoder=decoder)
        scheduler.vocoder = silence
        started = time.perf_counter()
        alone = decode(scheduler, sentences(model, voices, args.sequences), together=False)
        alone_s = time.perf_counter() - started
        started = time.perf_counter()
        batched = decode(scheduler, sentences(model, voices, args.sequences), together=True)
        batched_s = time.perf_counter() - started
        scheduler.close()
        pairs = list(zip(alone, batched, strict=True))
        same = sum(a == b for a, b in pairs)
        # Tokens identical up to each sequence's first difference, as a share of all tokens decoded alone.
        agreeing = sum(first_difference(a, b) for a, b in pairs)
        total = sum(len(a) for a in alone)
        print(f"{kind:>9}: {same}/{args.sequences} sequences identical batched and alone "
              f"({100 * agreeing / total:.2f}% of {total} tokens before a first difference); alone "
              f"{alone_s:.1f} s, batched {batched_s:.1f} s, up to {scheduler.max_batch} rows live",
              flush=True)


if __name__ == "__main__":
    main()
