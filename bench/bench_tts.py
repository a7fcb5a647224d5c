"""Benchmark /api/tts: HTTP (gunicorn) vs a direct engine call, and cached latents vs the seed's way.

Run: .venv/bin/python bench/bench_tts.py [--size tiny|full] [--repeats N]
Builds a random-weight XTTS-v2 checkpoint in the release layout (no download), so the figures measure
the service's overhead and the cost of conditioning, not speech quality. CPU unless CUDA is present.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.audio import data_uri, encode_audio, voice  # noqa: E402
from tests.support.checkpoint import build_checkpoint  # noqa: E402
from tests.support.server import start_server, stop_server  # noqa: E402
from tests.support.timing import interleaved  # noqa: E402
from voiceforge import create_app  # noqa: E402
from voiceforge.audio.decode import decode_audio  # noqa: E402
from voiceforge.audio.reference import prepare_reference  # noqa: E402
from voiceforge.runtime import get_runtime  # noqa: E402
from voiceforge.services.engine import CONDITIONING_RATE, Latents  # noqa: E402
from voiceforge.services.synthesis import sampling_for  # noqa: E402

TEXT = "The quick brown fox jumps over the lazy dog."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--reference-seconds", type=float, default=10.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        checkpoint = build_checkpoint(tmp / "xtts", size=args.size)
        recording, mime = encode_audio(voice(args.reference_seconds, rate=48000), 48000, "webm/opus")
        server = start_server(tmp, checkpoint)
        try:
            enrolled = requests.post(server.url + "/api/train-voice", timeout=600, json={
                "modelName": "Bench", "audioDataUri": data_uri(recording, mime)}).json()
            voice_id = enrolled["modelId"]
            body = {"text": TEXT, "voiceId": voice_id, "variability": 0}
            url = server.url + "/api/tts"
            app = create_app({"MODEL_DIR": str(checkpoint), "DATABASE_URL": f"sqlite:///{tmp / 'e2e.db'}",
                              "DATA_DIR": str(tmp / "voices")}, instance_path=str(tmp))
            with app.app_context():
                engine = get_runtime(app).engine
                latents = Latents.load(tmp / "voices" / voice_id / "latents.pth")
                greedy = sampling_for(0)

                def seeds_way() -> None:
                    # What the seed did per request: decode the stored upload, condition, then speak.
                    reference = prepare_reference(decode_audio(recording, target_rate=CONDITIONING_RATE,
                                                               max_seconds=60), CONDITIONING_RATE)
                    engine.synthesize(TEXT, "en", engine.compute_latents(reference), greedy)

                times = interleaved({
                    "direct": lambda: engine.synthesize(TEXT, "en", latents, greedy),
                    "http": lambda: requests.post(url, json=body, timeout=600).raise_for_status(),
                    "seed": seeds_way,
                }, args.repeats)
                device = engine.describe()["device"]
        finally:
            stop_server(server)

    direct, http, recomputed = times["direct"], times["http"], times["seed"]
    print(f"XTTS-v2 {args.size} random-weight checkpoint on {device}; median of {args.repeats} interleaved "
          f"rounds; text {len(TEXT)} chars; reference {args.reference_seconds:.0f} s (webm/opus)")
    print(f"{'path':<48}{'seconds':>10}{'ratio':>10}")
    rows = [("direct engine call, cached latents", direct),
            ("POST /api/tts through gunicorn, cached latents", http),
            ("seed's way: decode + latents every request", recomputed)]
    for name, seconds in rows:
        print(f"{name:<48}{seconds:>10.3f}{seconds / direct:>9.2f}x")
    print(f"HTTP overhead: {(http - direct) * 1000:.0f} ms per request; "
          f"cached latents save {(recomputed - direct) * 1000:.0f} ms per request "
          f"(recomputing is {recomputed / direct:.2f}x the cost)")


if __name__ == "__main__":
    main()
