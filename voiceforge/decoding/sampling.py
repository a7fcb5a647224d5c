"""Choosing the next audio token for many sequences at once, each with its own settings.

The same logits processing as Hugging Face `generate` does for stock XTTS, in its order: the
repetition penalty over every token id the sequence has seen (its prompt's placeholder ids
included), then, when sampling, temperature, top-k and top-p, and a draw; greedy rows take the
arg-max of the penalised scores, as `do_sample=False` does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from voiceforge.services.engine import Sampling


class SamplingTable:
    """Per-row sampling settings and seen-token masks, kept as tensors for the whole batch."""

    def __init__(self, rows: int, vocab: int, device: torch.device) -> None:
        self.vocab = vocab
        self.seen = torch.zeros(rows, vocab, dtype=torch.bool, device=device)
        self.greedy = torch.ones(rows, dtype=torch.bool, device=device)
        self.temperature = torch.ones(rows, device=device)
        self.top_k = torch.full((rows,), vocab, dtype=torch.long, device=device)
        self.top_p = torch.ones(rows, device=device)
        self.penalty = torch.ones(rows, device=device)

    def assign(self, row: int, settings: Sampling, prompt_ids: list[int]) -> None:
        """Give `row` a new sequence: its settings, and the ids its prompt holds (penalised like any)."""
        self.seen[row] = False
        self.seen[row, prompt_ids] = True
        self.greedy[row] = settings.greedy
        self.temperature[row] = max(settings.temperature, 1e-5)
        self.top_k[row] = min(max(settings.top_k, 1), self.vocab) if settings.top_k > 0 else self.vocab
        self.top_p[row] = settings.top_p
        self.penalty[row] = settings.repetition_penalty

    def move_row(self, source: int, target: int) -> None:
        for table in (self.seen, self.greedy, self.temperature, self.top_k, self.top_p, self.penalty):
            table[target] = table[source]

    def choose(self, logits: torch.Tensor, rows: torch.Tensor | None = None, *, sample: bool | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Next token of `rows` (default 0..n-1) from their logits (n, vocab); marks them as seen.

        `sample=False` says every row is greedy (saves reading the flags back from a GPU).
        """
        # Rows 0..n-1 (every step) are a slice of the tables, which costs no gather kernel.
        rows = slice(0, logits.shape[0]) if rows is None else rows
        scores = self.penalised(logits, rows)
        tokens = scores.argmax(dim=-1)
        greedy = self.greedy[rows]
        if sample if sample is not None else not bool(greedy.all()):
            tokens = torch.where(greedy, tokens, self._draw(scores, rows, generator))
        seen = self.seen[rows]
        if isinstance(rows, slice):
            seen.scatter_(1, tokens.view(-1, 1), True)  # a view: marks the table itself
        else:
            self.seen[rows, tokens] = True
        return tokens

    def penalised(self, logits: torch.Tensor, rows: torch.Tensor | slice) -> torch.Tensor:
        """Scores after the repetition penalty: seen tokens' logits divided (or, if negative, multiplied)."""
        scores = logits.float()
        penalty = self.penalty[rows, None]
        penalised = torch.where(scores < 0, scores * penalty, scores / penalty)
        return torch.where(self.seen[rows], penalised, scores)

    def _draw(self, scores: torch.Tensor, rows: torch.Tensor | slice,
              generator: torch.Generator | None) -> torch.Tensor:
        filtered = self.filtered(scores, rows)
        return torch.multinomial(filtered.softmax(dim=-1), 1, generator=generator).view(-1)

    def filtered(self, scores: torch.Tensor, rows: torch.Tensor | slice) -> torch.Tensor:
        """Penalised scores after temperature, top-k and top-p: what a sampled row draws from."""
        # A low temperature can lift a huge but finite score past float32's range: +inf would make the
        # softmax NaN and fail the batch's shared draw for every row, so it stays the largest finite one.
        scores = (scores / self.temperature[rows, None]).clamp(max=torch.finfo(torch.float32).max)
        # top-k: drop what is below the k-th largest score (ties with it stay, as in transformers).
        descending = scores.sort(dim=-1, descending=True).values
        kth = descending.gather(1, (self.top_k[rows] - 1).view(-1, 1))
        scores = scores.masked_fill(scores < kth, float("-inf"))
        # top-p: drop the least likely tokens whose probabilities sum to at most 1 - top_p, keeping one.
        ascending, order = scores.sort(dim=-1)
        cumulative = ascending.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative <= (1 - self.top_p[rows, None])
        drop[:, -1] = False
        return scores.masked_fill(drop.scatter(1, order, drop), float("-inf"))
