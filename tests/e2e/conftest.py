"""Real servers for end-to-end tests: ``adapterlab serve`` in a subprocess on a free port on 127.0.0.1.

The served runs are tiny adapters trained in-process (seconds), so the tests exercise the real CLI, HTTP stack,
batching engine and PEFT adapters without the cost of the embedded model.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.e2e


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    log: Path

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=120, **kwargs)

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def run_server(runs: list[str], *options: str, log_dir: Path, wait: bool = True, env: dict | None = None):
    port = free_port()
    log = log_dir / f"server-{port}.log"
    cmd = [sys.executable, "-m", "adapterlab.cli", "serve", *runs, "--port", str(port), "--precision", "fp32", *options]
    with log.open("w") as handle:
        proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    server = Server(f"http://127.0.0.1:{port}", proc, log)
    try:
        if wait:
            wait_ready(server)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def wait_ready(server: Server, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"server exited with {server.proc.returncode}:\n{server.output()}")
        try:
            if httpx.get(server.url + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"server not ready after {timeout}s:\n{server.output()}")


@pytest.fixture(scope="session")
def adapter_root(tmp_path_factory, trained_run, persona_run) -> Path:
    """An allow-listed root for run-time adapter loading, holding a copy of the persona run."""
    import shutil

    root = tmp_path_factory.mktemp("adapter-root")
    shutil.copytree(persona_run / "adapter", root / "persona-copy" / "adapter")
    (root.parent / "outside").mkdir(exist_ok=True)
    shutil.copytree(trained_run / "adapter", root.parent / "outside" / "adapter", dirs_exist_ok=True)
    return root


@pytest.fixture(scope="session")
def server(tmp_path_factory, trained_run, persona_run, trained_classifier, adapter_root) -> Server:
    """The shared server: base + two chat adapters + a classifier, run-time loading under adapter_root."""
    runs = [f"support={trained_run}", f"persona={persona_run}", f"reviews={trained_classifier}"]
    logs = tmp_path_factory.mktemp("server-logs")
    with run_server(runs, "--adapter-root", str(adapter_root), "--max-tokens", "32", log_dir=logs) as srv:
        yield srv


@pytest.fixture
def start_server(tmp_path, trained_run):
    """Start an extra server with its own options (API key, tiny queue, ...) for one test."""

    def start(*options: str, runs: list[str] | None = None, **kwargs):
        return run_server(runs or [f"support={trained_run}"], *options, log_dir=tmp_path, **kwargs)

    return start
