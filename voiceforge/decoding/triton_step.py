"""The decoding step in five fused Triton kernels a layer, where PyTorch launches about fifteen. CUDA only.

At the batch sizes a server sees, a step of XTTS's 30-layer GPT is bound by its kernel count, not by
its arithmetic: replayed from CUDA graphs on an H200 its 433 kernels took 1.4 ms while reading the
weights once takes about 0.4 ms in float32. Here each layer is
  1. ln_1 and the query/key/value projection, keys and values written straight into the cache;
  2. attention of each row and head over its own cached positions (masked past the row's length),
     optionally split over several programs and combined by a second kernel (Tiling.attention_splits);
  3. the attention's output projection, its bias and the residual;
  4. ln_2, the MLP's first projection and GELU (GPT-2's tanh form);
  5. the MLP's second projection, its bias and the residual.
The residual stream stays float32 whatever the weights' dtype. Every formula is transformers'
GPT-2's; the sums are ordered differently, so float32 logits match PyTorch's step to rounding and
greedy tokens can differ at a near-tie (bench/decode.py measures the agreement). Weight matrices
are kept transposed (out, in), so a program reads whole rows of them; `refresh()` copies a voice's
weights in after GptWeights swaps them, in place, as CUDA graphs need. Triton's interpreter
(TRITON_INTERPRET=1) runs the same kernels on a CPU, which is how the tests check them without a GPU.
The engine runs this step for one row and PyTorch's for more by default (cuda_step.py says why).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import triton
import triton.language as tl

from voiceforge.decoding.gpt import GptDecoder, StepOutput


@dataclass(frozen=True)
class Tiling:
    """How the kernels cut their work; the defaults are reasoned, one row's warps and stages timed on an H200.

    A step reads every weight once, so what matters is how many bytes are in flight at once: one
    row's matrix-vector product loads a program's whole slice of K at once (single_row_block_k) rather
    than waiting on memory once per 128 columns; more rows go through the matrix units (tl.dot, at
    least 16 rows, padded) over tiles of block_k, pipelined num_stages deep. Attention reads
    block_t cached positions an iteration. bench/triton_step.py times other tilings side by side.
    """

    block_n: int = 16  # output columns a program computes with the matrix units (their least: 16)
    block_k: int = 128  # weight columns a program reads per iteration with the matrix units
    single_row_block_n: int = 8  # output columns a program computes for one row
    single_row_block_k: int = 1024  # weight columns it reads per iteration (all of K up to 1024)
    block_t: int = 128  # cached positions an attention program reads per iteration
    # 1: attention loops over each row's own positions (a while loop), 0: over the cache's whole length
    # (up to about 1,000 positions for XTTS-v2), masked past the row's; 0 is what an H200 has timed.
    to_row_length: int = 0
    # Programs that share one row's and head's attention (flash-decoding; a power of 2): each takes an
    # equal part of the row's own positions, and a second kernel combines their softmaxes. With 1, one
    # program walks them all: at one row a layer's attention is 16 programs on a GPU of 132 SMs, each
    # waiting on memory block after block (13 us a layer in bf16 on an H200). Not timed yet, so 1.
    attention_splits: int = 1
    num_warps: int = 4
    num_stages: int = 3
    # One row's matrix-vector products: more warps keep more loads in flight. On an H200 (graph replay,
    # full size) 8 warps and 4 stages took the fp32 step at one row from 1.45 to 1.31 ms (bf16: 1.03
    # either way), and the 8-row step from 6.5 to 10.9 ms: so for one row only.
    single_row_warps: int = 8
    single_row_stages: int = 4

    @classmethod
    def parse(cls, text: str) -> Tiling:
        """'block_k=256,num_warps=8' -> a Tiling with those fields changed (benchmarks' --configs)."""
        names = {field.name for field in fields(cls)}
        changes = dict(part.split("=") for part in text.split(",") if part)
        unknown = changes.keys() - names
        if unknown:
            msg = f"unknown tiling fields {sorted(unknown)}: {sorted(names)}"
            raise ValueError(msg)
        return cls(**{name: int(value) for name, value in changes.items()})


@triton.jit
def _gelu_tanh(x):
    # GPT-2's GELU: 0.5 x (1 + tanh(u)), written with exp (1 + tanh(u) = 2 - 2 / (exp(2u) + 1)).
    u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
    return 0.5 * x * (2.0 - 2.0 / (tl.exp(2.0 * u) + 1.0))


@triton.jit
def _linear_kernel(x_ptr, w_ptr, bias_ptr, out_ptr, ln_w_ptr, ln_b_ptr, cache_ptr, pos_ptr, rows, eps,
                   stride_kv, stride_row, stride_head, stride_pos,
                   K: tl.constexpr, N: tl.constexpr, ROWS: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_K: tl.constexpr, LAYER_NORM: tl.constexpr, GELU: tl.constexpr,
                   RESIDUAL: tl.constexpr, QKV: tl.constexpr, DIM: tl.constexpr, HEAD_DIM: tl.constexpr,
                   IEEE: tl.constexpr):
    """out[r, cols] = f(x[r]) @ w[cols].T + bias[cols], for this program's BLOCK_N output columns and
    every live row r: f is a LayerNorm or nothing; then GELU, or plus out[r, cols] (the residual, in
    place: a program reads and writes only its own columns). With QKV, columns past DIM are keys and
    values and go into the cache at each row's position instead of out."""
    pid = tl.program_id(0)
    r = tl.arange(0, ROWS)
    live = r < rows
    cols = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    if LAYER_NORM:  # each row's mean and variance, two passes as torch's LayerNorm (x is in L2: small)
        total = tl.zeros((ROWS,), tl.float32)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            total += tl.sum(tl.load(x_ptr + r[:, None] * K + ks[None, :], mask=live[:, None], other=0.0), 1)
        mean = total / K
        squares = tl.zeros((ROWS,), tl.float32)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            centred = tl.load(x_ptr + r[:, None] * K + ks[None, :], mask=live[:, None], other=0.0)
            centred -= mean[:, None]
            squares += tl.sum(centred * centred, 1)
        rstd = 1.0 / tl.sqrt(squares / K + eps)
    acc = tl.zeros((ROWS, BLOCK_N), tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + r[:, None] * K + ks[None, :], mask=live[:, None], other=0.0).to(tl.float32)
        if LAYER_NORM:
            x = (x - mean[:, None]) * rstd[:, None] * tl.load(ln_w_ptr + ks)[None, :]
            x += tl.load(ln_b_ptr + ks)[None, :]
        w = tl.load(w_ptr + cols[:, None] * K + ks[None, :])
        x = x.to(w.dtype)  # the weights' precision for both operands, at one row as at many
        if ROWS == 1:  # one row: a dot product per column, no padding to the matrix units' 16 rows
            acc += tl.sum(x.to(tl.float32) * w.to(tl.float32), 1)[None, :]
        elif IEEE:
            acc += tl.dot(x, tl.trans(w), input_precision="ieee")
        else:
            acc += tl.dot(x, tl.trans(w))
    y = acc + tl.load(bias_ptr + cols)[None, :]
    if GELU:
        y = _gelu_tanh(y)
    if QKV:
        which = cols // DIM  # 0: query, 1: key, 2: value
        head = (cols % DIM) // HEAD_DIM
        pos = tl.load(pos_ptr + r, mask=live, other=0)
        tl.store(out_ptr + r[:, None] * DIM + cols[None, :], y, mask=live[:, None] & (which == 0)[None, :])
        into_cache = (cache_ptr + (which - 1)[None, :] * stride_kv + r[:, None] * stride_row
                      + head[None, :] * stride_head + pos[:, None] * stride_pos + (cols % HEAD_DIM)[None, :])
        tl.store(into_cache, y.to(cache_ptr.dtype.element_ty), mask=live[:, None] & (which > 0)[None, :])
    else:
        where = out_ptr + r[:, None] * N + cols[None, :]
        if RESIDUAL:
            y += tl.load(where, mask=live[:, None], other=0.0)
        tl.store(where, y, mask=live[:, None])


@triton.jit
def _attention_kernel(q_ptr, cache_ptr, pos_ptr, out_ptr, parts_ptr, scale, stride_kv, stride_row,
                      stride_head, stride_pos, HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
                      LENGTH: tl.constexpr, BLOCK_T: tl.constexpr, TO_ROW_LENGTH: tl.constexpr,
                      SPLITS: tl.constexpr):
    """One row's and head's query over its cached keys 0..pos (the row's own length), online softmax.
    TO_ROW_LENGTH: loop over those positions only; otherwise over the cache's whole length, masked.
    SPLITS > 1: the grid's third axis cuts 0..pos into SPLITS parts (whole blocks of BLOCK_T), and each
    program writes its part's running maximum, sum and output to parts_ptr for _combine_kernel."""
    row = tl.program_id(0)
    head = tl.program_id(1)
    d = tl.arange(0, HEAD_DIM)
    q = tl.load(q_ptr + row * HEADS * HEAD_DIM + head * HEAD_DIM + d)
    pos = tl.load(pos_ptr + row)
    keys = cache_ptr + row * stride_row + head * stride_head
    best = tl.full((1,), float("-inf"), tl.float32)
    total = tl.zeros((1,), tl.float32)
    acc = tl.zeros((HEAD_DIM,), tl.float32)
    if SPLITS > 1:
        split = tl.program_id(2)
        share = ((pos + SPLITS) // SPLITS + BLOCK_T - 1) // BLOCK_T * BLOCK_T  # ceil((pos + 1) / SPLITS)
        t0 = split * share
        end = t0 + share
        while (t0 < end) & (t0 <= pos):  # a part past pos leaves best -inf and total 0: weighed 0
            best, total, acc = _attend(q, keys, stride_kv, stride_pos, pos, t0, best, total, acc, scale,
                                       HEAD_DIM, LENGTH, BLOCK_T)
            t0 += BLOCK_T
        part = parts_ptr + ((row * HEADS + head) * SPLITS + split) * (HEAD_DIM + 2)
        tl.store(part + d, acc)
        tl.store(part + HEAD_DIM + tl.arange(0, 1), best)
        tl.store(part + HEAD_DIM + 1 + tl.arange(0, 1), total)
    else:
        if TO_ROW_LENGTH:
            t0 = 0
            while t0 <= pos:  # a while loop: `range` needs a bound Triton's interpreter can read
                best, total, acc = _attend(q, keys, stride_kv, stride_pos, pos, t0, best, total, acc, scale,
                                           HEAD_DIM, LENGTH, BLOCK_T)
                t0 += BLOCK_T
        else:
            for t0 in range(0, LENGTH, BLOCK_T):  # positions past pos are masked, and their loads skipped
                best, total, acc = _attend(q, keys, stride_kv, stride_pos, pos, t0, best, total, acc, scale,
                                           HEAD_DIM, LENGTH, BLOCK_T)
        tl.store(out_ptr + row * HEADS * HEAD_DIM + head * HEAD_DIM + d, acc / total)


@triton.jit
def _combine_kernel(parts_ptr, out_ptr, HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, SPLITS: tl.constexpr):
    """One row's and head's attention from its SPLITS parts: each part's output and sum rescaled to the
    largest running maximum, as the online softmax would have rescaled them going on."""
    row = tl.program_id(0)
    head = tl.program_id(1)
    d = tl.arange(0, HEAD_DIM)
    part = parts_ptr + ((row * HEADS + head) * SPLITS + tl.arange(0, SPLITS)) * (HEAD_DIM + 2)
    acc = tl.load(part[:, None] + d[None, :])
    best = tl.load(part + HEAD_DIM)
    total = tl.load(part + HEAD_DIM + 1)
    weight = tl.exp(best - tl.max(best, 0))
    tl.store(out_ptr + row * HEADS * HEAD_DIM + head * HEAD_DIM + d,
             tl.sum(weight[:, None] * acc, 0) / tl.sum(weight * total, 0))


@triton.jit
def _attend(q, keys, stride_kv, stride_pos, pos, t0, best, total, acc, scale, HEAD_DIM: tl.constexpr,
            LENGTH: tl.constexpr, BLOCK_T: tl.constexpr):
    """The online softmax over positions t0..t0 + BLOCK_T - 1: the running maximum, sum and output."""
    d = tl.arange(0, HEAD_DIM)
    t = t0 + tl.arange(0, BLOCK_T)
    visible = (t <= pos) & (t < LENGTH)
    k = tl.load(keys + t[:, None] * stride_pos + d[None, :], mask=visible[:, None], other=0.0)
    scores = tl.where(visible, tl.sum(k.to(tl.float32) * q[None, :], 1) * scale, float("-inf"))
    new_best = tl.maximum(best, tl.max(scores, 0))
    weights = tl.exp(scores - new_best)
    rescale = tl.exp(best - new_best)
    v = tl.load(keys + stride_kv + t[:, None] * stride_pos + d[None, :], mask=visible[:, None], other=0.0)
    acc = acc * rescale + tl.sum(weights[:, None] * v.to(tl.float32), 0)
    total = total * rescale + tl.sum(weights, 0)
    return new_best, total, acc


@dataclass
class _Layer:
    """One block's parameters as the kernels read them: LayerNorms and biases float32, weights (out, in)."""

    ln_1: tuple[torch.Tensor, torch.Tensor, float]
    qkv: tuple[torch.Tensor, torch.Tensor]
    proj: tuple[torch.Tensor, torch.Tensor]
    ln_2: tuple[torch.Tensor, torch.Tensor, float]
    fc: tuple[torch.Tensor, torch.Tensor]
    out: tuple[torch.Tensor, torch.Tensor]


class TritonStep:
    """`step()` with GptDecoder.step's signature, in fused Triton kernels over the decoder's own cache."""

    def __init__(self, decoder: GptDecoder, tiling: Tiling | None = None) -> None:
        self.decoder = decoder
        self.tiling = tiling or Tiling()
        splits = self.tiling.attention_splits
        if splits < 1 or splits & (splits - 1):
            msg = f"attention_splits must be a power of 2, not {splits}"
            raise ValueError(msg)
        # Each split attention program's part: its output, running maximum and sum (float32).
        self._parts = torch.empty(decoder.rows, decoder.heads, splits, decoder.head_dim + 2,
                                  device=decoder.device) if splits > 1 else None
        self.layers = [self._layer(block) for block in decoder._source.blocks]
        decoder.on_refresh.append(self.refresh)

    def _layer(self, block: torch.nn.Module) -> _Layer:
        def norm(ln: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor, float]:
            return ln.weight.detach().float(), ln.bias.detach().float(), ln.eps

        def matrix(conv: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
            # transformers' Conv1D holds (in, out); a copy (out, in) in the decoder's dtype.
            return conv.weight.detach().t().to(self.decoder.dtype).contiguous(), conv.bias.detach().float()

        return _Layer(norm(block.ln_1), matrix(block.attn.c_attn), matrix(block.attn.c_proj),
                      norm(block.ln_2), matrix(block.mlp.c_fc), matrix(block.mlp.c_proj))

    def refresh(self) -> None:
        """Copy the model's GPT weights in place (a voice's fine-tuned ones after a swap)."""
        with torch.inference_mode():
            for layer, block in zip(self.layers, self.decoder._source.blocks, strict=True):
                for (weight, bias), conv in ((layer.qkv, block.attn.c_attn), (layer.proj, block.attn.c_proj),
                                             (layer.fc, block.mlp.c_fc), (layer.out, block.mlp.c_proj)):
                    weight.copy_(conv.weight.detach().t())
                    if bias.data_ptr() != conv.bias.data_ptr():
                        bias.copy_(conv.bias.detach())
                for (weight, bias, _eps), ln in ((layer.ln_1, block.ln_1), (layer.ln_2, block.ln_2)):
                    if weight.data_ptr() != ln.weight.data_ptr():
                        weight.copy_(ln.weight.detach())
                        bias.copy_(ln.bias.detach())

    def step(self, tokens: torch.Tensor, audio_positions: torch.Tensor, cache_positions: torch.Tensor,
             kv_len: int) -> StepOutput:
        """GptDecoder.step: each row attends over its own cache_positions + 1 positions (kv_len unused)."""
        decoder = self.decoder
        n, dim = tokens.shape[0], decoder.dim
        parts = decoder.parts
        x = (parts.mel_embedding(tokens) + parts.mel_pos_embedding.emb(audio_positions)).float().contiguous()
        query = torch.empty(n, dim, dtype=torch.float32, device=x.device)
        attended = torch.empty_like(query)
        hidden = torch.empty(n, 4 * dim, dtype=torch.float32, device=x.device)
        positions = cache_positions.contiguous()
        for index, layer in enumerate(self.layers):
            cache = decoder.cache[index]
            self._linear(x, layer.qkv, query, n, norm=layer.ln_1, cache=cache, positions=positions)
            self._attention(query, cache, positions, attended, n)
            self._linear(attended, layer.proj, x, n, residual=True)
            self._linear(x, layer.fc, hidden, n, norm=layer.ln_2, gelu=True)
            self._linear(hidden, layer.out, x, n, residual=True)
        return decoder._head(x.to(decoder.dtype))

    def _attention(self, query: torch.Tensor, cache: torch.Tensor, positions: torch.Tensor, out: torch.Tensor,
                   rows: int) -> None:
        """`out` (rows, dim): each row's and head's attention over a layer's cached positions 0..position."""
        decoder, tiling = self.decoder, self.tiling
        splits = tiling.attention_splits
        stride = cache.stride()
        parts = self._parts if self._parts is not None else out
        _attention_kernel[(rows, decoder.heads, splits)](
            query, cache, positions, out, parts, decoder.head_dim ** -0.5, stride[0], stride[1], stride[2],
            stride[3], HEADS=decoder.heads, HEAD_DIM=decoder.head_dim, LENGTH=decoder.max_len,
            BLOCK_T=tiling.block_t, TO_ROW_LENGTH=bool(tiling.to_row_length), SPLITS=splits,
            num_warps=tiling.num_warps)
        if splits > 1:
            _combine_kernel[(rows, decoder.heads)](parts, out, HEADS=decoder.heads, HEAD_DIM=decoder.head_dim,
                                                   SPLITS=splits)

    def _linear(self, x: torch.Tensor, weights: tuple[torch.Tensor, torch.Tensor], out: torch.Tensor,
                rows: int, *, norm: tuple[torch.Tensor, torch.Tensor, float] | None = None,
                gelu: bool = False, residual: bool = False, cache: torch.Tensor | None = None,
                positions: torch.Tensor | None = None) -> None:
        weight, bias = weights
        n_out, k = weight.shape
        tiling = self.tiling
        if rows == 1:
            block_n, block_k = tiling.single_row_block_n, tiling.single_row_block_k
            warps, stages = tiling.single_row_warps, tiling.single_row_stages
        else:
            block_n, block_k = tiling.block_n, tiling.block_k
            warps, stages = tiling.num_warps, tiling.num_stages
        padded = 1 if rows == 1 else max(16, triton.next_power_of_2(rows))  # the matrix units' least
        ln_w, ln_b, eps = norm if norm is not None else (bias, bias, 0.0)
        stride = cache.stride() if cache is not None else (0, 0, 0, 0)
        _linear_kernel[(n_out // block_n,)](
            x, weight, bias, out, ln_w, ln_b, cache if cache is not None else out,
            positions if positions is not None else out, rows, eps, *stride[:4],
            K=k, N=n_out, ROWS=padded, BLOCK_N=block_n, BLOCK_K=min(block_k, k),
            LAYER_NORM=norm is not None, GELU=gelu, RESIDUAL=residual, QKV=cache is not None,
            DIM=self.decoder.dim, HEAD_DIM=self.decoder.head_dim, IEEE=weight.dtype == torch.float32,
            num_warps=warps, num_stages=stages)
