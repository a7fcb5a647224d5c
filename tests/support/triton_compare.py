"""TritonStep's step against GptDecoder's own, and each kernel against PyTorch's formulas in float64.

On a CPU it runs in Triton's interpreter (`TRITON_INTERPRET=1 python -m tests.support.triton_compare
CHECKPOINT`, which prints the result as JSON), on CUDA in-process.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch


def compare(model: Any, dtype: torch.dtype | None = None, rows: int = 4) -> dict[str, Any]:
    """Prefill `rows` cache rows with prefixes of different lengths, then step 1 row and all of them with
    both steps. Returns, per row count, the largest logit and latent differences, whether every
    argmax agrees, and the largest difference between the keys and values each step wrote; then the
    same for all rows ("refreshed") after other GPT weights are put in place (as a fine-tuned voice's
    are) and the decoder refreshed, with how far that moved the logits ("moved"). The model's weights
    are restored after."""
    from voiceforge.decoding.gpt import GptDecoder
    from voiceforge.decoding.triton_step import TritonStep

    device = next(model.gpt.parameters()).device
    results: dict[str, Any] = {}
    with torch.inference_mode():
        decoder = GptDecoder(model, rows, dtype=dtype, cpu_matmul_kind="reference")
        lengths = _prefill([decoder], rows, device)
        fused = TritonStep(decoder)

        def both_steps(n: int) -> tuple[dict[str, Any], torch.Tensor]:
            args = (torch.arange(n, device=device) + 3, torch.arange(n, device=device) + 1,
                    torch.tensor(lengths[:n], device=device), max(lengths[:n]) + 1)
            expected = decoder.step(*args)
            cache = decoder.cache.clone()
            got = fused.step(*args)
            return {
                "logits": (got.logits - expected.logits).abs().max().item(),
                "scale": expected.logits.abs().max().item(),
                "latents": (got.latents.float() - expected.latents.float()).abs().max().item(),
                "argmax_same": bool((got.logits.argmax(-1) == expected.logits.argmax(-1)).all()),
                "cache": (decoder.cache.float() - cache.float()).abs().max().item(),
            }, expected.logits.clone()

        results["1"], _logits = both_steps(1)
        results[str(rows)], before = both_steps(rows)
        originals = _swap_weights(model)
        decoder.refresh()
        results["refreshed"], after = both_steps(rows)
        results["moved"] = (after - before).abs().max().item()
        with torch.no_grad():
            for tensor, original in originals:
                tensor.copy_(original)
    return results


def switching(model: Any, rows: int = 3) -> dict[str, Any]:
    """cuda_step's "auto" (fused kernels for one row, PyTorch's for more) over steps whose row count
    goes 3, 1, 1, 3, 1, 3, each step's keys and values read by the next, whichever kernels wrote them,
    against GptDecoder's own step on a second decoder prefilled alike: the largest logit difference,
    whether every argmax agrees, the caches' largest difference at the end, and the kernels named."""
    from voiceforge.decoding.cuda_step import choose_step
    from voiceforge.decoding.gpt import GptDecoder

    device = next(model.gpt.parameters()).device
    with torch.inference_mode():
        reference, tested = (GptDecoder(model, rows, cpu_matmul_kind="reference") for _ in range(2))
        step, _lengths, kernels = choose_step(tested, "auto")  # as the engine does: before any prefill
        lengths = _prefill([reference, tested], rows, device)
        logits, argmax_same = 0.0, True
        for n in (rows, 1, 1, rows, 1, rows):
            args = (torch.arange(n, device=device) + 3, torch.arange(n, device=device) + lengths[0],
                    torch.tensor(lengths[:n], device=device), max(lengths[:n]) + 1)
            expected, got = reference.step(*args), step(*args)
            logits = max(logits, (got.logits - expected.logits).abs().max().item())
            argmax_same &= bool((got.logits.argmax(-1) == expected.logits.argmax(-1)).all())
            lengths[:n] = [length + 1 for length in lengths[:n]]
        cache = (tested.cache - reference.cache).abs().max().item()
    return {"kernels": kernels, "logits": logits, "argmax_same": argmax_same, "cache": cache,
            "scale": expected.logits.abs().max().item()}


def _prefill(decoders: list[Any], rows: int, device: torch.device) -> list[int]:
    """Prefill rows 0..rows-1 of every decoder with the same random prefixes, of different lengths; the
    lengths."""
    lengths = [10 + 7 * row for row in range(rows)]
    for row, length in enumerate(lengths):
        prefix = torch.randn(length, decoders[0].dim, generator=torch.Generator().manual_seed(row))
        for decoder in decoders:
            decoder.prefill(row, prefix.to(device, decoder.dtype))
    return lengths


