"""One GPT weight matrix times a few rows on a CPU: MKL's addmm against oneDNN with the weight prepacked.

Run: .venv/bin/python bench/matmul.py
The shapes of XTTS-v2's GPT (1024 wide, MLP 4096), 24 distinct matrices per round so that none stays
in cache (as in a real step, which reads 441M parameters). Prints ms per matrix at 1 to 150 rows
(150: a prefill) and each row count's cost relative to one row, side by side in one run.
"""

from __future__ import annotations

import statistics
import time

import torch

MATRICES = 24
ROWS = (1, 2, 4, 8, 16, 32, 150)


def ms_per_matrix(multiply, weights: list, x: torch.Tensor, rounds: int = 7) -> float:
    multiply(weights[0], x)
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        for weight in weights:
            multiply(weight, x)
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times) / len(weights)


def main() -> None:
    torch.manual_seed(0)
    conv1d = [torch.randn(1024, 4096) * 0.02 for _ in range(MATRICES)]  # GPT-2 Conv1D layout: (in, out)
    bias = torch.randn(4096)
    packed = [torch.ops.mkldnn._reorder_linear_weight(w.t().contiguous(), 8) for w in conv1d]
    onednn = torch.ops.mkldnn._linear_pointwise
    variants = {
        "addmm (MKL)": (lambda w, x: torch.addmm(bias, x, w), conv1d),
        "oneDNN prepacked": (lambda w, x: onednn(x, w, bias, "none", [], ""), packed),
    }
    if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported():
        half = [torch.ops.mkldnn._reorder_linear_weight(w.t().contiguous().bfloat16(), 8) for w in conv1d]
        bias16 = bias.bfloat16()
        variants["oneDNN prepacked bf16"] = (
            lambda w, x: onednn(x.bfloat16(), w, bias16, "none", [], ""), half)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ms per 1024x4096 matrix "
          "(x its one-row cost)")
    print(f"{'rows':>5} " + " ".join(f"{name:>24}" for name in variants))
    with torch.inference_mode():
        one_row: dict[str, float] = {}
        for rows in ROWS:
            x = torch.randn(rows, 1024)
            cells = []
            for name, (multiply, weights) in variants.items():
                ms = ms_per_matrix(multiply, weights, x)
                one_row.setdefault(name, ms)
                cells.append(f"{ms:7.3f} ({ms / one_row[name]:5.2f}x)")
            print(f"{rows:>5} " + " ".join(f"{cell:>24}" for cell in cells), flush=True)


if __name__ == "__main__":
    main()
