"""A decoder read back step by step, or one step ahead, whatever its device would choose."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from voiceforge.decoding.scheduler import BatchScheduler


@contextmanager
def stepping_ahead(scheduler: BatchScheduler, lookahead: int) -> Iterator[None]:
    """While in use, `scheduler` (idle) reads each step's tokens back before queueing the next (0, as on
    a CPU) or queues one step ahead (1, as on a GPU; on a CPU the same code with nothing to overlap)."""
    before, scheduler.lookahead = scheduler.lookahead, lookahead
    try:
        yield
    finally:
        scheduler.lookahead = before
