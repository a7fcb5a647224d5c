"""What enrolling a voice costs, stage by stage: decoding, finding the speech, the conditioning latents.

Run: .venv/bin/python bench/enrol.py [--size tiny|full] [--seconds 10,60] [--repeats N]
For each reference length (a webm/opus recording, as a browser sends it): PyAV decoding, the speech
check that enrolment runs (Silero VAD, then trimming), the loudness check it replaced (20 ms RMS
frames against a level threshold, kept here only to compare), and the conditioning latents of a
random-weight XTTS-v2 checkpoint. Median seconds of interleaved rounds; the VAD's share of the whole
enrolment is what it adds to a POST /api/train-voice.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.audio import encode_audio, voice  # noqa: E402
from tests.support.checkpoint import build_checkpoint  # noqa: E402
from tests.support.timing import interleaved  # noqa: E402
from voiceforge import create_app  # noqa: E402
from voiceforge.audio.decode import decode_audio  # noqa: E402
from voiceforge.audio.reference import prepare_reference  # noqa: E402
from voiceforge.runtime import get_runtime  # noqa: E402
from voiceforge.services.engine import CONDITIONING_RATE, Engine  # noqa: E402


def loudness_speech_seconds(samples: np.ndarray, rate: int) -> float:
    """The check enrolment made before the VAD: 20 ms frames above max(-50 dBFS, loudest - 35 dB)."""
    frame = round(0.02 * rate)
    frames = samples[: samples.size // frame * frame].reshape(-1, frame).astype(np.float64)
    with np.errstate(divide="ignore"):
        levels = 20 * np.log10(np.sqrt(np.mean(frames**2, axis=1)))
    return float(np.sum(levels >= max(-50.0, levels.max() - 35.0)) * frame / rate)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--seconds", default="10,60", help="reference lengths, comma-separated")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    lengths = [float(value) for value in args.seconds.split(",")]

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        checkpoint = build_checkpoint(tmp / "xtts", size=args.size)
        app = create_app({"MODEL_DIR": str(checkpoint), "DATABASE_URL": f"sqlite:///{tmp / 'db.sqlite'}",
                          "DATA_DIR": str(tmp / "voices")}, instance_path=str(tmp))
        with app.app_context():
            engine = get_runtime(app).engine
            engine.load()  # so that the device is known, and the first round does not pay for the load
            print(f"XTTS-v2 {args.size} random-weight checkpoint on {engine.describe()['device']}; median of "
                  f"{args.repeats} interleaved rounds")
            print(f"{'reference':>10}{'decode':>10}{'VAD+trim':>10}{'loudness':>10}{'latents':>10}"
                  f"{'VAD share':>11}")
            for seconds in lengths:
                times = stages(engine, seconds, args.repeats)
                whole = times["decode"] + times["vad"] + times["latents"]
                print(f"{seconds:>9.0f}s{times['decode']:>10.3f}{times['vad']:>10.3f}{times['loudness']:>10.4f}"
                      f"{times['latents']:>10.3f}{times['vad'] / whole:>10.0%}")


def stages(engine: Engine, seconds: float, repeats: int) -> dict[str, float]:
    """Median seconds of each enrolment stage for a reference of this length, in interleaved rounds."""
    recording, _mime = encode_audio(voice(seconds, rate=48000), 48000, "webm/opus")
    samples = decode_audio(recording, target_rate=CONDITIONING_RATE, max_seconds=seconds + 1)
    reference = prepare_reference(samples, CONDITIONING_RATE)
    return interleaved({
        "decode": lambda: decode_audio(recording, target_rate=CONDITIONING_RATE, max_seconds=seconds + 1),
        "vad": lambda: prepare_reference(samples, CONDITIONING_RATE),
        "loudness": lambda: loudness_speech_seconds(samples, CONDITIONING_RATE),
        "latents": lambda: engine.compute_latents(reference),
    }, repeats)

if __name__ == "__main__":
    main()
