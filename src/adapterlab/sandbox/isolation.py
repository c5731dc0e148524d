"""What this machine lets the sandbox do, found out once per process by trying it.

Strongest first: ``unshare`` gives each program a network namespace (no interface but a downed loopback), a pid
namespace (the program is its init: when it exits, the kernel kills every process it left, ``setsid`` or not,
and it cannot see or signal anything outside) and a mount namespace (a private ``/tmp``, the homes hidden).
Started as root, the program then drops to a uid of its own (one per worker slot), so the process limit holds
and nothing above can be undone. As another user, ``unshare --user`` creates the namespaces without privileges.
Where neither works, the program runs with the socket constructors replaced and its leftover processes are found
in ``/proc`` and killed; ``isolation`` says which.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

# Started as root, worker slot i of the process with pid p runs as uid SLOT_UID_BASE + 256 p + i (no such user needs to
# exist): one uid per slot, so RLIMIT_NPROC counts one program only and two processes' sandboxes never share a uid.
SLOT_UID_BASE = 2_000_000_000


def slot_uid(slot: int, pid: int | None = None) -> int:
    return SLOT_UID_BASE + 256 * (os.getpid() if pid is None else pid) + slot % 256


HIDDEN_HOMES = ("/root", "/home")


@dataclass(frozen=True)
class Isolation:
    launcher: tuple[str, ...]  # the command that precedes `python -I -c <harness>`
    mounts: bool  # the harness may mount (private /tmp, hidden homes)
    drop_uid: bool  # the harness drops from root to a slot uid
    block_sockets: bool  # no network namespace: the harness replaces the socket constructors
    hide: tuple[str, ...] = ()
    expose: tuple[str, ...] = ()

    @property
    def namespaces(self) -> bool:
        return bool(self.launcher)

    @property
    def phrase(self) -> str:
        if not self.namespaces:
            parts = ["sockets disabled by a prelude (no namespaces here)", "leftover processes killed via /proc"]
        else:
            parts = ["network + pid namespace"]
            if self.mounts:
                parts.append("private /tmp, homes hidden")
        parts.append("own unprivileged uid" if self.drop_uid else "runs as the calling user")
        return ", ".join(parts)


def python_paths() -> tuple[str, ...]:
    """The directories the interpreter reads from (stdlib, site-packages), resolved."""
    paths = {os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, sys.exec_prefix)}
    return tuple(sorted(paths))


def _hidden_and_exposed(root: bool) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if not root:
        return (), ()
    hide = tuple(h for h in HIDDEN_HOMES if os.path.isdir(h) and not os.path.islink(h))
    expose = tuple(p for p in python_paths() if any(p == h or p.startswith(h + "/") for h in hide))
    return hide, expose


def _launcher(root: bool) -> tuple[str, ...] | None:
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    base = (unshare, "--net", "--pid", "--fork", "--kill-child", "--mount-proc")
    for extra in ((),) if root else (("--user", "--map-current-user"), ("--user", "--map-root-user")):
        command = (unshare, *extra, *base[1:])
        try:
            probe = subprocess.run([*command, "true"], capture_output=True, timeout=10, env={})
        except (OSError, subprocess.SubprocessError):
            continue
        if probe.returncode == 0:
            return command
    return None


def candidates() -> list[Isolation]:
    """The configurations to try, strongest first (each is probed by running a program through it)."""
    root = os.geteuid() == 0
    hide, expose = _hidden_and_exposed(root)
    found = []
    launcher = _launcher(root)
    if launcher is not None:
        if root:
            found.append(Isolation(launcher, mounts=True, drop_uid=True, block_sockets=False, hide=hide, expose=expose))
        found.append(Isolation(launcher, mounts=False, drop_uid=False, block_sockets=False))
    # Without namespaces a root program can only drop privileges if it can still read its own interpreter.
    readable = not any(expose)
    found.append(Isolation((), mounts=False, drop_uid=root and readable, block_sockets=True))
    if root and readable:
        found.append(Isolation((), mounts=False, drop_uid=False, block_sockets=True))
    return found
