"""Keeps one job runner process alive beside gunicorn's workers (started by gunicorn's master)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading

from voiceforge import metrics

log = logging.getLogger(__name__)

# The same runner as `flask jobs worker`, in a process of its own: training needs memory and CPU
# that must not compete inside a web worker, and a crash there must not take requests down.
RUNNER_COMMAND = (sys.executable, "-m", "flask", "--app", "voiceforge", "jobs", "worker")


class RunnerSupervisor:
    """Start the runner, restart it whenever it exits (kill -9, out of memory), stop it on shutdown."""

    def __init__(self, command: tuple[str, ...] | None = None, restart_delay: float = 1.0) -> None:
        # --parent-pid: a master killed outright (kill -9 of it alone) runs no on_exit hook; the runner
        # then stops by itself instead of claiming jobs for ever beside the next start's runner.
        self.command = command or (*RUNNER_COMMAND, "--parent-pid", str(os.getpid()))
        self.restart_delay = restart_delay
        self.process: subprocess.Popen | None = None
        self.restarts = 0
        self._stopping = threading.Event()
        self._watchdog = threading.Thread(target=self._watch, name="voiceforge-runner-watchdog", daemon=True)

    def start(self) -> None:
        self._spawn()
        self._watchdog.start()

    def _spawn(self) -> None:
        self.process = subprocess.Popen(self.command, env=os.environ.copy())
        log.info("job runner process %d started", self.process.pid)

    def _watch(self) -> None:
        while not self._stopping.is_set():
            assert self.process is not None
            code = self.process.wait()
            metrics.mark_process_dead(self.process.pid)  # its live gauges (GPU memory) no longer count
            if self._stopping.wait(self.restart_delay):
                return
            self.restarts += 1
            log.warning("job runner process %d exited with %s; starting another (its jobs resume from "
                        "their checkpoints once their leases expire)", self.process.pid, code)
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
