"""The decoding step in fused Triton kernels against PyTorch's, replayed from CUDA graphs side by side.

Run: python bench/triton_step.py [--size tiny|full] [--batches 1,8,32] [--configs "default block_k=256"]
Builds a random-weight XTTS-v2 (or loads --checkpoint), fills every cache row with a --prefix-position
prefix, and for each dtype prints the engine's PyTorch step (GptDecoder.step) and TritonStep with each
tiling (--configs: space-separated, each "default" or a comma-separated list of triton_step.Tiling
fields to change): ms per graph replay at each batch size, the kernels one eager step launches, the
largest logit difference from PyTorch's step in the same dtype and in float32, and whether every
row's argmax (its greedy token) is the same. CUDA only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.step_variants import bench_model, captured, kernels, replay_ms  # noqa: E402
from voiceforge.decoding.gpt import GptDecoder  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("tiny", "full"), default="full")
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--prefix", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--configs", default="default", help="tilings, space-separated (default num_warps=8)")
    args = parser.parse_args()
    from voiceforge.decoding.triton_step import Tiling, TritonStep

    torch.manual_seed(0)
    batches = [int(n) for n in args.batches.split(",")]
    model, device, _scratch = bench_model(args, "cuda")
    print(f"{args.size} architecture on {torch.cuda.get_device_name()}, torch {torch.__version__}, attention "
          f"over {args.prefix + 1} positions", flush=True)
    prefix = torch.randn(args.prefix, model.gpt.model_dim, device=device)
    float32_logits: dict[int, torch.Tensor] = {}
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        with torch.inference_mode():
            decoder = GptDecoder(model, max(batches), dtype=dtype)
            for row in range(decoder.rows):
                decoder.prefill(row, prefix.to(dtype))
        steps = {"torch": decoder.step}
        for config in args.configs.split(" "):
            tiling = Tiling() if config == "default" else Tiling.parse(config)
            steps[f"triton {config}"] = TritonStep(decoder, tiling).step
        same_dtype: dict[int, torch.Tensor] = {}
        for name, step in steps.items():
            row_text = []
            for n in batches:
                step_args = (torch.arange(n, device=device) + 7, torch.full((n,), 5, device=device),
                             torch.full((n,), args.prefix, device=device), args.prefix + 1)
                with torch.inference_mode():
                    logits = step(*step_args).logits.clone()
                same_dtype.setdefault(n, logits)
                float32_logits.setdefault(n, logits)
                drift = (logits - same_dtype[n]).abs().max().item()
                drift32 = (logits - float32_logits[n]).abs().max().item()
                argmax = bool((logits.argmax(-1) == float32_logits[n].argmax(-1)).all())
                ms = replay_ms(captured(step, step_args).replay, "cuda", args.repeats)
                if n == batches[0]:
                    with torch.inference_mode():
                        print(f"  {dtype_name} {name}: eager step at batch {n}: "
                              f"{kernels(step, step_args, 'cuda')}", flush=True)
                row_text.append(f"batch {n}: {ms:.3f} ms (vs torch {drift:.1e}, vs fp32 {drift32:.1e}, "
                                f"argmax {'same' if argmax else 'DIFFERS'})")
            print(f"{dtype_name:>9} {name:<16} " + "; ".join(row_text), flush=True)
        del decoder, steps
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
