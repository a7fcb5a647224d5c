"""The CPU decoder's weight multiplications (decoding/matmul.py): oneDNN prepacked against transformers'."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from voiceforge.decoding import matmul
from voiceforge.decoding.gpt import GptDecoder
from voiceforge.decoding.matmul import PackedMatmul, ReferenceMatmul, cpu_matmul
from voiceforge.services.engine import Engine

pytestmark = pytest.mark.skipif(not matmul.onednn_available(), reason="this torch build has no oneDNN")


def gpt_modules(engine: Engine) -> list[nn.Module]:
    """The tiny checkpoint's weighted modules a step multiplies by: GPT-2 Conv1Ds and the token head."""
    gpt = engine.model.gpt
    block = gpt.gpt.h[0]
    return [block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj, gpt.mel_head]


def test_onednn_gives_a_row_the_same_bits_alone_or_among_others(shared_engine: Engine) -> None:
    modules = gpt_modules(shared_engine)
    packed, reference = PackedMatmul(modules), ReferenceMatmul()
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for module in modules:
            width = module.weight.shape[0 if isinstance(module, Conv1D) else 1]
            rows = torch.randn(9, width, generator=generator)
            together = packed(module, rows)
            alone = torch.cat([packed(module, rows[i:i + 1]) for i in range(len(rows))])
            assert torch.equal(together, alone), module
            # Another rounding than transformers' addmm, not other arithmetic.
            torch.testing.assert_close(together, reference(module, rows), rtol=1e-5, atol=1e-5)


def test_onednn_packs_follow_the_weights_after_a_refresh() -> None:
    """A voice's fine-tuned weights are copied into the modules in place; refresh() repacks them."""
    torch.manual_seed(0)
    modules = [Conv1D(48, 16), nn.Linear(16, 24)]
    packed, reference = PackedMatmul(modules), ReferenceMatmul()
    x = torch.randn(3, 16)
    with torch.inference_mode():
        for module in modules:
            module.weight.mul_(2)
            assert not torch.allclose(packed(module, x), reference(module, x), atol=1e-3)  # the old pack
        packed.refresh()
        for module in modules:
            torch.testing.assert_close(packed(module, x), reference(module, x), rtol=1e-5, atol=1e-5)


def test_a_decoder_uses_onednn_by_default_and_the_reference_on_request(shared_engine: Engine) -> None:
    assert isinstance(shared_engine.decoder().decoder.matmul, PackedMatmul)
    with torch.inference_mode():
        exact = GptDecoder(shared_engine.model, 1, cpu_matmul_kind="reference")
    assert isinstance(exact.matmul, ReferenceMatmul)
    with pytest.raises(ValueError, match="onednn or reference"):
        cpu_matmul("mkl", [])


def test_without_onednn_the_decoder_warns_and_multiplies_as_transformers_does(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(matmul, "onednn_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="voiceforge.decoding.matmul"):
        chosen = cpu_matmul("onednn", [nn.Linear(4, 4)])
    assert isinstance(chosen, ReferenceMatmul) and "no oneDNN" in caplog.text
