"""What another thread's idle OpenMP workers cost the decoder, side by side in one run.

Run: .venv/bin/python bench/openmp.py [--size tiny|full] [--max-tokens N] [--concurrency 1,8] [--repeats N]
Builds a random-weight XTTS-v2 checkpoint (no download) and a decoder, then decodes the same requests
alternately as the engine leaves things (its loading and building done on passing threads, so the
decoder's thread holds the only OpenMP team) and with one more thread alive that has run a parallel
torch operator and so keeps a team of idle workers, as a web server's request thread that loaded the
model did before (voiceforge/decoding/threads.py). Prints seconds and the threads' sleeps in the kernel
(voluntary context switches) per decoding step, medians of --repeats rounds.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import threading
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.decode import TEXTS, ours_speak  # noqa: E402
from tests.support.checkpoint import build_checkpoint  # noqa: E402
from voiceforge.decoding.scheduler import BatchScheduler  # noqa: E402
from voiceforge.decoding.threads import on_passing_thread  # noqa: E402
from voiceforge.services.engine import load_xtts, read_speakers  # noqa: E402


class LingeringTeam:
    """A thread that runs a parallel torch operator, then waits (its OpenMP workers idle) until closed."""

    def __init__(self) -> None:
        self._done = threading.Event()
        ready = threading.Event()

        def hold() -> None:
            torch.ones(1 << 22).exp_()  # large enough to be shared out among torch's threads
            ready.set()
            self._done.wait()

        self._thread = threading.Thread(target=hold, daemon=True)
        self._thread.start()
        ready.wait()

    def close(self) -> None:
        self._done.set()
        self._thread.join()


def decode(scheduler: BatchScheduler, model, items: list, *, lingering: bool) -> tuple[float, float]:
    """(seconds, voluntary context switches per step) for the requests, with or without a lingering team."""
    team = LingeringTeam() if lingering else None
    try:
        steps = scheduler.steps
        before = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw
        elapsed = ours_speak(scheduler, model, items)[0]
        sleeps = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw - before
        return elapsed, sleeps / max(1, scheduler.steps - steps)
    finally:
        if team:
            team.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--max-tokens", type=int, default=43, help="gpt_max_audio_tokens (cap: N - 3)")
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="voiceforge-bench-") as scratch:
        directory = build_checkpoint(Path(scratch) / "xtts", size=args.size, max_audio_tokens=args.max_tokens,
                                     speakers=("Ana Florence", "Claribel Dervla"))
        model, _device = on_passing_thread(load_xtts, directory, "cpu")
        voices = list(read_speakers(directory).values())
    concurrency = [int(n) for n in args.concurrency.split(",")]
    scheduler = on_passing_thread(BatchScheduler, model, threading.Lock(), lambda _weights: None,
                                  rows=max(concurrency))
    print(f"{args.size} architecture on the CPU, {torch.get_num_threads()} torch threads, "
          f"{model.gpt.max_gen_mel_tokens} tokens per sentence, median of {args.repeats} rounds")
    print(f"{'requests':>8} {'decoder alone s':>16} {'sleeps/step':>12} {'+ lingering team s':>19} "
          f"{'sleeps/step':>12} {'slower':>7}")
    for n in concurrency:
        items = [(TEXTS[i % len(TEXTS)], "en", voices[i % len(voices)]) for i in range(n)]
        decode(scheduler, model, items, lingering=False)  # warm-up
        runs: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        for _ in range(args.repeats):
            for lingering in (False, True):  # alternately, so both see the same machine
                runs[lingering].append(decode(scheduler, model, items, lingering=lingering))
        alone, slowed = (statistics.median(seconds for seconds, _ in runs[key]) for key in (False, True))
        alone_sleeps, slowed_sleeps = (statistics.median(sleeps for _, sleeps in runs[key])
                                       for key in (False, True))
        print(f"{n:>8} {alone:>16.3f} {alone_sleeps:>12.1f} {slowed:>19.3f} {slowed_sleeps:>12.1f} "
              f"{slowed / alone:>6.2f}x", flush=True)
    scheduler.close()


if __name__ == "__main__":
    main()
