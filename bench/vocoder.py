"""HiFiGAN alone as our decoder runs it, in float32 and in half precision, side by side in one run.

Run: .venv/bin/python bench/vocoder.py [--device cpu|cuda] [--tokens 96] [--checkpoint DIR]
XTTS-v2's own vocoder (coqui's `HifiDecoder` with the release configuration and random weights, or
the vocoder of a --checkpoint; weight norm folded as the engine folds it) over one window of
`--tokens` GPT latents, 8 decoder frames of which on each side are context, trimmed stage by stage
(decoding/hifigan.py). Prints for each dtype: ms per audio token, GFLOP/s (the float32 convolution
count over the time taken), the speed-up over float32, and how far its audio is from float32's:
signal-to-difference ratio in dB and the largest difference in 16-bit steps. Half precision runs
only where it is native: CUDA, or a CPU with AVX512-BF16 or AMX for bfloat16.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from TTS.tts.layers.xtts.hifigan_decoder import HifiDecoder  # noqa: E402

from voiceforge.decoding.hifigan import TrimmedGenerator, strip_weight_norm  # noqa: E402
from voiceforge.decoding.vocoder import CONTEXT_FRAMES, decoder_frames  # noqa: E402
from voiceforge.services.engine import cpu_has_bfloat16, load_xtts  # noqa: E402

SECONDS_PER_TOKEN = 1024 / 22050  # audio per GPT token at speed 1


def conv_flops(generator: nn.Module, run) -> int:
    """Multiply-adds x 2 of every convolution in one `run()`, counted with forward hooks."""
    total = [0]

    def count(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if isinstance(module, nn.ConvTranspose1d):
            total[0] += 2 * inputs[0].numel() * module.out_channels * module.kernel_size[0]
        else:
            total[0] += 2 * output.numel() * module.in_channels // module.groups * module.kernel_size[0]

    hooks = [m.register_forward_hook(count) for m in generator.modules()
             if isinstance(m, nn.Conv1d | nn.ConvTranspose1d)]
    run()
    for hook in hooks:
        hook.remove()
    return total[0]


def seconds(run, device: str, repeats: int) -> float:
    run()  # warm-up: oneDNN picks and caches its kernels on the first call of a shape
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tokens", type=int, default=96, help="GPT latents in the window (96: a whole "
                        "response's window; 8: a stream's first)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--checkpoint", type=Path, help="a checkpoint directory whose vocoder to time "
                        "(default: coqui's HifiDecoder with its own random initialisation)")
    args = parser.parse_args()

    torch.manual_seed(0)
    if args.checkpoint:
        decoder = load_xtts(args.checkpoint, args.device)[0].hifigan_decoder  # weight norm folded at load
    else:
        decoder = HifiDecoder().eval().to(args.device)  # XTTS-v2's vocoder as its release config builds it
        strip_weight_norm(decoder.waveform_decoder)
    latents = torch.randn(1, args.tokens, 1024, device=args.device)
    frames = decoder_frames(SimpleNamespace(hifigan_decoder=decoder), latents, 1.0)
    speaker = torch.randn(1, 512, 1, device=args.device)
    hop = decoder.output_hop_length  # output samples (24 kHz) per decoder frame
    keep = (CONTEXT_FRAMES * hop, (frames.shape[-1] - CONTEXT_FRAMES) * hop)  # a context on each side
    kept_seconds = (keep[1] - keep[0]) / decoder.output_sample_rate
    audio_tokens = kept_seconds / SECONDS_PER_TOKEN

    dtypes = {"float32": None}
    if args.device.startswith("cuda") or cpu_has_bfloat16():
        dtypes["bfloat16"] = torch.bfloat16
    if args.device.startswith("cuda"):
        dtypes["float16"] = torch.float16
    with torch.inference_mode():
        reference = TrimmedGenerator(decoder.waveform_decoder)
        flops = conv_flops(reference.generator, lambda: reference(frames, speaker, *keep))
        expected = reference(frames, speaker, *keep)
        where = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
        print(f"window: {args.tokens} tokens, {kept_seconds:.2f} s of audio kept, {flops / 1e9:.1f} GFLOP, "
              f"on {where}")
        base = None
        for name, dtype in dtypes.items():
            vocoder = TrimmedGenerator(decoder.waveform_decoder, dtype)
            took = seconds(lambda vocoder=vocoder: vocoder(frames, speaker, *keep), args.device, args.repeats)
            base = base or took
            difference = vocoder(frames, speaker, *keep) - expected
            if dtype is None:
                distance = "(the reference)"
            else:
                ratio_db = 10 * torch.log10(expected.pow(2).mean() / difference.pow(2).mean())
                steps = float(difference.abs().max()) * 32768
                distance = f"vs float32: {float(ratio_db):.1f} dB, at most {steps:.0f} 16-bit steps"
            rate = flops / took / 1e9
            print(f"{name:<9} {1000 * took / audio_tokens:7.2f} ms per token {rate:6.0f} GFLOP/s "
                  f"{base / took:5.2f}x  {distance}")


if __name__ == "__main__":
    main()
