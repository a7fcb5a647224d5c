"""The decoding step captured in CUDA graphs, one per (batch size, attention length) bucket. CUDA only.

A step of XTTS's 30-layer GPT is a few hundred small kernels; launched one by one from Python
they cost far more than the arithmetic at batch sizes a server sees. Replaying a captured graph
launches them all at once. A step for n live rows runs the graph of the smallest batch bucket >= n
(rows past n are free cache rows: what the graph writes there is overwritten when a sequence is
admitted) and of the smallest attention-length bucket that covers every row. Imported only when the
engine runs on CUDA.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable

import torch

from voiceforge.decoding.gpt import GptDecoder, StepOutput

log = logging.getLogger(__name__)

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32)
LENGTH_BUCKETS = (256, 512, 768)  # plus the cache's full length


class GraphedStep:
    """`step()` with GptDecoder.step's signature, replaying captured graphs."""

    def __init__(self, decoder: GptDecoder, *, batch_buckets: tuple[int, ...] = BATCH_BUCKETS,
                 length_buckets: tuple[int, ...] = LENGTH_BUCKETS,
                 step: Callable[..., StepOutput] | None = None) -> None:
        """`step` is what is captured: the decoder's own step unless another is given (TritonStep.step,
        which reads each row's length from its position, so it needs no length buckets: pass ())."""
        if decoder.device.type != "cuda":
            raise ValueError("CUDA graphs need the decoder on a CUDA device")
        self.decoder = decoder
        self._eager_step = step or decoder.step
        self.batches = tuple(b for b in batch_buckets if b <= decoder.rows) or (decoder.rows,)
        if self.batches[-1] < decoder.rows:
            self.batches += (decoder.rows,)
        self.lengths = tuple(sorted({n for n in length_buckets if n < decoder.max_len} | {decoder.max_len}))
        rows = self.batches[-1]
        device = decoder.device
        self.tokens = torch.zeros(rows, dtype=torch.long, device=device)
        self.audio_positions = torch.zeros(rows, dtype=torch.long, device=device)
        self.cache_positions = torch.zeros(rows, dtype=torch.long, device=device)
        self.pool = torch.cuda.graph_pool_handle()
        self.graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, StepOutput]] = {}

    def capture(self) -> None:
        """Capture every bucket now (seconds), rather than on first use of each."""
        for batch in self.batches:
            for length in self.lengths:
                self._graph(batch, length)

    def _graph(self, batch: int, length: int) -> tuple[torch.cuda.CUDAGraph, StepOutput]:
        key = (batch, length)
        if key not in self.graphs:
            args = (self.tokens[:batch], self.audio_positions[:batch], self.cache_positions[:batch], length)
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream), torch.inference_mode():
                for _ in range(2):  # warm-up: lazy initialisation must not happen inside the capture
                    self._eager_step(*args)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool), torch.inference_mode():
                output = self._eager_step(*args)
            self.graphs[key] = (graph, output)
            log.debug("captured the decoding step for batch %d, length %d", batch, length)
        return self.graphs[key]

    def step(self, tokens: torch.Tensor, audio_positions: torch.Tensor, cache_positions: torch.Tensor,
             kv_len: int) -> StepOutput:
        n = tokens.shape[0]
        batch = self.batches[bisect.bisect_left(self.batches, n)]
        length = self.lengths[bisect.bisect_left(self.lengths, kv_len)]
        self.tokens[:n] = tokens
        self.audio_positions[:n] = audio_positions
        self.cache_positions[:n] = cache_positions
        if n < batch:  # padding rows write into their own free rows at position 0 and read nothing used
            self.tokens[n:batch] = 0
            self.audio_positions[n:batch] = 0
            self.cache_positions[n:batch] = 0
        graph, output = self._graph(batch, length)
        graph.replay()
        return StepOutput(output.logits[:n], output.latents[:n])
