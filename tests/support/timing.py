"""Timing for benchmarks: paths measured side by side, round by round."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved(paths: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds per path; the paths take turns in every round, so load affects all alike."""
    for function in paths.values():
        function()  # warm-up
    samples: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(repeats):
        for name, function in paths.items():
            started = time.perf_counter()
            function()
            samples[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in samples.items()}
