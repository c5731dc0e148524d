"""The run directory: one place a user opens after a run, and the names of everything in it.

```
runs/<name>/
  recipe.resolved.yaml  env.json  data_report.json  summary.json  metrics.jsonl  loss.png
  data/        train|val|test.jsonl (readable), tokenized/ (what the trainer reads), splits.json, meta.json
               (fingerprint; written last: data/ is complete when it is there), label_map.json (classify)
  adapter/     PEFT safetensors + tokenizer + chat template + adapterlab.json (AdapterInfo)
  checkpoints/ checkpoint-N/ (complete ones carry adapterlab-complete.json)
  eval/        filled by `adapterlab eval`: predictions.jsonl, report.json|md|html and its pictures
  export/      filled by `adapterlab export`: merged/, gguf/, onnx/, each with parity.json and a README
```

Every path of a run is named here (no ``run.root / "..."`` joins elsewhere), and ``adapterlab.json`` is written
and read through :class:`AdapterInfo` only.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from adapterlab.config import ModelConfig, RecipeBase
from adapterlab.errors import ModelError
from adapterlab.version import __version__

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class RunDir:
    root: Path
    # While prepare writes: the staging folder that becomes data/ once complete (see staged_data).
    staging: Path | None = None

    @classmethod
    def for_recipe(cls, recipe: RecipeBase) -> RunDir:
        return cls(recipe.run_dir)

    # -- what prepare writes
    @property
    def data(self) -> Path:
        return self.staging or self.root / "data"

    @property
    def tokenized(self) -> Path:
        return self.data / "tokenized"

    def split_file(self, split: str) -> Path:
        """The readable rows of one split (``data/train.jsonl``)."""
        return self.data / f"{split}.jsonl"

    @property
    def splits_file(self) -> Path:
        return self.data / "splits.json"

    @property
    def data_meta(self) -> Path:
        return self.data / "meta.json"

    @property
    def label_map(self) -> Path:
        return self.data / "label_map.json"

    @property
    def data_report(self) -> Path:
        return self.root / "data_report.json"

    @property
    def recipe_file(self) -> Path:
        return self.root / "recipe.resolved.yaml"

    # -- what train writes
    @property
    def env(self) -> Path:
        return self.root / "env.json"

    @property
    def adapter(self) -> Path:
        return self.root / "adapter"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def loss_plot(self) -> Path:
        return self.root / "loss.png"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def mlruns(self) -> Path:
        return self.root / "mlruns"

    # -- what eval writes
    @property
    def eval(self) -> Path:
        return self.root / "eval"

    def export_dir(self, fmt: str) -> Path:
        """What ``adapterlab export`` writes for one format (``export/merged``, ``export/gguf`` ...)."""
        return self.root / "export" / fmt

    def eval_file(self, name: str) -> Path:
        """A file of the evaluation (``predictions.jsonl``, ``report.html``, ``comparison.png`` ...)."""
        return self.eval / name

    @classmethod
    def of_checkpoint(cls, checkpoint: Path) -> RunDir:
        return cls(checkpoint.parent.parent)

    def save_recipe(self, recipe: RecipeBase) -> None:
        write_text(self.recipe_file, recipe.to_yaml())

    def training_outputs(self) -> tuple[list[Path], list[Path]]:
        """(directories, files) that a fresh training replaces."""
        return [self.checkpoints, self.adapter, self.tensorboard, self.mlruns], [
            self.metrics,
            self.summary,
            self.loss_plot,
        ]

    def remove_stale_staging(self) -> None:
        """Staging folders left by a prepare that died (their data never replaced data/)."""
        for stale in [*self.root.glob(".data-staging-*"), *self.root.glob(".data-old-*")]:
            shutil.rmtree(stale, ignore_errors=True)

    @contextmanager
    def staged_data(self):
        """A staging directory for prepared data that replaces ``data/`` only once it is complete.

        A crash while preparing leaves the previous ``data/`` (or none) and a stale staging directory, which the
        next prepare removes; a reader never sees half of the new data next to the old fingerprint.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        self.remove_stale_staging()
        staging = Path(tempfile.mkdtemp(prefix=".data-staging-", dir=self.root))
        try:
            yield RunDir(self.root, staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        final = self.root / "data"
        old = self.root / f".data-old-{staging.name.rsplit('-', 1)[-1]}"
        if final.exists():
            final.rename(old)
        staging.rename(final)
        shutil.rmtree(old, ignore_errors=True)


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


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------- adapters

ADAPTER_INFO = "adapterlab.json"
# Version of the adapterlab.json layout. 1: common keys + the task's own keys under "task_info". Files written
# before the field existed (adapterlab 0.1.0 development) had the task's keys at the top level; they still read.
ADAPTER_FORMAT = 1


class BaseModelRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    spec: str  # as the recipe named it: 'default', a directory or a hub id
    resolved: str  # what was loaded at training time
    weights: str | None = None  # models.weights_fingerprint of the base at training time (export checks it)


class AdapterInfo(BaseModel):
    """What travels with an adapter (``adapter/adapterlab.json``): what it is and how to rebuild its inputs."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = ADAPTER_FORMAT
    adapterlab_version: str = __version__
    task: str
    base_model: BaseModelRef
    model: ModelConfig = Field(default_factory=ModelConfig)
    precision: str
    data_fingerprint: str
    task_info: dict[str, Any] = Field(default_factory=dict, description="the task's own keys")
    path: Path = Field(Path(), exclude=True, description="the adapter directory it was read from")

    def save(self, adapter_dir: Path) -> None:
        write_json(adapter_dir / ADAPTER_INFO, self.model_dump(mode="json"))

    @classmethod
    def read(cls, run_or_adapter: str | Path) -> AdapterInfo:
        """The info of a run directory's adapter or of an adapter directory; a clear error for anything else."""
        adapter_dir = locate_adapter(run_or_adapter)
        try:
            raw = read_json(adapter_dir / ADAPTER_INFO)
        except (ValueError, OSError) as exc:
            detail = " ".join(str(exc).split())[:200]
            raise ModelError(f"{adapter_dir / ADAPTER_INFO}: not a readable adapterlab.json ({detail})") from None
        if not isinstance(raw, dict):
            raise ModelError(f"{adapter_dir / ADAPTER_INFO}: not an adapterlab.json (a JSON object is expected)")
        version = raw.get("format_version")
        if version is None:
            raw = _from_unversioned(raw)
        elif not isinstance(version, int) or version > ADAPTER_FORMAT:
            raise ModelError(
                f"{adapter_dir / ADAPTER_INFO}: format_version {version!r} was written by a newer adapterlab "
                f"(this one reads up to {ADAPTER_FORMAT}); upgrade adapterlab to use this adapter"
            )
        try:
            return cls.model_validate({**raw, "path": adapter_dir})
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ModelError(f"{adapter_dir / ADAPTER_INFO}: {where}: {first['msg']}") from None


_COMMON = set(AdapterInfo.model_fields) - {"path", "task_info"}


def _from_unversioned(raw: dict[str, Any]) -> dict[str, Any]:
    """The first layout: the task's keys at the top level."""
    return {**{k: v for k, v in raw.items() if k in _COMMON}, "format_version": ADAPTER_FORMAT,
            "task_info": {k: v for k, v in raw.items() if k not in _COMMON}}  # fmt: skip


def locate_adapter(run_or_adapter: str | Path) -> Path:
    """The adapter directory of a run directory (``runs/x`` -> ``runs/x/adapter``) or an adapter directory."""
    path = Path(run_or_adapter)
    adapter_dir = path / "adapter" if (path / "adapter").is_dir() else path
    if not (adapter_dir / ADAPTER_INFO).is_file():
        raise ModelError(
            f"{path}: no trained adapter here (expected {adapter_dir / ADAPTER_INFO}); run `adapterlab train` first"
        )
    return adapter_dir
