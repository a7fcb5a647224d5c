"""Benchmark fine-tuning: seconds per training step, per minute of audio per epoch, and weight swaps.

Run: .venv/bin/python bench/finetune.py [--size tiny|full] [--clips N] [--epochs N]
Builds a random-weight XTTS-v2 checkpoint in the release layout (plus dvae.pth and mel_stats.pth),
a dataset of synthetic speech cut into clips by the product's own dataset step, then trains in a
child process exactly as a job does and times the steps from its progress events. The full-size
architecture needs about 11 GB of RAM on a CPU and about 40 s a step there: keep --clips small.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.audio import VOICE_RATE, encode_audio, phrases  # noqa: E402
from tests.support.checkpoint import build_checkpoint  # noqa: E402
from voiceforge.finetune.dataset import Recording, build_dataset  # noqa: E402
from voiceforge.finetune.export import export_gpt  # noqa: E402
from voiceforge.finetune.train import TrainingPlan, start_training  # noqa: E402
from voiceforge.finetune.weights import GptWeights  # noqa: E402
from voiceforge.services.engine import load_xtts  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--clips", type=int, default=12, help="recordings of about 6 s each")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        base = build_checkpoint(tmp / "xtts", size=args.size, max_audio_tokens=255, training_files=True)
        recordings = [Recording(encode_audio(phrases(0.2, 5.5, 0.2, seed=i), VOICE_RATE, "wav")[0],
                                f"sample sentence number {i} for the benchmark") for i in range(args.clips)]
        started = time.perf_counter()
        dataset = build_dataset(recordings, tmp / "dataset", language="en")
        dataset_s = time.perf_counter() - started
        clip_seconds = sum(clip.seconds for clip in dataset.clips)

        plan = TrainingPlan(base_dir=base, dataset_dir=dataset.root, language="en", run_dir=tmp / "run",
                            epochs=args.epochs, save_every=10_000)
        started = time.perf_counter()
        process = start_training(plan)
        stamps: list[tuple[float, int]] = []
        first_event = None
        setup = {}
        while process.alive or not stamps:
            for event in process.poll(timeout=1.0):
                now = time.perf_counter() - started
                if event.get("event") == "started":
                    first_event, setup = now, event
                elif event.get("event") == "progress":
                    stamps.append((now, int(event["step"])))
            if not process.alive:
                break
        process.join()
        total_s = time.perf_counter() - started
        if process.exitcode != 0 or process.checkpoint is None:
            raise SystemExit(f"training failed: {process.error}")
        steps = stamps[-1][1]
        per_step = [(later - earlier) / max(1, s2 - s1)
                    for (earlier, s1), (later, s2) in pairwise(stamps) if s2 > s1]
        step_s = statistics.median(per_step) if per_step else (total_s - (first_event or 0)) / max(1, steps)
        train_s = stamps[-1][0] - (first_event or 0)

        exported = export_gpt(process.checkpoint, tmp / "gpt.pth")
        model, device = load_xtts(base, "cpu")
        weights = GptWeights(2)
        swaps, backs = [], []
        for _ in range(3):
            weights.forget(exported.path)
            started = time.perf_counter()
            weights.activate(model, exported.path)
            swaps.append(time.perf_counter() - started)
            started = time.perf_counter()
            weights.activate(model, None)
            backs.append(time.perf_counter() - started)
        started = time.perf_counter()
        weights.activate(model, exported.path)  # resident now: no file read
        resident_s = time.perf_counter() - started

    minutes = clip_seconds / 60
    print(f"XTTS-v2 {args.size} random-weight checkpoint, training on {setup.get('device', device)}, "
          f"batch {setup.get('batch_size')} x accumulation {setup.get('grad_accum')}")
    print(f"dataset: {len(dataset.clips)} clips, {clip_seconds:.0f} s of audio, built in {dataset_s:.1f} s")
    print(f"training: {steps} steps over {args.epochs} epochs in {train_s:.1f} s "
          f"(child process start to first event {first_event or 0:.1f} s; whole run {total_s:.1f} s)")
    print(f"  seconds per step (median): {step_s:.2f}")
    print(f"  seconds per minute of audio per epoch: {train_s / args.epochs / minutes:.1f}")
    print(f"export: GPT-only fp16 weights {exported.size / 1e6:.1f} MB")
    print(f"swap a voice's weights in: {statistics.median(swaps) * 1000:.0f} ms from its file, "
          f"{resident_s * 1000:.0f} ms when resident; back to base {statistics.median(backs) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
