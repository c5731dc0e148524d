"""The run directory: one place a user opens after a run, and the names of everything in it.

```
runs/<name>/
  recipe.resolved.yaml  env.json  data_report.json  summary.json  metrics.jsonl  loss.png
  data/        train|val|test.jsonl (readable), tokenized/ (what the trainer reads), splits.json, meta.json
  adapter/     PEFT safetensors + tokenizer + chat template + adapterlab.json
  checkpoints/ checkpoint-N/ (complete ones carry adapterlab-complete.json)
  eval/        filled by `adapterlab eval`
```
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from adapterlab.config import Recipe


@dataclass(frozen=True)
class RunDir:
    root: Path

    @classmethod
    def for_recipe(cls, recipe: Recipe) -> RunDir:
        return cls(recipe.run_dir)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def tokenized(self) -> Path:
        return self.data / "tokenized"

    @property
    def adapter(self) -> Path:
        return self.root / "adapter"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def loss_plot(self) -> Path:
        return self.root / "loss.png"

    @property
    def data_report(self) -> Path:
        return self.root / "data_report.json"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    def save_recipe(self, recipe: Recipe) -> None:
        write_text(self.root / "recipe.resolved.yaml", recipe.to_yaml())


def write_text(path: Path, text: str) -> None:
    """Write atomically: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


# ----------------------------------------------------------------------------------------------- env.json

LIBRARIES = (
    "adapterlab",
    "torch",
    "transformers",
    "peft",
    "trl",
    "accelerate",
    "datasets",
    "bitsandbytes",
    "safetensors",
    "tokenizers",
    "gguf",
    "pydantic",
    "numpy",
)


def git_sha(cwd: Path | None = None) -> dict[str, Any] | None:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"sha": sha, "dirty": bool(dirty)}


def environment() -> dict[str, Any]:
    import torch

    from adapterlab.models import cpu_has_bf16

    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    hardware: dict[str, Any] = {
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_bf16": cpu_has_bf16(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        hardware["gpu"] = torch.cuda.get_device_name(0)
        hardware["gpu_bf16"] = torch.cuda.is_bf16_supported()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "libraries": versions,
        "hardware": hardware,
        "git": git_sha(),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
