"""Keeps one job runner process alive beside gunicorn's workers (started by gunicorn's master)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time

from voiceforge import metrics

log = logging.getLogger(__name__)

# The same runner as `flask jobs worker`, in a process of its own: training needs memory and CPU
# that must not compete inside a web worker, and a crash there must not take requests down.
RUNNER_COMMAND = (sys.executable, "-m", "flask", "--app", "voiceforge", "jobs", "worker")


class RunnerSupervisor:
    """Start the runner, restart it whenever it exits (kill -9, out of memory), stop it on shutdown.

    A runner that ran for `steady_seconds` is restarted after `restart_delay`. One that exits sooner (a
    setting it refuses, an unreachable database) waits twice as long as the one before it, up to
    `max_restart_delay`: each start imports torch again, seconds of CPU taken from the web workers.
    """

    def __init__(self, command: tuple[str, ...] | None = None, restart_delay: float = 1.0,
                 max_restart_delay: float = 60.0, steady_seconds: float = 60.0) -> None:
        # --parent-pid: a master killed outright (kill -9 of it alone) runs no on_exit hook; the runner
        # then stops by itself instead of claiming jobs for ever beside the next start's runner.
        self.command = command or (*RUNNER_COMMAND, "--parent-pid", str(os.getpid()))
        self.restart_delay = restart_delay
        self.max_restart_delay = max_restart_delay
        self.steady_seconds = steady_seconds
        self.process: subprocess.Popen | None = None
        self.restarts = 0
        self.delays: list[float] = []  # the wait before each restart so far
        self._started = 0.0
        self._stopping = threading.Event()
        self._watchdog = threading.Thread(target=self._watch, name="voiceforge-runner-watchdog", daemon=True)

    def start(self) -> None:
        self._spawn()
        self._watchdog.start()

    def _spawn(self) -> None:
        self.process = subprocess.Popen(self.command, env=os.environ.copy())
        self._started = time.monotonic()
        log.info("job runner process %d started", self.process.pid)

    def _watch(self) -> None:
        delay, exited_soon = self.restart_delay, False
        while not self._stopping.is_set():
            assert self.process is not None
            code = self.process.wait()
            lived = time.monotonic() - self._started
            metrics.mark_process_dead(self.process.pid)  # its live gauges (GPU memory) no longer count
            if lived >= self.steady_seconds:
                delay = self.restart_delay
            elif exited_soon:  # the runner before it exited soon after starting too
                delay = min(delay * 2, self.max_restart_delay)
            exited_soon = lived < self.steady_seconds
            log.warning("job runner process %d exited with %s after %.0f s; starting another in %.0f s (its "
                        "jobs resume from their checkpoints once their leases expire)",
                        self.process.pid, code, lived, delay)
            if self._stopping.wait(delay):
                return
            self.restarts += 1
            self.delays.append(delay)
            self._spawn()

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM: running jobs checkpoint and give their leases back; SIGKILL after `timeout`."""
        self._stopping.set()
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("job runner %d did not stop in %.0f s; killing it", self.process.pid, timeout)
            self.process.kill()
            self.process.wait()
