"""Process-wide memory settings for training on a CPU under Linux: huge pages and freed blocks kept.

A CPU training step allocates and frees gigabytes of activations. With the defaults of torch and glibc, memory
comes in 4 KiB pages, and blocks over 32 MB are unmapped when freed, so every step faults its pages in again; on
a virtual machine each fault costs microseconds of kernel time (~13 us per page on the benchmark machine, over
10 s in a first step), and 4 KiB pages make matmuls and element-wise passes miss the TLB more. Three settings
remove most of it (figures in docs/benchmarks.md):

- ``THP_MEM_ALLOC_ENABLE=1`` (set by ``import adapterlab``): torch asks for transparent huge pages for its CPU
  tensors of 2 MB and more.
- ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``: glibc asks for them for all of its heap, the smaller tensors
  included. glibc reads it at process start only, so the ``adapterlab train`` / ``run`` commands start themselves
  again with it (:func:`reexec_with_huge_pages`); from Python, set it before starting the interpreter.
- :func:`keep_freed_memory` (``train.keep_freed_memory``): freed blocks stay mapped for the next step.

Either huge-page setting is skipped where the kernel has transparent huge pages off, and
``THP_MEM_ALLOC_ENABLE=0`` in the environment opts out of both.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"
THP_MODES = Path("/sys/kernel/mm/transparent_hugepage/enabled")
# The commands that train in the process they start, and gain from huge pages on a CPU
TRAINING_VERBS = ("train", "run")


def _glibc_linux() -> bool:
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def _thp_mode() -> str | None:
    """The kernel's transparent-huge-page mode (always / madvise / never), None where there is none."""
    if not THP_MODES.is_file():
        return None
    text = THP_MODES.read_text()
    return text[text.index("[") + 1 : text.index("]")] if "[" in text else None


def huge_pages_exec_env(argv: Sequence[str], environ: Mapping[str, str]) -> dict[str, str] | None:
    """The environment to start ``adapterlab <argv>`` again with glibc's huge pages, or None to go on as is.

    None unless: the verb trains, the machine is Linux with glibc and transparent huge pages, the user did not
    opt out (``THP_MEM_ALLOC_ENABLE=0``) and did not set the tunable already (which also ends a restarted run).
    """
    verb = next((arg for arg in argv if not arg.startswith("-")), None)
    tunables = environ.get("GLIBC_TUNABLES", "")
    if verb not in TRAINING_VERBS or "glibc.malloc.hugetlb" in tunables:
        return None
    if environ.get("THP_MEM_ALLOC_ENABLE") == "0" or not _glibc_linux() or _thp_mode() in (None, "never"):
        return None
    return {**environ, "GLIBC_TUNABLES": f"{tunables}:{HUGE_PAGES_TUNABLE}" if tunables else HUGE_PAGES_TUNABLE}


def reexec_with_huge_pages() -> None:
    """Replace this process by the same command with glibc's huge pages, when :func:`huge_pages_exec_env` says so.

    Called first thing by the CLI (nothing has been read, written or printed yet). Returns if nothing is to do.
    """
    env = huge_pages_exec_env(sys.argv[1:], os.environ)
    if env is not None:
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def keep_freed_memory() -> bool:
    """On a CPU under glibc, keep freed memory in the process for the next training step instead of unmapping it.

    glibc serves every allocation above 32 MB (the vocabulary logits, attention probabilities, activations of a
    long batch) with a fresh ``mmap`` and returns it on free, so each step page-faults all of them in again: on
    the 2-core benchmark machine that was a third of the step (log-softmax over 49k-vocabulary logits: 750 ms
    -> 22 ms). ``mallopt`` turns this off for the process; the price is that its resident memory stays at its
    peak, as with the tcmalloc / jemalloc setups recommended for PyTorch on CPUs. Returns whether it applied.
    """
    import ctypes

    import torch

    if torch.cuda.is_available() or not _glibc_linux():
        return False
    libc = ctypes.CDLL(None)
    m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))


def large_tensors_on_huge_pages() -> bool | None:
    """Whether torch's large CPU tensors get transparent huge pages in this process (None: no CPU training on
    Linux with THP to speak of).

    ``import adapterlab`` asks torch for them (``THP_MEM_ALLOC_ENABLE``), but torch decides at its first CPU
    allocation: a process that allocated a tensor earlier (importing peft or bitsandbytes does) keeps 4 KiB pages.
    Probed on a 4 MB tensor: its mapping carries the ``hg`` (``MADV_HUGEPAGE``) flag or not.
    """
    import torch

    mode = _thp_mode()
    if torch.cuda.is_available() or mode in (None, "never"):
        return None
    if mode == "always":
        return True
    probe = torch.empty(4 * 2**20, dtype=torch.uint8)
    address, inside = probe.data_ptr(), False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            first = line.split(maxsplit=1)[0] if line.strip() else ""
            if first and not first.endswith(":"):  # a mapping's header: start-end perms offset ...
                start, _, end = first.partition("-")
                inside = int(start, 16) <= address < int(end, 16)
            elif inside and first == "VmFlags:":
                return "hg" in line.split()[1:]
    return False


def tune_cpu_memory(keep_freed: bool) -> None:
    """The process-wide memory settings of CPU training: keep freed blocks (``train.keep_freed_memory``), and a
    hint when the machine offers huge pages that this process's tensors do not get."""
    from adapterlab.console import console

    if keep_freed:
        keep_freed_memory()
    opted_out = os.environ.get("THP_MEM_ALLOC_ENABLE") == "0"
    if not opted_out and large_tensors_on_huge_pages() is False:
        console.print(
            "[dim]hint: large CPU tensors are on 4 KiB pages in this process (torch allocated before adapterlab "
            "was imported); import adapterlab first, or start Python with THP_MEM_ALLOC_ENABLE=1 and "
            f"GLIBC_TUNABLES={HUGE_PAGES_TUNABLE}, for faster CPU training steps[/dim]",
            soft_wrap=True,
        )
