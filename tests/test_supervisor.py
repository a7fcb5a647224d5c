"""The job runner's supervisor: restarts, and backing off from a runner that keeps failing at start."""

from __future__ import annotations

import sys
import time

import pytest

from voiceforge.jobs.supervisor import RunnerSupervisor


@pytest.mark.parametrize(("runner", "steady_seconds", "delays"), [
    # A refused setting: the runner exits at once, every time, so it is restarted less and less often.
    ("raise SystemExit(1)", 30.0, [0.05, 0.1, 0.2, 0.4, 0.4, 0.4]),
    # Killed after running a while (out of memory, kill -9): restarted at once every time.
    ("import time; time.sleep(0.5)", 0.2, [0.05, 0.05, 0.05]),
])
def test_the_runner_is_restarted_after_a_delay_that_grows_only_while_it_exits_soon_after_starting(
        runner: str, steady_seconds: float, delays: list[float]) -> None:
    supervisor = RunnerSupervisor((sys.executable, "-c", runner), restart_delay=0.05, max_restart_delay=0.4,
                                  steady_seconds=steady_seconds)
    supervisor.start()
    try:
        deadline = time.monotonic() + 30
        while supervisor.restarts < len(delays) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        supervisor.stop()
    assert supervisor.delays[:len(delays)] == delays
