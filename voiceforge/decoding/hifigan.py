"""HiFiGAN's generator over one window, trimmed after each stage to what the kept audio depends on.

A streamed window carries CONTEXT_FRAMES of latents on each side whose audio is thrown away. Run
plainly, every layer pays for that context at its own rate, and the late stages (64-256 samples per
frame) are three quarters of the work. Their receptive field is only a frame or two, though, so
after each upsampling stage we crop the activations to the kept span plus the margin the remaining
layers can still see. The kept samples are the same as an untrimmed run (to float rounding); only
audio that would be discarded is not computed.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrize import remove_parametrizations
from TTS.vocoder.models.hifigan_generator import LRELU_SLOPE


def strip_weight_norm(generator: nn.Module) -> None:
    """Fold weight normalisation into plain weights: the same values, not recomputed on every call."""
    for module in generator.modules():
        for name in list(getattr(module, "parametrizations", {}).keys()):
            remove_parametrizations(module, name, leave_parametrized=True)


def _radius(module: nn.Module) -> int:
    """Samples on each side that one output of a stack of 'same'-padded stride-1 convolutions sees."""
    return sum(conv.padding[0] for conv in module.modules() if isinstance(conv, nn.Conv1d))


class TrimmedGenerator:
    """Runs a coqui `HifiganGenerator` as its own forward does, cropping between stages.

    With `dtype` (bfloat16 or float16) it runs a converted copy of the generator in that precision
    (its weights never change: fine-tuning swaps only the GPT's) and answers float32 all the same.
    """

    def __init__(self, generator: Any, dtype: torch.dtype | None = None) -> None:
        own_dtype = next(generator.parameters()).dtype
        self.dtype = dtype or own_dtype
        self.generator = generator if self.dtype == own_dtype else copy.deepcopy(generator).to(self.dtype)
        self.factors = [up.stride[0] for up in generator.ups]
        self.hop = math.prod(self.factors)
        # Walk back from the output: the margin each stage's output needs for the layers after it.
        need = _radius(generator.conv_post)
        self.margins = [0] * len(self.factors)
        for stage in reversed(range(len(self.factors))):
            self.margins[stage] = need
            need += max(_radius(block) for block in self._blocks(stage))
            up = generator.ups[stage]
            need = math.ceil((need + up.kernel_size[0]) / up.stride[0]) + 1

    def _blocks(self, stage: int) -> nn.ModuleList:
        """The stage's multi-receptive-field resblocks, whose outputs are averaged."""
        kernels = self.generator.num_kernels
        return self.generator.resblocks[stage * kernels:(stage + 1) * kernels]

    def __call__(self, frames: torch.Tensor, speakers: torch.Tensor, keep_from: int,
                 keep_to: int) -> torch.Tensor:
        """Samples keep_from..keep_to of `generator(frames, g=speakers)`, as (batch, samples)."""
        g = self.generator
        x, speakers = frames.to(self.dtype), speakers.to(self.dtype)
        if hasattr(g, "lin_pre"):
            x = g.lin_pre(x).permute(0, 2, 1)
        o = g.conv_pre(x)
        if hasattr(g, "cond_layer"):
            o = o + g.cond_layer(speakers)
        offset, rate = 0, 1  # o[..., 0] is sample `offset` of this stage's full output; `rate` per frame
        for stage, factor in enumerate(self.factors):
            o = F.leaky_relu(o, LRELU_SLOPE)
            o = g.ups[stage](o)
            offset, rate = offset * factor, rate * factor
            if g.cond_in_each_up_layer:
                o = o + g.conds[stage](speakers)
            blocks = self._blocks(stage)
            total = blocks[0](o)
            for block in blocks[1:]:
                total += block(o)
            o = total / g.num_kernels
            # Crop to the kept span at this rate, widened by what the later layers still see.
            low = max(offset, keep_from * rate // self.hop - self.margins[stage])
            high = min(offset + o.shape[-1], -(-keep_to * rate // self.hop) + self.margins[stage])
            o = o[..., low - offset:high - offset]
            offset = low
        o = F.leaky_relu(o)
        o = torch.tanh(g.conv_post(o))
        return o[:, 0, keep_from - offset:keep_to - offset].float()
