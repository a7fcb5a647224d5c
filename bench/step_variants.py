"""Ways of writing the decoding step with fewer kernels, timed side by side from CUDA graphs.

Run: python bench/step_variants.py [--size tiny|full] [--device cuda|cpu] [--batches 1,8,32]
Builds a random-weight XTTS-v2 (or loads --checkpoint), fills every cache row with an --prefix-position
prefix, then for each variant of GptDecoder.step captures the step (CUDA graphs, as the engine runs it)
and prints ms per replay at each batch size, the kernels one eager step launches (torch.profiler),
and how far its logits lie from base's. Variants (combinable, comma-separated):
  base   - the step before these: each bias, residual and GELU a kernel of its own, attention in three
           kernels (baddbmm, softmax, bmm)
  fused  - bias and residual folded into the matmuls: (x + b).addmm_(h, W) for the two projections,
           cuBLASLt's bias+GELU epilogue (torch._addmm_activation) for the first MLP matrix
  sdpa   - attention by scaled_dot_product_attention with the additive mask (one kernel)
The engine's GPU step is fused, plus sdpa in half precision (measured on an H200: README, Performance).
Measured and dropped: writing each layer's keys and values with one index_copy_ over flat positions
computed once per step, instead of advanced indexing (no faster).
On a CPU (a dry run of the same code) the replay is a plain call.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.checkpoint import build_checkpoint  # noqa: E402
from voiceforge.decoding.gpt import GptDecoder, _bmm_attention, _bmm_mask, _fused_attention  # noqa: E402
from voiceforge.services.engine import load_xtts  # noqa: E402


class VariantDecoder(GptDecoder):
    """GptDecoder with some of the rewrites above switched on; shares the model's modules."""

    def __init__(self, model: Any, rows: int, features: set[str], dtype: torch.dtype | None) -> None:
        super().__init__(model, rows, dtype=dtype, cpu_matmul_kind="reference")
        from voiceforge.decoding.matmul import ReferenceMatmul

        self.matmul = ReferenceMatmul()
        self._mask = _bmm_mask
        self._attend = _fused_attention if "sdpa" in features else _bmm_attention
        # The plain step ends each layer as the CPU's does; "fused" as the engine's GPU step.
        self._finish_step = self._finish_step_block if "fused" in features else self._finish_block


def replay_ms(run, device: str, repeats: int) -> float:
    for _ in range(5):
        run()
    if device != "cuda":
        return 1000 * statistics.median(_timed(run) for _ in range(repeats))
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        run()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


def _timed(run) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def kernels(step, args, device: str) -> str:
    """Kernels one eager step launches, their GPU time, and the five costliest by name."""
    if device != "cuda":
        return "-"
    from torch.profiler import ProfilerActivity, profile

    step(*args)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step(*args)
        torch.cuda.synchronize()
    events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    total_us = sum(e.device_time for e in events)
    by_name: dict[str, list[float]] = {}
    for event in events:
        by_name.setdefault(event.name[:60], []).append(event.device_time)
    top = sorted(by_name.items(), key=lambda item: -sum(item[1]))[:6]
    lines = [f"{len(events)} kernels, {total_us / 1000:.3f} ms of kernel time"]
    lines += [f"      {len(times):>4} x {statistics.mean(times):7.2f} us  {name}" for name, times in top]
    return "\n".join(lines)


def captured(step, step_args) -> torch.cuda.CUDAGraph:
    """`step(*step_args)` captured in a CUDA graph, after one warm-up run on a side stream."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.inference_mode():
        step(*step_args)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.inference_mode():
        step(*step_args)
    return graph


def bench_model(args: argparse.Namespace, device: str) -> tuple[Any, str, tempfile.TemporaryDirectory]:
    """The model of --checkpoint, or of a random --size checkpoint built in a scratch directory (kept
    until the returned directory object is gone); loaded on `device`."""
    scratch = tempfile.TemporaryDirectory(prefix="voiceforge-bench-")
    directory = args.checkpoint or Path(scratch.name) / "xtts"
    if not args.checkpoint:
        build_checkpoint(directory, size=args.size, speakers=("Ana Florence",))
    model, device = load_xtts(directory, device)
    return model, device, scratch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("tiny", "full"), default="full")
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--prefix", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--variants", default="base,fused,sdpa,fused+sdpa")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    args = parser.parse_args()
    torch.manual_seed(0)
    batches = [int(n) for n in args.batches.split(",")]
    model, device, _scratch = bench_model(args, args.device)
    kv_len = args.prefix + 1
    print(f"{args.size} architecture on {torch.cuda.get_device_name() if device == 'cuda' else device}, "
          f"torch {torch.__version__}, attention over {kv_len} positions", flush=True)
    prefix = torch.randn(args.prefix, model.gpt.model_dim, device=device)
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        reference: dict[int, torch.Tensor] = {}
        for variant in args.variants.split(","):
            features = set(variant.split("+")) - {"base"}
            with torch.inference_mode():
                decoder = VariantDecoder(model, max(batches), features, dtype)
                for row in range(decoder.rows):
                    decoder.prefill(row, prefix.to(dtype))
            row_text = []
            for n in batches:
                step_args = (torch.arange(n, device=device) + 7, torch.full((n,), 5, device=device),
                             torch.full((n,), args.prefix, device=device), kv_len)
                with torch.inference_mode():
                    logits = decoder.step(*step_args).logits.clone()
                    if n not in reference:
                        reference[n] = logits
                    drift = (logits - reference[n]).abs().max().item()
                    if device == "cuda":
                        ms = replay_ms(captured(decoder.step, step_args).replay, device, args.repeats)
                    else:
                        ms = replay_ms(functools.partial(decoder.step, *step_args), device, 3)
                    if n == batches[0]:
                        print(f"  {dtype_name} {variant}: eager step at batch {n}: "
                              f"{kernels(decoder.step, step_args, device)}", flush=True)
                row_text.append(f"batch {n}: {ms:.3f} ms (logits drift {drift:.1e})")
            print(f"{dtype_name:>9} {variant:<18} " + "; ".join(row_text), flush=True)
            del decoder
            if device == "cuda":
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
