"""Complete-or-ignored checkpoints.

HF Trainer's ``get_last_checkpoint`` returns the highest-numbered ``checkpoint-N`` directory even if the process
died while writing it. We write ``adapterlab-complete.json`` only after the Trainer's ``on_save`` (when every file
is on disk) and resume only from checkpoints that carry it and have every file a resume needs.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

MARKER = "adapterlab-complete.json"
REQUIRED = ("trainer_state.json", "scheduler.pt")
_NAME = re.compile(r"^checkpoint-(\d+)$")


def mark_complete(checkpoint: Path, stamp: dict[str, Any]) -> None:
    if not checkpoint.is_dir():
        return
    tmp = checkpoint / (MARKER + ".tmp")
    tmp.write_text(json.dumps(stamp, indent=2))
    tmp.replace(checkpoint / MARKER)


def step_of(checkpoint: Path) -> int:
    match = _NAME.match(checkpoint.name)
    return int(match.group(1)) if match else -1


def is_complete(checkpoint: Path) -> bool:
    """Marked, with every file a resume reads: the weights and optimizer state whole (one process or DDP), as
    FSDP's sharded folders (``pytorch_model_fsdp_0``, ``optimizer_0``: each complete once its ``.metadata`` is), or
    as DeepSpeed's (``latest`` naming its ``global_step<N>`` folder)."""
    whole = any(checkpoint.glob("*.safetensors")) and (checkpoint / "optimizer.pt").is_file()
    fsdp = all(any(checkpoint.glob(f"{prefix}_*/.metadata")) for prefix in ("pytorch_model_fsdp", "optimizer"))
    latest = checkpoint / "latest"
    deepspeed = latest.is_file() and (checkpoint / latest.read_text().strip()).is_dir()
    return (
        (checkpoint / MARKER).is_file()
        and (whole or fsdp or deepspeed)
        and all((checkpoint / f).is_file() for f in REQUIRED)
    )


def all_checkpoints(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.is_dir() and _NAME.match(p.name)), key=step_of)


def latest_complete(folder: Path) -> Path | None:
    complete = [p for p in all_checkpoints(folder) if is_complete(p)]
    return complete[-1] if complete else None


def read_stamp(checkpoint: Path) -> dict[str, Any]:
    return json.loads((checkpoint / MARKER).read_text())


def remove_incomplete(folder: Path) -> list[Path]:
    """Delete half-written checkpoints (a crash mid-save) so the Trainer's rotation never counts them."""
    removed = [p for p in all_checkpoints(folder) if not is_complete(p)]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed
