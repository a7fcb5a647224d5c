"""Torch work outside the decoder's thread runs on a thread that ends with it, so it cannot slow the decoder.

torch's CPU operators run on OpenMP (GNU libgomp in PyTorch's wheels), which gives each thread that
runs a parallel operator its own team of worker threads, kept for as long as that thread lives. Once a
process holds more of those workers than it has CPUs, libgomp stops spinning between parallel regions
and sleeps in the kernel instead, and the decoder's step, a few hundred short regions, then pays a
sleep and a wake-up for each. A model loaded by a web server's request thread (which lives on) was
enough: on the 2-core CPU this was measured on, about 400 sleeps a step, and decoding 1.2x slower at
full size (bench/openmp.py). A thread that ends takes its team with it, leaving the decoder's the only one.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


def on_passing_thread(work: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """`work(*args, **kwargs)` on a new thread that ends when it returns; its result, or its exception.

    The caller waits for it, so locks the caller holds still cover it; context variables (Flask's
    request context, the request id in logs) are carried over.
    """
    context = contextvars.copy_context()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="voiceforge-torch") as pool:
        return pool.submit(context.run, work, *args, **kwargs).result()
