"""Process memory settings for CPU training: huge pages (torch's and glibc's), freed blocks kept, CLI restart."""

import os
import platform
import subprocess
import sys

import pytest

from adapterlab import memory

THP_MODE = memory._thp_mode()
needs_thp = pytest.mark.skipif(THP_MODE in (None, "never"), reason="no transparent huge pages on this machine")
needs_glibc = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc on Linux only"
)
# this process imported adapterlab, which set THP_MEM_ALLOC_ENABLE: child processes start without it
INHERITED = {key: value for key, value in os.environ.items() if key not in ("THP_MEM_ALLOC_ENABLE", "GLIBC_TUNABLES")}


def run_python(code: str, *, errors: bool = False, **env: str) -> str:
    """What ``python -c code`` prints in a fresh process (``errors``: standard error after standard output)."""
    command = [sys.executable, "-c", code]
    done = subprocess.run(command, capture_output=True, text=True, check=False, env={**INHERITED, **env})
    return done.stdout + done.stderr if errors else done.stdout


HUGE_KB = "print(int(open('/proc/self/smaps_rollup').read().split('AnonHugePages:')[1].split()[0]))\n"


@pytest.fixture
def linux_with_thp(monkeypatch):
    monkeypatch.setattr(memory, "_glibc_linux", lambda: True)
    monkeypatch.setattr(memory, "_thp_mode", lambda: "madvise")


@pytest.mark.parametrize(
    ("argv", "restarts"),
    [
        (["train", "recipe.yaml"], True),
        (["--debug", "run", "recipe.yaml", "--overwrite"], True),
        (["serve", "runs/a"], False),
        (["predict", "runs/a", "in.csv"], False),
        (["--help"], False),
        ([], False),
    ],
)
def test_only_training_commands_restart_with_huge_pages(linux_with_thp, argv, restarts):
    env = memory.huge_pages_exec_env(argv, {"PATH": "/bin"})
    assert (env is not None) == restarts
    if restarts:
        assert env == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}


def test_huge_pages_restart_keeps_user_tunables_and_respects_opt_outs(linux_with_thp, monkeypatch):
    argv = ["train", "recipe.yaml"]
    env = memory.huge_pages_exec_env(argv, {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert memory.huge_pages_exec_env(argv, {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) is None  # user's choice
    assert memory.huge_pages_exec_env(argv, {"GLIBC_TUNABLES": env["GLIBC_TUNABLES"]}) is None  # restarted once
    assert memory.huge_pages_exec_env(argv, {"THP_MEM_ALLOC_ENABLE": "0"}) is None
    monkeypatch.setattr(memory, "_thp_mode", lambda: "never")
    assert memory.huge_pages_exec_env(argv, {}) is None
    monkeypatch.setattr(memory, "_thp_mode", lambda: "madvise")
    monkeypatch.setattr(memory, "_glibc_linux", lambda: False)
    assert memory.huge_pages_exec_env(argv, {}) is None


@needs_glibc
@needs_thp
def test_the_cli_restarts_a_training_command_once_with_glibc_huge_pages(tmp_path):
    code = (
        "import os, sys\n"
        "print('tunables', os.environ.get('GLIBC_TUNABLES'), flush=True)\n"
        f"sys.argv = ['adapterlab', 'train', {str(tmp_path / 'missing.yaml')!r}]\n"
        "from adapterlab.cli import main\n"
        "main()\n"
    )
    out = run_python(code, errors=True)
    assert out.splitlines()[:2] == ["tunables None", "tunables glibc.malloc.hugetlb=1"]
    assert "missing.yaml: recipe file not found" in out  # the command went on in the restarted process
    assert out.count("tunables") == 2  # restarted once


@needs_glibc
@needs_thp
def test_glibc_tunable_puts_the_heap_on_huge_pages():
    """The tunable the CLI restarts with: plain malloc'ed memory (no torch) lands on 2 MB pages."""
    code = "block = bytearray(64 * 2**20)\n" + HUGE_KB
    tunables = memory.huge_pages_exec_env(["train"], INHERITED)["GLIBC_TUNABLES"]
    assert int(run_python(code, GLIBC_TUNABLES=tunables).split()[-1]) >= 32 * 1024
    if THP_MODE == "madvise":  # the control: without the tunable glibc does not ask for huge pages
        assert int(run_python(code).split()[-1]) < 4 * 1024


@needs_thp
def test_importing_adapterlab_gives_large_cpu_tensors_huge_pages():
    """torch's CPU tensors of 2 MB and more get transparent huge pages once adapterlab is imported (Linux)."""
    code = (
        "import torch\n"  # torch first, as in a notebook: what counts is that no tensor was allocated yet
        "import adapterlab\n"
        "from adapterlab.memory import large_tensors_on_huge_pages\n"
        "x = torch.ones(64 * 2**20 // 4)\n"
        "print(large_tensors_on_huge_pages())\n" + HUGE_KB
    )
    probed, kilobytes = run_python(code).split()[-2:]
    assert probed == "True" and int(kilobytes) >= 32 * 1024  # most of the 64 MB tensor sits on 2 MB pages
    if THP_MODE == "madvise":  # the opt-out is honoured, and the probe sees it (with "always" the kernel decides)
        probed, kilobytes = run_python(code, THP_MEM_ALLOC_ENABLE="0").split()[-2:]
        assert probed == "False" and int(kilobytes) < 4 * 1024


@needs_glibc
def test_freed_memory_is_reused_without_page_faults():
    """After keep_freed_memory(), repeated steps with large tensors stop faulting their pages in again."""
    code = (
        "import resource, sys, torch\n"
        "from adapterlab.memory import keep_freed_memory\n"
        "if sys.argv[-1] == 'keep':\n"
        "    assert keep_freed_memory()\n"
        "def faults():\n"
        "    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "def step():\n"  # a training step's large temporaries: 184 MB in four tensors, all freed at the end
        "    tensors = [torch.ones(n * 2**20) for n in (16, 12, 10, 8)]\n"
        "    return sum(float(t[0]) for t in tensors)\n"
        "for _ in range(10):\n"  # the heap settles into a layout that fits every block within a few steps
        "    step()\n"
        "before = faults()\n"
        "step()\n"
        "step()\n"
        "print(faults() - before)\n"
    )
    counts = {}
    for mode in ("keep", "default"):  # 4 KiB pages, as where huge pages are off
        command = [sys.executable, "-c", code, mode]
        env = {**INHERITED, "THP_MEM_ALLOC_ENABLE": "0"}
        done = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
        counts[mode] = int(done.stdout.split()[-1])
    pages = 2 * 184 * 2**20 // 4096
    assert counts["default"] > pages * 0.9  # glibc unmapped the blocks: every page faults in again
    # kept: at most a block or two that no longer fits its old place (aligned allocations shift by 64 bytes)
    assert counts["keep"] < pages // 4
