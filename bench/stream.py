"""Benchmark streaming: time to first audio byte and total time, streamed vs whole, per format.

Run: .venv/bin/python bench/stream.py [--size tiny|full] [--max-tokens N] [--repeats N]
Behind a real gunicorn on loopback, with a random-weight XTTS-v2 checkpoint in the release layout
(no download). Random weights never emit the stop token, so every sentence runs to the token cap
(--max-tokens; the full architecture on a CPU takes about 0.5 s per token, so keep it small there).
Also prints the encoders' cost per second of audio. CPU unless CUDA is present.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.audio import speech_like  # noqa: E402
from tests.support.checkpoint import build_checkpoint  # noqa: E402
from tests.support.server import start_server, stop_server  # noqa: E402
from tests.support.timing import interleaved  # noqa: E402
from voiceforge.audio.encode import FORMATS, StreamEncoder, encode  # noqa: E402
from voiceforge.decoding.threads import on_passing_thread  # noqa: E402

# 127 characters: each sentence is a chunk of its own.
SENTENCE = ("This sentence is long enough that two of them can never be merged into one chunk of speech, "
            "since together they pass the limit. ")


def timed_stream(url: str, body: dict) -> tuple[float, float]:
    """(seconds to the first audio byte, seconds to the last) of one streamed request."""
    started = time.perf_counter()
    first = None
    with requests.post(url + "/api/tts/stream", json=body, stream=True, timeout=3600) as response:
        response.raise_for_status()
        for chunk in response.iter_content(None):
            if chunk and first is None:
                first = time.perf_counter() - started
    return first or 0.0, time.perf_counter() - started


def timed_whole(url: str, body: dict) -> float:
    started = time.perf_counter()
    requests.post(url + "/api/tts", json=body, timeout=3600).raise_for_status()
    return time.perf_counter() - started


def encoder_costs(repeats: int) -> dict[str, tuple[float, float]]:
    """Milliseconds per second of audio, (whole buffer, streamed in 1 s chunks), per format."""
    audio = speech_like(10.0, 24000)
    costs = {}
    for fmt in FORMATS:
        whole, streamed = [], []
        for _ in range(repeats):
            started = time.perf_counter()
            encode(audio, 24000, fmt)
            whole.append(time.perf_counter() - started)
            started = time.perf_counter()
            with StreamEncoder(fmt, 24000) as encoder:
                for start in range(0, audio.size, 24000):
                    encoder.write(audio[start:start + 24000])
            streamed.append(time.perf_counter() - started)
        costs[fmt] = (statistics.median(whole) * 100, statistics.median(streamed) * 100)
    return costs


def engine_times(checkpoint: Path, repeats: int) -> dict[str, float]:
    """Seconds for one sentence in-process: stock inference, and our decoder whole and streamed."""
    import torch

    from voiceforge.services.engine import Engine, EngineSettings, read_speakers
    from voiceforge.services.synthesis import sampling_for

    settings = EngineSettings(model_dir=str(checkpoint), model_name="bench", device="auto", queue_size=2)
    engine = Engine(settings)
    latents = read_speakers(checkpoint)["Ana Florence"]
    greedy = sampling_for(0)
    model = engine.model

    def inference() -> None:
        with torch.inference_mode():
            model.inference(SENTENCE, "en", latents.gpt_cond_latent, latents.speaker_embedding,
                            do_sample=False, repetition_penalty=greedy.repetition_penalty)

    def stock() -> None:  # on a passing thread, as the engine's torch work (voiceforge/decoding/threads.py)
        on_passing_thread(inference)

    def whole() -> None:
        engine.synthesize(SENTENCE, "en", latents, greedy)

    def streamed() -> None:
        list(engine.stream(SENTENCE, "en", latents, greedy))

    paths = {"whole, stock model.inference": stock, "whole, our decoder (Engine.synthesize)": whole,
             "streamed, our decoder (Engine.stream)": streamed}
    return interleaved(paths, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--max-tokens", type=int, default=None,
                        help="audio-token cap per sentence (default: 63 tiny, 40 full)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--formats", default="wav,mp3,opus,aac,flac,pcm")
    parser.add_argument("--engine-only", action="store_true", help="only the in-process engine timings")
    args = parser.parse_args()
    max_tokens = args.max_tokens or (63 if args.size == "tiny" else 40)
    formats = args.formats.split(",")

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        checkpoint = build_checkpoint(tmp / "xtts", size=args.size, max_audio_tokens=max_tokens)
        engine = engine_times(checkpoint, max(5, args.repeats))
        print(f"in-process, one sentence of {max_tokens - 3} tokens, median of {max(5, args.repeats)}:")
        for name, seconds in engine.items():
            print(f"  {name:<52}{seconds:8.3f} s {seconds / next(iter(engine.values())):6.2f}x")
        if args.engine_only:
            return
        server = start_server(tmp, checkpoint, VOICEFORGE_WORKERS="1")
        try:
            warm = {"text": "Warm up.", "voiceId": "default-female", "variability": 0}
            timed_whole(server.url, warm)
            device = requests.get(server.url + "/readyz", timeout=10).json()["model"]["device"]
            rows = []
            # Every format on 1 and 3 sentences; the 10-sentence text in the first format only.
            cases = [(n, fmt) for n in (1, 3) for fmt in formats] + [(10, formats[0])]
            for sentences, fmt in cases:
                body = {"text": SENTENCE * sentences, "voiceId": "default-female", "variability": 0,
                        "format": fmt}
                firsts, totals, wholes = [], [], []
                for _ in range(args.repeats):  # interleaved, so load affects both alike
                    first, total = timed_stream(server.url, body)
                    firsts.append(first)
                    totals.append(total)
                    wholes.append(timed_whole(server.url, body))
                rows.append((sentences, fmt, statistics.median(firsts), statistics.median(totals),
                             statistics.median(wholes)))
        finally:
            stop_server(server)

    print(f"XTTS-v2 {args.size} random-weight checkpoint, {max_tokens - 3} audio tokens per sentence, on "
          f"{device}; median of {args.repeats} interleaved rounds; one gunicorn worker on loopback")
    print(f"{'sentences':>9} {'format':>6} {'first byte s':>13} {'streamed s':>11} {'whole s':>8} "
          f"{'stream/whole':>13}")
    for sentences, fmt, first, total, whole in rows:
        print(f"{sentences:>9} {fmt:>6} {first:>13.3f} {total:>11.3f} {whole:>8.3f} {total / whole:>12.2f}x")
    print("\nencoder cost, ms per second of 24 kHz audio (median of 5): whole buffer / in 1 s chunks")
    for fmt, (whole, streamed) in encoder_costs(5).items():
        print(f"{fmt:>6} {whole:8.2f} {streamed:8.2f}")


if __name__ == "__main__":
    main()
