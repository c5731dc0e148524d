"""adapterlab: turn a table of examples into a task-specialised LoRA/QLoRA adapter.

Every CLI verb is a plain function here: ``adapterlab.prepare(recipe)``, ``adapterlab.train(recipe)``,
``adapterlab.run(recipe)``, ``adapterlab.evaluate(run_dir)``, ``adapterlab.predict(run_dir, file)``. Heavy
libraries (torch, transformers) are imported only when a verb runs.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

from adapterlab.version import __version__

if sys.platform == "linux":
    # Transparent huge pages for torch's CPU tensors of 2 MB and more; torch reads this at its first CPU
    # allocation. See adapterlab.memory (THP_MEM_ALLOC_ENABLE=0 in the environment opts out).
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

_VERBS = {
    "load_recipe": "adapterlab.registry",
    "register_task": "adapterlab.registry",
    "prepare": "adapterlab.stages.prepare",
    "train": "adapterlab.stages.train",
    "evaluate": "adapterlab.stages.evaluate",
    "run": "adapterlab.stages.pipeline",
    "validate": "adapterlab.stages.pipeline",
    "predict": "adapterlab.predict",
    "cross_validate": "adapterlab.stages.crossval",
}

if TYPE_CHECKING:
    from adapterlab.predict import predict
    from adapterlab.registry import load_recipe, register_task
    from adapterlab.stages.crossval import cross_validate
    from adapterlab.stages.evaluate import evaluate
    from adapterlab.stages.pipeline import run, validate
    from adapterlab.stages.prepare import prepare
    from adapterlab.stages.train import train

__all__ = [
    "__version__",
    "cross_validate",
    "evaluate",
    "load_recipe",
    "predict",
    "prepare",
    "register_task",
    "run",
    "train",
    "validate",
]


def __getattr__(name: str) -> Any:
    if name in _VERBS:
        import importlib

        return getattr(importlib.import_module(_VERBS[name]), name)
    raise AttributeError(f"module 'adapterlab' has no attribute {name!r}")
