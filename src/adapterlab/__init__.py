"""adapterlab: turn a table of examples into a task-specialised LoRA/QLoRA adapter.

Every CLI verb is a plain function here: ``adapterlab.prepare(recipe)``, ``adapterlab.train(recipe)``,
``adapterlab.run(recipe)``,
``adapterlab.evaluate(run_dir)``. Heavy libraries (torch, transformers) are imported only when a verb runs.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if sys.platform == "linux":
    # Transparent huge pages for torch's CPU tensors of 2 MB and more; torch reads this at its first CPU
    # allocation. See adapterlab.memory (THP_MEM_ALLOC_ENABLE=0 in the environment opts out).
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

_VERBS = {
    "load_recipe": "adapterlab.config",
    "prepare": "adapterlab.data.prepare",
    "train": "adapterlab.train.sft",
    "run": "adapterlab.pipeline",
    "validate": "adapterlab.pipeline",
    "evaluate": "adapterlab.eval.evaluate",
}

if TYPE_CHECKING:
    from adapterlab.config import load_recipe
    from adapterlab.data.prepare import prepare
    from adapterlab.eval.evaluate import evaluate
    from adapterlab.pipeline import run, validate
    from adapterlab.train.sft import train

__all__ = ["__version__", "evaluate", "load_recipe", "prepare", "run", "train", "validate"]


def __getattr__(name: str) -> Any:
    if name in _VERBS:
        import importlib

        return getattr(importlib.import_module(_VERBS[name]), name)
    raise AttributeError(f"module 'adapterlab' has no attribute {name!r}")