def _swap_weights(model: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Change every block's projections and LayerNorms in place, as GptWeights.activate puts a fine-tuned
    voice's weights in; returns (tensor, original) pairs to put back."""
    changed = []
    with torch.no_grad():
        for block in model.gpt.gpt.h:
            for module in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj, block.ln_1,
                           block.ln_2):
                for tensor in (module.weight, module.bias):
                    changed.append((tensor, tensor.detach().clone()))
                    tensor.mul_(1.5).add_(0.01)
    return changed


def kernels(model: Any, rows: int = 3, tiling: Any = None) -> dict[str, float]:
    """Each kernel on random inputs of a few units (a random model's activations are too small to show a
    wrong cubic term or scale) against PyTorch's formulas in float64: ||got - ref|| / ||ref|| by kernel.
    `tiling` (triton_step.Tiling) lets small blocks make every loop run several times at a tiny width."""
    import torch.nn.functional as F

    from voiceforge.decoding.gpt import GptDecoder
    from voiceforge.decoding.triton_step import TritonStep

    generator = torch.Generator().manual_seed(7)

    def rand(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * scale

    def error(got: torch.Tensor, ref: torch.Tensor) -> float:
        return ((got.double() - ref).norm() / ref.norm()).item()

    with torch.inference_mode():
        decoder = GptDecoder(model, rows, cpu_matmul_kind="reference")
        fused = TritonStep(decoder, tiling)
        dim, heads, head_dim = decoder.dim, decoder.heads, decoder.head_dim
        x, gamma, beta = rand(rows, dim, scale=3.0), 1 + rand(dim, scale=0.3), rand(dim, scale=0.3)
        weight, bias = rand(4 * dim, dim, scale=dim ** -0.5 * 2), rand(4 * dim)
        normed = F.layer_norm(x.double(), (dim,), gamma.double(), beta.double(), 1e-5)
        hidden = torch.empty(rows, 4 * dim)
        fused._linear(x, (weight, bias), hidden, rows, norm=(gamma, beta, 1e-5), gelu=True)
        results = {"ln_linear_gelu": error(hidden, F.gelu(normed @ weight.double().T + bias.double(),
                                                          approximate="tanh"))}
        down, residual = rand(dim, 4 * dim, scale=(4 * dim) ** -0.5), rand(rows, dim)
        out = residual.clone()
        fused._linear(hidden, (down, bias[:dim]), out, rows, residual=True)
        results["linear_residual"] = error(out, residual.double() + hidden.double() @ down.double().T
                                           + bias[:dim].double())
        # Keys and values written at each row's position; attention over positions 0..position.
        qkv_weight, qkv_bias = rand(3 * dim, dim, scale=dim ** -0.5), rand(3 * dim)
        cache = torch.zeros_like(decoder.cache[0])
        cache.copy_(rand(*cache.shape))
        positions = torch.tensor([5, 17, 2][:rows])
        query = torch.empty(rows, dim)
        fused._linear(x, (qkv_weight, qkv_bias), query, rows, norm=(gamma, beta, 1e-5), cache=cache,
                      positions=positions)
        qkv = normed @ qkv_weight.double().T + qkv_bias.double()
        # (rows, keys/values, heads, head_dim) at each row's position
        written = torch.stack([cache[:, row, :, positions[row]] for row in range(rows)])
        results["qkv_query"] = error(query, qkv[:, :dim])
        results["qkv_cache"] = error(written.reshape(rows, 2 * dim), qkv[:, dim:])
        attended = torch.empty(rows, dim)
        fused._attention(query, cache, positions, attended, rows)
        expected = []
        for row in range(rows):
            keys = cache[0, row, :, :positions[row] + 1].double()  # (heads, length, hd)
            values = cache[1, row, :, :positions[row] + 1].double()
            q = query[row].double().view(heads, 1, head_dim)
            weights = (q @ keys.transpose(1, 2) * head_dim ** -0.5).softmax(-1)
            expected.append((weights @ values).reshape(dim))
        results["attention"] = error(attended, torch.stack(expected))
    return results


def main() -> None:
    from voiceforge.services.engine import load_xtts

    model, _device = load_xtts(Path(sys.argv[1]), "cpu")
    from voiceforge.decoding.triton_step import Tiling

    small = {"block_k": 32, "single_row_block_k": 16, "block_t": 8}  # every loop turns several times
    # and attention in 4 parts of whole 8-position blocks: of a row at position 17, parts 0-7, 8-15,
    # 16-23 and an empty one
    tilings = {"default": Tiling(), "small": Tiling(**small), "small, to the row's length":
               Tiling(**small, to_row_length=1), "small, attention in 4": Tiling(**small, attention_splits=4)}
    errors = {f"{name}@{rows} {label}": value for rows in (1, 3) for label, tiling in tilings.items()
              for name, value in kernels(model, rows, tiling).items()}
    sys.stdout.write(json.dumps({"step": compare(model), "kernels": errors, "switching": switching(model)})
                     + "\n")


if __name__ == "__main__":
    main()
