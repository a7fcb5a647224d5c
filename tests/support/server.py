"""A real gunicorn on loopback for end-to-end tests and benchmarks: start, stop, raw requests."""

from __future__ import annotations

import json
import os
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path

    def post(self, path: str, body: dict, **kwargs: object) -> requests.Response:
        return requests.post(self.url + path, json=body, timeout=120, **kwargs)


def control_socket_workers(socket: Path) -> list[int]:
    """The worker pids that `gunicornc` reports through one control socket."""
    answer = subprocess.run([str(Path(sys.executable).parent / "gunicornc"), "-s", str(socket), "-c",
                             "show workers", "-j"], capture_output=True, text=True, timeout=30, check=True)
    return [worker["pid"] for worker in json.loads(answer.stdout)["workers"]]


def control_socket_config(socket: Path) -> str:
    """What `gunicornc … show config` says through one control socket."""
    answer = subprocess.run([str(Path(sys.executable).parent / "gunicornc"), "-s", str(socket), "-c",
                             "show config"], capture_output=True, text=True, timeout=30, check=True)
    return answer.stdout


def parent_pid(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))


def worker_pid(master_pid: int) -> int:
    """gunicorn's web worker (the master's other child is the job runner, `flask … jobs worker`)."""
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    workers = [pid for pid in children if b"gunicorn" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(workers) == 1, children  # start_server runs one worker
    return int(workers[0])


def voluntary_context_switches(pid: int) -> int:
    """How often the threads of a process have gone to sleep in the kernel so far (all its threads)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
        except OSError:
            continue  # the thread ended while we looked
        total += int(next(line.split()[1] for line in status.splitlines()
                          if line.startswith("voluntary_ctxt_switches:")))
    return total


def runner_pids(master: int) -> list[int]:
    """The job runner processes (`flask … jobs worker`) that a gunicorn master started."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
            parent = parent_pid(int(entry.name))
        except (OSError, ValueError, StopIteration):
            continue  # it exited while we looked
        if parent == master and b"worker" in command and b"jobs" in command:
            pids.append(int(entry.name))
    return pids


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(tmp: Path, checkpoint_dir: Path, port: int | None = None, args: tuple[str, ...] = (),
                 **env: str) -> Server:
    """Migrate a SQLite database in `tmp` and start gunicorn (one worker) on it; wait until healthy.

    `args` go to gunicorn's command line (`-b` there overrides VOICEFORGE_BIND, as it does for users).
    """
    port = port or free_port()
    environment = {
        **os.environ,
        "VOICEFORGE_DATABASE_URL": f"sqlite:///{tmp / 'e2e.db'}",
        "VOICEFORGE_DATA_DIR": str(tmp / "voices"),
        "VOICEFORGE_MODEL_DIR": str(checkpoint_dir),
        "VOICEFORGE_INSTANCE_PATH": str(tmp),
        "VOICEFORGE_BIND": f"127.0.0.1:{port}",
        "VOICEFORGE_WORKERS": "1",
        **env,
    }
    bin_dir = Path(sys.executable).parent
    subprocess.run([str(bin_dir / "flask"), "--app", "voiceforge", "db", "upgrade"], cwd=ROOT,
                   env=environment, check=True, capture_output=True)
    log = tmp / f"gunicorn-{port}.log"
    # Its own process group, so a test can kill -9 the master and its workers together.
    process = subprocess.Popen([str(bin_dir / "gunicorn"), "-c", "gunicorn.conf.py", *args, "wsgi:app"],
                               cwd=ROOT, env=environment, stdout=log.open("ab"), stderr=subprocess.STDOUT,
                               start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited: {log.read_text()}")
        try:
            if requests.get(url + "/healthz", timeout=5).status_code == 200:
                return Server(url, process, log)
        except (requests.ConnectionError, requests.Timeout):
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"gunicorn did not start: {log.read_text()}")


def stop_server(server: Server) -> None:
    """SIGTERM, then SIGKILL after 30 s."""
    server.process.terminate()
    try:
        server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()


def raw_request(server: Server, head: str, body_chunks: list[bytes]) -> tuple[int, bytes]:
    """Send bytes exactly as given (lying headers included) and read the status line and body."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head.encode())
        try:
            for chunk in body_chunks:
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer and close before reading everything: that is the point
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    status = int(received.split(b" ", 2)[1])
    return status, received.split(b"\r\n\r\n", 1)[1]



class _Silent(socketserver.BaseRequestHandler):
    """Read whatever the client sends and never answer, until the client gives up or the test ends."""

    server: NeverAnswering

    def handle(self) -> None:
        self.request.settimeout(0.2)
        while not self.server.ending.is_set():
            try:
                if not self.request.recv(65536):
                    return  # the client closed the connection (a fetch() aborted)
            except TimeoutError:
                continue
            except OSError:
                return


class NeverAnswering(socketserver.ThreadingTCPServer):
    """A hung server on 127.0.0.1:`port` (a stuck worker, a dead proxy): it accepts and never replies."""

    allow_reuse_address = True
    daemon_threads = True

    def __init__(self, port: int) -> None:
        super().__init__(("127.0.0.1", port), _Silent)
        self.ending = threading.Event()


@contextmanager
def never_answering(port: int) -> Iterator[None]:
    """Run a NeverAnswering server on `port` for the block's duration.

    Put it on the port of a stopped test server, and a page loaded from there talks to it from its own
    origin, as it would to a server that hangs.
    """
    with NeverAnswering(port) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield
        finally:
            server.ending.set()
            server.shutdown()
            thread.join()
