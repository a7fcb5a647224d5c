"""A new listener's first audio while a long text holds the decoder, with and without a row kept for it.

Run: .venv/bin/python bench/newcomer.py [--size tiny|full] [--max-tokens N] [--rows 8] [--sentences 24]
Builds a random-weight XTTS-v2 checkpoint (no download), then, alternately with the scheduler's
`keep_a_row` on and off: a whole-response text of --sentences sentences is submitted, and once it is
being decoded a newcomer's streamed sentence is; prints the newcomer's time to first audio (alone, and
behind the long text) and how long the long text took, median of --repeats rounds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.decode import TEXTS, first_audio, utterance  # noqa: E402
from tests.support.checkpoint import build_checkpoint  # noqa: E402
from voiceforge.decoding.scheduler import BatchScheduler  # noqa: E402
from voiceforge.decoding.threads import on_passing_thread  # noqa: E402
from voiceforge.services.engine import load_xtts, read_speakers  # noqa: E402

NEWCOMER = "Hello there, I just arrived."


def behind_a_long_text(scheduler: BatchScheduler, model, voices, sentences: int) -> tuple[float, float]:
    """(the newcomer's first audio, the long text's seconds) when it arrives as the long text starts."""
    started = time.perf_counter()
    long = [utterance(model, TEXTS[n % len(TEXTS)], "en", voices[0], opens=n == 0) for n in range(sentences)]
    steps = scheduler.steps
    for item in long:
        scheduler.submit(item)
    while scheduler.steps == steps:  # the long text is being decoded
        time.sleep(0.0005)
    waited = first_audio(scheduler, model, voices[1], NEWCOMER)
    for item in long:
        item.audio()
    return waited, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--max-tokens", type=int, default=60, help="gpt_max_audio_tokens (cap: N - 3)")
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--sentences", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="voiceforge-bench-") as scratch:
        directory = build_checkpoint(Path(scratch) / "xtts", size=args.size, max_audio_tokens=args.max_tokens,
                                     speakers=("Ana Florence", "Claribel Dervla"))
        # Off the main thread, which would keep OpenMP workers beside the decoder's (decoding/threads.py).
        model, _device = on_passing_thread(load_xtts, directory, args.device)
        voices = list(read_speakers(directory).values())
    scheduler = on_passing_thread(BatchScheduler, model, threading.Lock(), lambda _weights: None,
                                  rows=args.rows)
    first_audio(scheduler, model, voices[1], NEWCOMER)  # warm-up
    alone = statistics.median(first_audio(scheduler, model, voices[1], NEWCOMER) for _ in range(args.repeats))
    figures: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    for _ in range(args.repeats):
        for keep in (False, True):  # alternately, so both see the same machine
            scheduler.keep_a_row = keep
            figures[keep].append(behind_a_long_text(scheduler, model, voices, args.sentences))
    scheduler.close()
    cap = model.gpt.max_gen_mel_tokens
    print(f"{args.size} architecture, {args.rows} rows, {cap} tokens per sentence, median of {args.repeats}:")
    print(f"{'':<36} {'first audio s':>14} {'long text s':>12}")
    print(f"{'decoder idle':<36} {alone:>14.3f}")
    for keep, label in ((False, "behind it, every row to it"), (True, "behind it, the last row kept")):
        waited = statistics.median(first for first, _total in figures[keep])
        total = statistics.median(total for _first, total in figures[keep])
        print(f"{label:<36} {waited:>14.3f} {total:>12.2f}")


if __name__ == "__main__":
    main()
