"""How the decoder multiplies by the GPT's weight matrices: transformers' own addmm, or oneDNN prepacked.

On a CPU a decoding step is almost all matrix-times-a-few-rows. MKL's sgemm (what `addmm` calls)
repacks the whole weight matrix on every call once there is more than one row, so 2-8 rows cost 1.8-2.7x
one row's gemv (bench/matmul.py). oneDNN with each weight reordered once into its blocked layout
reads the weight once per call at any row count, and gives each row the same bits whether it is
multiplied alone or with others. Its rounding differs from addmm's (about 1e-6 relative), so greedy
tokens can differ from stock XTTS's at a near-tie: "reference" keeps transformers' arithmetic exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

# The row count oneDNN picks its weight layout for; measured to matter by under 10% from 1 to 150 rows.
_ROWS_HINT = 8


class ReferenceMatmul:
    """transformers' arithmetic: a GPT-2 Conv1D is addmm(bias, x, weight), its weight (in, out); a Linear
    is F.linear. On a CPU the decoder then reproduces stock XTTS's greedy tokens bit for bit."""

    name = "reference"

    def __call__(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if isinstance(module, nn.Linear):
            return F.linear(x, module.weight, module.bias)
        return torch.addmm(module.bias, x, module.weight)

    def refresh(self) -> None:
        """Nothing is cached: the modules' weights are read as they are."""


class PackedMatmul:
    """oneDNN with each module's weight reordered once (a copy); `refresh()` repacks after a weight swap."""

    name = "onednn"

    def __init__(self, modules: Iterable[nn.Module]) -> None:
        self._modules = list(modules)
        self._packed: dict[nn.Module, torch.Tensor] = {}
        self.refresh()

    def __call__(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self._packed[module], module.bias, "none", [], "")

    def refresh(self) -> None:
        """Repack every weight from its module (after GptWeights swapped a voice's weights in)."""
        with torch.inference_mode():
            self._packed = {module: torch.ops.mkldnn._reorder_linear_weight(_out_by_in(module), _ROWS_HINT)
                            for module in self._modules}


def cpu_matmul(kind: str, modules: Iterable[nn.Module]) -> ReferenceMatmul | PackedMatmul:
    """The matmul for a CPU decoder: oneDNN prepacked where this torch build has it, else the reference."""
    if kind == "reference":
        return ReferenceMatmul()
    if kind != "onednn":
        msg = f"unknown CPU matmul {kind!r}: onednn or reference"
        raise ValueError(msg)
    if onednn_available():
        return PackedMatmul(modules)
    log.warning("this torch build has no oneDNN linear: decoding with the reference matmul")
    return ReferenceMatmul()


def onednn_available() -> bool:
    """Whether torch was built with oneDNN and has the prepacked linear ops (inductor's own)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


def _out_by_in(module: nn.Module) -> torch.Tensor:
    """The weight as (out features, in features), oneDNN's and nn.Linear's layout."""
    weight = module.weight.detach()
    return weight if isinstance(module, nn.Linear) else weight.t().contiguous()
