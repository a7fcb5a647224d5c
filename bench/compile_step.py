"""Our decoding step eager against `torch.compile`d, side by side in one run: compile time, ms per step,
and how far the logits move.

Run: .venv/bin/python bench/compile_step.py [--size tiny|full] [--checkpoint DIR] [--device cpu|cuda]
        [--batches 1,8,32] [--dynamic | --no-dynamic] [--regional] [--graphs] [--repeats N]
Builds (or loads) a random-weight XTTS-v2, fills every cache row with a random prefix of --prefix
positions, then for each batch size times `GptDecoder.step` as it is and compiled (one compiled
function for every batch size with --dynamic, the default; one compile per batch size without).
The whole step is compiled, or with --regional only the two halves of a layer around its cache
write (GptDecoder.layer_qkv and layer_rest, one compile shared by every layer). --graphs (CUDA only)
replays both through CUDA graphs (cuda_graphs.GraphedStep), as the engine runs on a GPU; the first
call of a shape then includes the capture. On an H200: bench/results/compile-step-full-h200.txt.
Inductor's first call of a shape is the compile, reported separately. Eager uses the reference
matmul on a CPU too (compiled code cannot call oneDNN's prepacked weights). On a GPU the question is
whether fusing the ~13 kernels a layer runs brings a step towards the 1 ms the H100 target asks
(CUDA graphs would then capture the compiled step); on a CPU, whether compiling is worth it there.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.checkpoint import build_checkpoint  # noqa: E402
from voiceforge.decoding.gpt import GptDecoder  # noqa: E402
from voiceforge.services.engine import load_xtts  # noqa: E402


def timed(run, device: str) -> float:
    """Seconds for one call of `run`, the GPU's queue drained on both sides."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    started = time.perf_counter()
    run()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - started


def compare(eager_step, compiled, device: str, n: int, prefix: int, repeats: int) -> str:
    """One table row: a step of `n` rows eager and compiled (its first call is the compile)."""
    step_args = (torch.randint(0, 1024, (n,), device=device), torch.full((n,), 1, device=device),
                 torch.full((n,), prefix, device=device), prefix + 1)
    compile_s = timed(lambda: compiled(*step_args), device)
    eager, fused = eager_step(*step_args), compiled(*step_args)
    eager_s = statistics.median(timed(lambda: eager_step(*step_args), device) for _ in range(repeats))
    fused_s = statistics.median(timed(lambda: compiled(*step_args), device) for _ in range(repeats))
    difference = (fused.logits - eager.logits).abs().max().item()
    same = bool((fused.logits.argmax(-1) == eager.logits.argmax(-1)).all())
    return (f"{n:>5} {compile_s:>10.1f} {1000 * eager_s:>9.2f} {1000 * fused_s:>12.2f} "
            f"{eager_s / fused_s:>7.2f}x {difference:>15.2e} {same!s:>12}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--checkpoint", type=Path, help="an existing checkpoint directory (skips the build)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--prefix", type=int, default=80, help="cache positions filled before the step")
    parser.add_argument("--dynamic", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--regional", action="store_true", help="compile a layer's halves, not the step")
    parser.add_argument("--graphs", action="store_true", help="CUDA: both steps replayed from CUDA graphs")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    batches = [int(n) for n in args.batches.split(",")]
    torch.manual_seed(0)
    scratch = tempfile.TemporaryDirectory(prefix="voiceforge-bench-")  # removed when the run ends
    directory = args.checkpoint or Path(scratch.name) / "xtts"
    if not args.checkpoint:
        build_checkpoint(directory, size=args.size, speakers=("Ana Florence",))
    model, device = load_xtts(directory, args.device)
    where = torch.cuda.get_device_name() if device.startswith("cuda") else device
    with torch.inference_mode():
        # The reference matmul on a CPU: compiled code cannot call into oneDNN's prepacked weights.
        decoder = GptDecoder(model, max(batches), cpu_matmul_kind="reference")
        for row in range(decoder.rows):
            decoder.prefill(row, torch.randn(args.prefix, decoder.dim, device=device, dtype=decoder.dtype))
        twin = copy.copy(decoder)  # a shallow twin: the same modules and cache, its step compiled
        if args.regional:
            twin.layer_qkv = torch.compile(twin.layer_qkv, dynamic=args.dynamic)
            twin.layer_rest = torch.compile(twin.layer_rest, dynamic=args.dynamic)
        else:
            twin.step = torch.compile(decoder.step, dynamic=args.dynamic)
        eager_step, compiled = decoder.step, twin.step
        if args.graphs:
            from voiceforge.decoding.cuda_graphs import GraphedStep

            eager_step, compiled = GraphedStep(decoder).step, GraphedStep(twin).step
        shapes = "dynamic" if args.dynamic else "static"
        unit = ("a layer's two halves" if args.regional else "the whole step") + (
            ", both in CUDA graphs" if args.graphs else "")
        size = f"{args.checkpoint}'s" if args.checkpoint else f"{args.size} architecture"
        print(f"{size} ({len(decoder.blocks)} layers) on {where}, "
              f"torch {torch.__version__}: {unit} compiled, {shapes} shapes, {args.prefix}-position prefix")
        print(f"{'rows':>5} {'compile s':>10} {'eager ms':>9} {'compiled ms':>12} {'x eager':>8} "
              f"{'max logit diff':>15} {'same argmax':>12}")
        for n in batches:
            print(compare(eager_step, compiled, device, n, args.prefix, args.repeats), flush=True)


if __name__ == "__main__":
    main()
