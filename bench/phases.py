"""Where a BatchScheduler's decoding thread spends its time, phase by phase (bench/decode.py --phases).

Wraps the scheduler's own methods on the instance (the library has no timing code): admission
(prefill and the first token), the GPT step, sampling, vocoding, and the step's bookkeeping. Each
phase's time is exclusive of the phases it calls (a step's sampling is not also counted as the
step's bookkeeping). On CUDA every phase synchronises the device before it starts and when it ends,
so kernels are charged to the phase that launched them; that removes any overlap between the
host and the GPU, so the instrumented run is a little slower than an uninstrumented one.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch

# Attribute of the scheduler (or of its sampling table) -> the phase its calls are charged to.
PHASES = {
    "_admit": "admission (prefill)",
    "_step_runner": "GPT step",
    "choose": "sampling",
    "_vocode": "vocoder",
    "_deliver_audio": "vocoder",
    "_queue_step": "bookkeeping",
    "_read_steps": "bookkeeping",
    "_retire": "bookkeeping",
}


class PhaseTimer:
    """Times a scheduler's phases while in use: `with PhaseTimer(scheduler) as timer: ...; timer.seconds`."""

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        cuda = scheduler.decoder.device.type == "cuda"
        self._sync: Callable[[], None] = torch.cuda.synchronize if cuda else (lambda: None)
        self.seconds: dict[str, float] = defaultdict(float)
        self.steps = 0  # decoding steps run while in use
        self._children: list[float] = []  # time spent in nested phases, per open phase

    def __enter__(self) -> PhaseTimer:
        self._steps_before = self.scheduler.steps
        for attribute, phase in PHASES.items():
            owner = self.scheduler.table if attribute == "choose" else self.scheduler
            setattr(owner, attribute, self._timed(phase, getattr(owner, attribute)))
        return self

    def __exit__(self, *_exc: object) -> None:
        # The decoding thread holds the model lock for each turn of its loop: once we hold it, the
        # turn that delivered the last audio (and is still timing its phase) has ended.
        with self.scheduler._model_lock:
            self._unwrap()
            self.steps = self.scheduler.steps - self._steps_before

    def _unwrap(self) -> None:
        for attribute in PHASES:
            owner = self.scheduler.table if attribute == "choose" else self.scheduler
            if attribute == "_step_runner":
                owner._step_runner = owner._step_runner.__wrapped__
            else:
                del owner.__dict__[attribute]  # the class's method shows through again

    def _timed(self, phase: str, call: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            self._sync()
            self._children.append(0.0)
            started = time.perf_counter()
            try:
                return call(*args, **kwargs)
            finally:
                self._sync()
                elapsed = time.perf_counter() - started
                self.seconds[phase] += elapsed - self._children.pop()
                if self._children:
                    self._children[-1] += elapsed

        timed.__wrapped__ = call  # type: ignore[attr-defined]
        return timed

    def summary(self, wall: float) -> str:
        """One line: each phase's share of `wall` (the run's seconds) and its milliseconds per decoding
        step, largest first, and what is left."""
        parts = [f"{phase} {100 * seconds / wall:.0f}% ({1000 * seconds / max(self.steps, 1):.2f} ms a step)"
                 for phase, seconds in sorted(self.seconds.items(), key=lambda item: -item[1])]
        idle = max(0.0, wall - sum(self.seconds.values()))
        return ", ".join([*parts, f"outside them {100 * idle / wall:.0f}%"])
