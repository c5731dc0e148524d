"""Real servers for end-to-end tests: ``adapterlab serve`` in a subprocess on a free port on 127.0.0.1.

The served runs are tiny adapters trained in-process (seconds), so the tests exercise the real CLI, HTTP stack,
batching engine and PEFT adapters without the cost of the embedded model.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from servers import Server, run_server

pytestmark = pytest.mark.e2e


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


# ------------------------------------------------------------------ the probe tier (-m probe)


@dataclass
class Tally:
    """What the probe sent and what came back, printed at the end of the run (and 5xx answers listed)."""

    requests: Counter = field(default_factory=Counter)  # kind of input -> requests sent
    statuses: Counter = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)  # 5xx that no test asked for
    asked_for: int = 0  # 5xx that are the contract: 503 shutting_down for requests cut by a drain

    def record(self, kind: str, status: int, detail: str = "", asked_for: bool = False) -> None:
        self.requests[kind] += 1
        self.statuses[status] += 1
        if status >= 500 and asked_for:
            self.asked_for += 1
        elif status >= 500:
            self.server_errors.append(f"{kind}: {status} {detail[:200]}")

    def send(self, http: httpx.Client, kind: str, method: str, path: str, **kwargs) -> httpx.Response:
        r = http.request(method, path, **kwargs)
        self.record(kind, r.status_code, r.text)
        return r


TALLY = Tally()


@pytest.fixture(scope="session")
def tally() -> Tally:
    return TALLY


def pytest_terminal_summary(terminalreporter) -> None:
    if not TALLY.requests:
        return
    terminalreporter.section("adapterlab serve probe")
    terminalreporter.write_line(f"requests sent: {sum(TALLY.requests.values())} in {len(TALLY.requests)} kinds")
    terminalreporter.write_line("statuses: " + ", ".join(f"{s}: {n}" for s, n in sorted(TALLY.statuses.items())))
    terminalreporter.write_line(
        f"5xx answers to probe input: {len(TALLY.server_errors)} "
        f"(besides {TALLY.asked_for} x 503 shutting_down to requests cut by a drain)"
    )
    for line in TALLY.server_errors[:20]:
        terminalreporter.write_line(f"  {line}")
    for kind, n in sorted(TALLY.requests.items()):
        terminalreporter.write_line(f"  {n:5d}  {kind}")


@pytest.fixture(scope="module")
def probe_root(tmp_path_factory, trained_run) -> Path:
    """An adapter root for the probe: a good adapter, one broken copy per way of breaking it, and one directory
    per way of escaping the root through a symlink."""
    from hostile import ESCAPES, break_copies, make_root

    root = make_root(tmp_path_factory.mktemp("probe-root"), trained_run / "adapter")
    break_copies(root)
    for escape in ESCAPES:
        escape(root, escape.__name__)
    return root


@pytest.fixture(scope="module")
def probe_server(tmp_path_factory, trained_run, trained_classifier, probe_root) -> Server:
    """A server for the probe: a chat adapter, the base and a classifier, run-time loading under probe_root,
    4 running + 4 waiting rows, and replies of 8 tokens unless a request asks for more."""
    runs = [f"support={trained_run}", f"reviews={trained_classifier}"]
    options = ["--adapter-root", str(probe_root), "--max-batch", "4", "--max-queue", "4", "--max-tokens", "8"]
    with run_server(runs, *options, log_dir=tmp_path_factory.mktemp("probe-logs")) as srv:
        yield srv


@pytest.fixture(scope="module")
def two_plus_two(tmp_path_factory, trained_run):
    """--max-batch 2 --max-queue 2, the configuration of the issue's probe."""
    options = ["--max-batch", "2", "--max-queue", "2"]
    with run_server([f"support={trained_run}"], *options, log_dir=tmp_path_factory.mktemp("logs")) as srv:
        yield srv
