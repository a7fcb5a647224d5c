"""on_passing_thread: work off the calling thread, with its result, its error and the caller's context."""

from __future__ import annotations

import contextvars
import threading

import pytest

from voiceforge.decoding.threads import on_passing_thread

REQUEST = contextvars.ContextVar("request", default=None)


def test_the_work_runs_on_another_thread_that_ends_and_returns_its_result() -> None:
    caller = threading.current_thread()
    seen = {}

    def work(a: int, *, b: int) -> int:
        seen["thread"] = threading.current_thread()
        return a + b

    assert on_passing_thread(work, 2, b=3) == 5
    assert seen["thread"] is not caller and not seen["thread"].is_alive()


def test_its_error_is_raised_in_the_caller_and_the_callers_context_is_seen() -> None:
    REQUEST.set("req-1")  # e.g. the request id the logs carry

    def work() -> None:
        raise ValueError(f"failed in {REQUEST.get()}")

    with pytest.raises(ValueError, match="failed in req-1"):
        on_passing_thread(work)
