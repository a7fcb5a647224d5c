"""XTTS-v2's GPT run step by step over a preallocated key/value cache, many sequences at once.

The same arithmetic as the Hugging Face GPT-2 blocks inside XTTS (coqui builds its GPT from
`transformers.GPT2Model` with the position embeddings removed; XTTS adds its own learned text and
audio position embeddings to the inputs), written out so that one decoding step is a fixed sequence
of tensor operations: no `generate()` machinery, no cache objects growing by concatenation, and a
shape that CUDA graphs can capture. Sequences live in "rows" of the cache; rows 0..n-1 are the live
ones (the scheduler keeps them packed), each with its own length, so keys past a row's length are
masked out of its attention.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from voiceforge.decoding.matmul import ReferenceMatmul, cpu_matmul


def max_prefix(model: Any) -> int:
    """The longest prefix: 32 conditioning latents (the perceiver's), text tokens plus their start and
    stop tokens, then the start audio token; generation adds up to `gpt.max_gen_mel_tokens`."""
    gpt = model.gpt
    cond = 32 if gpt.use_perceiver_resampler else gpt.max_prompt_tokens
    return cond + model.args.gpt_max_text_tokens + 2 + 1


def cache_shape(model: Any, rows: int) -> tuple[int, ...]:
    """A GptDecoder's key/value cache: (layers, keys/values, rows, heads, positions, head_dim)."""
    gpt = model.gpt
    positions = max_prefix(model) + gpt.max_gen_mel_tokens
    return len(gpt.gpt.h), 2, rows, gpt.heads, positions, gpt.model_dim // gpt.heads


def cache_bytes(model: Any, rows: int, dtype: torch.dtype) -> int:
    """Bytes of a GptDecoder's key/value cache of `rows` rows in `dtype` (what building one allocates)."""
    return math.prod(cache_shape(model, rows)) * torch.empty(0, dtype=dtype).element_size()


@dataclass(frozen=True)
class StepOutput:
    """What one decoding step gives for each live row: next-token logits and the GPT latent."""

    logits: torch.Tensor  # (n, audio tokens), float32
    latents: torch.Tensor  # (n, model_dim): final_norm of the last hidden state, what HiFiGAN vocodes


class GptDecoder:
    """The GPT of one loaded Xtts model, with a key/value cache of `rows` sequences.

    In the model's own dtype the modules are referenced, not copied: swapping a voice's fine-tuned
    weights in place (GptWeights.activate) is seen here at once. In another dtype (bf16/fp16 on a
    GPU) the decoder works on a converted copy, which `refresh()` brings up to date after a swap.
    On a CPU the weight matrices are multiplied by `cpu_matmul` (matmul.py): "onednn" keeps a
    prepacked copy of them (also refreshed), "reference" is transformers' own arithmetic.
    """

    def __init__(self, model: Any, rows: int, *, dtype: torch.dtype | None = None,
                 cpu_matmul_kind: str = "onednn") -> None:
        gpt = model.gpt
        self.model = model
        self.gpt = gpt
        self.heads = gpt.heads
        self.dim = gpt.model_dim
        self.head_dim = self.dim // self.heads
        self.device = next(gpt.parameters()).device
        model_dtype = next(gpt.parameters()).dtype
        self.dtype = dtype or model_dtype
        self._source = _DecodingModules(gpt)
        self.parts = self._source if self.dtype == model_dtype else copy.deepcopy(self._source).to(self.dtype)
        self.blocks = list(self.parts.blocks)
        self.start_token = gpt.start_audio_token
        self.stop_token = gpt.stop_audio_token
        self.max_new_tokens = gpt.max_gen_mel_tokens
        self.max_prefix = max_prefix(model)
        self.max_len = self.max_prefix + self.max_new_tokens
        self.rows = rows
        # Zeros, not empty: a masked-out key must still be a finite number, or 0 * NaN poisons a row.
        # Keys and values per layer, row, head and position.
        self.cache = torch.zeros(cache_shape(model, rows), dtype=self.dtype, device=self.device)
        # On a CPU the step is the exact arithmetic of transformers' GPT-2 (so greedy tokens equal
        # stock's). On CUDA, where a step is bound by its kernel count, the same formulas take fewer
        # kernels, rounded differently (the benchmark measures token agreement): attention in three
        # (baddbmm, softmax, bmm), or in half precision one cuDNN kernel, the fastest there from 8 rows
        # up (bench/step_variants.py; in float32 PyTorch's fallback for it is slower than the bmm);
        # GELU (a prefill's; a step's is a matmul epilogue, _finish_step_block) in one.
        # How a step's layer ends (layer_rest): transformers' arithmetic, or on CUDA with fewer kernels.
        self.exact = self.device.type == "cpu"
        if self.exact:
            self._mask, self._attend = _sdpa_mask, _sdpa_attention
        else:
            self._mask = _bmm_mask
            self._attend = _bmm_attention if self.dtype == torch.float32 else _fused_attention
        self._gelu = self.blocks[0].mlp.act if self.exact else functools.partial(F.gelu, approximate="tanh")
        # Joining sequences prefilled in one pass (prefill_rows) on a GPU; one at a time on a CPU.
        self.prefill_together = not self.exact
        self._finish_step = self._finish_block if self.exact else self._finish_step_block
        self.matmul = cpu_matmul(cpu_matmul_kind, self._weighted()) if self.exact else ReferenceMatmul()
        # What else keeps a copy of the weights (triton_step.TritonStep) and refreshes it with ours.
        self.on_refresh: list[Callable[[], None]] = []

    def _weighted(self) -> list[nn.Module]:
        """Every module whose weight a step multiplies by: four per block, then the audio token head."""
        return [*(module for block in self.blocks for module in (
            block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj)), self.parts.mel_head]

    def refresh(self) -> None:
        """Bring the decoder's copies (another dtype's, oneDNN's packing) up to the model's GPT weights."""
        if self.parts is not self._source:
            self.parts.load_state_dict(self._source.state_dict())
        self.matmul.refresh()
        for refresh in self.on_refresh:
            refresh()

    # -- prefix ---------------------------------------------------------------------------------
    def prefix_embeddings(self, cond_latent: torch.Tensor, text_tokens: torch.Tensor) -> torch.Tensor:
        """(T, dim): conditioning latents, text with its start/stop tokens, then the start audio token.

        What `gpt.compute_embeddings` stores as the prefix, plus the first generated position,
        without touching the model's shared `gpt_inference` state.
        """
        gpt, parts = self.gpt, self.parts
        text = F.pad(text_tokens.view(1, -1), (0, 1), value=gpt.stop_text_token)
        text = F.pad(text, (1, 0), value=gpt.start_text_token)
        text_emb = parts.text_embedding(text) + parts.text_pos_embedding(text)
        start = torch.full((1, 1), self.start_token, dtype=torch.long, device=text.device)
        start_emb = parts.mel_embedding(start) + parts.mel_pos_embedding(start)
        cond = cond_latent.to(text_emb.dtype).view(1, -1, self.dim)
        return torch.cat([cond, text_emb, start_emb], dim=1)[0].to(self.dtype)

    def prefill(self, row: int, embeddings: torch.Tensor) -> StepOutput:
        """Run a prefix (T, dim) through every layer into cache row `row`; the output of its last position."""
        return self.prefill_rows(row, [embeddings])

    def prefill_rows(self, first_row: int, prefixes: list[torch.Tensor]) -> StepOutput:
        """Run prefixes (T_i, dim) together into cache rows first_row, first_row + 1, ...; the output of
        each one's last position, in order.

        Shorter prefixes are padded at the end: causal attention keeps every real position from seeing
        the padding, and what the padding leaves in a cache row lies past the row's length, where the
        step writes before it reads. One pass for all prefixes launches a pass's kernels once (on a
        GPU, where a prefix is a few hundred small kernels); the results equal each prefix's own pass
        up to rounding (matmuls of more rows), so a CPU, which must match stock bit for bit, runs one
        prefix at a time (`prefill_together`).
        """
        n, lengths = len(prefixes), [prefix.shape[0] for prefix in prefixes]
        longest = max(lengths)
        x = prefixes[0].view(1, longest, self.dim) if n == 1 else torch.stack(
            [F.pad(prefix, (0, 0, 0, longest - prefix.shape[0])) for prefix in prefixes])
        rows = slice(first_row, first_row + n)
        for layer, block in enumerate(self.blocks):
            h = block.ln_1(x)
            q, k, v = self._qkv(block, h, n, longest)
            self.cache[layer, 0, rows, :, :longest] = k
            self.cache[layer, 1, rows, :, :longest] = v
            attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = self._finish_block(block, x, attended, n, longest)
        last = torch.tensor(lengths, device=x.device) - 1
        return self._head(x[torch.arange(n, device=x.device), last])

    # -- one step -------------------------------------------------------------------------------
    def step(self, tokens: torch.Tensor, audio_positions: torch.Tensor, cache_positions: torch.Tensor,
             kv_len: int) -> StepOutput:
        """Feed rows 0..n-1 their last token: `tokens`, `audio_positions` (index into the audio position
        embedding) and `cache_positions` (where the token's key/value goes) are (n,) long tensors;
        attention reads the first `kv_len` cache positions, masked per row to its own length.
        """
        n = tokens.shape[0]
        x = self.parts.mel_embedding(tokens) + self.parts.mel_pos_embedding.emb(audio_positions)
        x = x.to(self.dtype).view(n, 1, self.dim)
        rows = torch.arange(n, device=tokens.device)
        visible = torch.arange(kv_len, device=tokens.device).view(1, -1) <= cache_positions.view(-1, 1)
        mask = self._mask(visible, self.heads, self.dtype)
        for layer, block in enumerate(self.blocks):
            qkv = self.layer_qkv(block, x)
            # Key and value of each row go into its cache row at its own position, in one write.
            cache = self.cache[layer]
            cache[:, rows, :, cache_positions] = qkv[:, self.dim:].view(n, 2, self.heads, self.head_dim)
            x = self.layer_rest(block, x, qkv, cache[0, :n, :, :kv_len], cache[1, :n, :, :kv_len], mask)
        return self._head(x[:, -1])

    # A step's layer is these two halves around the cache write: the units `torch.compile` can take
    # (compiling the write too copies the whole cache every step; bench/compile_step.py --regional).
    def layer_qkv(self, block: Any, x: torch.Tensor) -> torch.Tensor:
        """A step's layer up to the cache write: ln_1, then each row's query, key and value (n, 3 * dim)."""
        return self.matmul(block.attn.c_attn, block.ln_1(x).view(x.shape[0], self.dim))

    def layer_rest(self, block: Any, x: torch.Tensor, qkv: torch.Tensor, keys: torch.Tensor,
                   values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The rest of a step's layer: attention over the cached keys and values, projection, MLP."""
        n = x.shape[0]
        query = qkv[:, :self.dim].view(n, self.heads, 1, self.head_dim)
        return self._finish_step(block, x, self._attend(query, keys, values, mask), n, 1)

    def clear_row(self, row: int) -> None:
        """Zero a row whose sequence ended on NaN or infinite scores. Its keys and values may be NaN, and
        a later row's step reads past its own length (masked, but a weight of 0 times NaN is NaN)."""
        self.cache[:, :, row].zero_()

    def move_row(self, source: int, target: int, length: int) -> None:
        """Copy a sequence's cache from one row to another (to keep the live rows packed)."""
        self.cache[:, :, target, :, :length] = self.cache[:, :, source, :, :length]

    # -- pieces ---------------------------------------------------------------------------------
    def _qkv(self, block: Any, h: torch.Tensor, n: int, length: int) -> tuple[torch.Tensor, ...]:
        qkv = self.matmul(block.attn.c_attn, h.reshape(n * length, self.dim))
        q, k, v = qkv.view(n, length, 3 * self.dim).split(self.dim, dim=2)
        shape = (n, length, self.heads, self.head_dim)
        return tuple(part.reshape(shape).transpose(1, 2) for part in (q, k, v))

    def _finish_block(self, block: Any, x: torch.Tensor, attended: torch.Tensor, n: int,
                      length: int) -> torch.Tensor:
        merged = attended.transpose(1, 2).reshape(n * length, self.dim)
        x = x + self.matmul(block.attn.c_proj, merged).view(n, length, self.dim)
        h = block.ln_2(x).view(n * length, self.dim)
        h = self._gelu(self.matmul(block.mlp.c_fc, h))
        return x + self.matmul(block.mlp.c_proj, h).view(n, length, self.dim)

    def _finish_step_block(self, block: Any, x: torch.Tensor, attended: torch.Tensor, n: int,
                           length: int = 1) -> torch.Tensor:
        """_finish_block for a GPU step (length 1), the biases and the residuals folded into the matmuls.

        The residual plus the bias is the matmul's accumulator ((x + b).addmm_), and the MLP's first
        matmul ends in cuBLASLt's bias+GELU epilogue: fewer kernels, a 1.15x faster float32 step at
        8-32 rows on an H200 (bench/step_variants.py); the same formulas, rounded differently.
        """
        proj, fc, out = block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj
        merged = attended.transpose(1, 2).reshape(n, self.dim)
        x = (x.view(n, self.dim) + proj.bias).addmm_(merged, proj.weight)
        h = _addmm_gelu(fc.bias, block.ln_2(x), fc.weight)
        x = (x + out.bias).addmm_(h, out.weight)
        return x.view(n, 1, self.dim)

    def _head(self, last_hidden: torch.Tensor) -> StepOutput:
        latents = self.parts.final_norm(self.parts.ln_f(last_hidden))
        return StepOutput(self.matmul(self.parts.mel_head, latents).float(), latents)


def _sdpa_mask(visible: torch.Tensor, heads: int, dtype: torch.dtype) -> torch.Tensor:
    """(n, kv_len) visibility -> the boolean mask scaled_dot_product_attention broadcasts over heads."""
    return visible.view(visible.shape[0], 1, 1, -1)


def _sdpa_attention(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                    mask: torch.Tensor) -> torch.Tensor:
    """One query per row (n, heads, 1, head_dim) over its visible cached keys, as transformers does."""
    return F.scaled_dot_product_attention(query, keys, values, attn_mask=mask)


def _bmm_mask(visible: torch.Tensor, heads: int, dtype: torch.dtype) -> torch.Tensor:
    """(n, kv_len) visibility -> an additive mask (0 or -inf) per row and head, made once per step."""
    bias = torch.zeros(visible.shape, dtype=dtype, device=visible.device)
    bias.masked_fill_(~visible, float("-inf"))
    return bias.repeat_interleave(heads, dim=0).unsqueeze(1)


def _addmm_gelu(bias: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """GELU (GPT-2's tanh form) of bias + x @ weight; on CUDA one cuBLASLt kernel, whose GELU epilogue
    is the tanh form (this op's CPU kernel uses the erf form, so a CPU computes it in two steps)."""
    if x.is_cuda:
        return torch._addmm_activation(bias, x, weight, use_gelu=True)
    return F.gelu(torch.addmm(bias, x, weight), approximate="tanh")


def _fused_attention(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                     mask: torch.Tensor) -> torch.Tensor:
    """The same attention in one fused kernel (half precision on a GPU), with _bmm_mask's mask."""
    n, heads = query.shape[:2]
    return F.scaled_dot_product_attention(query, keys, values, attn_mask=mask.view(n, heads, 1, -1))


def _bmm_attention(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                   mask: torch.Tensor) -> torch.Tensor:
    """The same attention in three kernels: scaled scores plus the mask, softmax, weighted values.

    Rows and heads of the cache slices fold into one batch dimension without a copy.
    """
    n, heads, _one, head_dim = query.shape
    length = keys.shape[2]
    scores = torch.baddbmm(mask, query.reshape(n * heads, 1, head_dim),
                           keys.reshape(n * heads, length, head_dim).transpose(1, 2), alpha=head_dim ** -0.5)
    attended = torch.bmm(scores.softmax(dim=-1), values.reshape(n * heads, length, head_dim))
    return attended.view(n, heads, 1, head_dim)


class _DecodingModules(nn.Module):
    """The parts of XTTS's GPT that decoding uses, gathered so they can be converted to one dtype."""

    def __init__(self, gpt: Any) -> None:
        super().__init__()
        self.blocks = gpt.gpt.h
        self.ln_f = gpt.gpt.ln_f
        self.final_norm = gpt.final_norm
        self.mel_head = gpt.mel_head
        self.mel_embedding = gpt.mel_embedding
        self.mel_pos_embedding = gpt.mel_pos_embedding
        self.text_embedding = gpt.text_embedding
        self.text_pos_embedding = gpt.text_pos_embedding
