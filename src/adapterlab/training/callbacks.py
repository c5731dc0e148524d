"""Trainer callbacks: progress bar, metrics.jsonl, non-finite loss guard, complete-checkpoint markers, tracking."""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import TrainerCallback

from adapterlab.config import RecipeBase
from adapterlab.console import console
from adapterlab.errors import TrainingError
from adapterlab.runs import RunDir
from adapterlab.training.checkpoints import mark_complete
from adapterlab.version import __version__


class MetricsLogger(TrainerCallback):
    """Appends every logged step to ``metrics.jsonl`` (with ``eval_perplexity = exp(eval_loss)``)."""

    def __init__(self, path: Path):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record: dict[str, Any] = {"step": state.global_step, "epoch": state.epoch, "time": round(time.time(), 3)}
        record.update(logs)
        for prefix in ("eval", "base"):
            loss = logs.get(f"{prefix}_loss")
            if loss is not None and math.isfinite(loss):
                record[f"{prefix}_perplexity"] = math.exp(min(loss, 50.0))
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, default=str) + "\n")


class NonFiniteLossGuard(TrainerCallback):
    """HF Trainer filters NaN/inf losses from its logs and carries on; we count them and stop after a few."""

    def __init__(self, max_in_a_row: int):
        self.max_in_a_row = max_in_a_row
        self.in_a_row = 0
        self.total = 0
        self.tripped_at: int | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is None:
            return
        if math.isfinite(loss):
            self.in_a_row = 0
            return
        self.in_a_row += 1
        self.total += 1
        if self.in_a_row >= self.max_in_a_row:
            self.tripped_at = state.global_step
            control.should_training_stop = True


class CheckpointMarker(TrainerCallback):
    """Marks a checkpoint complete once the Trainer has written all of it (``on_save`` runs after the save), on
    every rank: with several processes, rank 0 waits for the others' files (RNG state, progress counts) first."""

    def __init__(self, stamp: dict[str, Any]):
        self.stamp = stamp

    def on_save(self, args, state, control, **kwargs):
        if args.world_size > 1:
            import torch.distributed as dist

            dist.barrier()
        if state.is_world_process_zero:
            mark_complete(Path(args.output_dir) / f"checkpoint-{state.global_step}", self.stamp)


class RichProgress(TrainerCallback):
    """One progress bar with the latest train and validation loss and an ETA."""

    def __init__(self) -> None:
        self.progress: Progress | None = None
        self.task = None
        self.loss = "-"
        self.val = "-"

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  val {task.fields[val]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task(
            "train", total=state.max_steps, completed=state.global_step, loss=self.loss, val=self.val
        )

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step, loss=self.loss, val=self.val)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" in logs:
            self.loss = f"{logs['loss']:.3f}"
        if "eval_loss" in logs:
            self.val = f"{logs['eval_loss']:.3f}"
        if self.progress is not None:
            self.progress.update(self.task, loss=self.loss, val=self.val)

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)
            self.progress.stop()
            self.progress = None


# ------------------------------------------------------------------------------------- the standard set


def standard_callbacks(recipe: RecipeBase, run: RunDir, prepared: dict[str, Any], early_stopping: bool):
    """metrics.jsonl, NaN guard, complete-checkpoint markers, progress bar, tracking, early stopping."""
    from transformers import EarlyStoppingCallback

    guard = NonFiniteLossGuard(recipe.train.max_nan_logs)
    stamp = {"fingerprint": prepared["fingerprint"], "recipe": recipe.name, "adapterlab": __version__}
    callbacks = [MetricsLogger(run.metrics), guard, CheckpointMarker(stamp), RichProgress(), *tracking(recipe, run)]
    if early_stopping:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=recipe.train.early_stopping_patience))
    return callbacks, guard


def tracking(recipe: RecipeBase, run: RunDir) -> list:
    """The Trainer callback of ``train.report_to`` (its package comes with the 'tracking' extra)."""
    backend = recipe.train.report_to
    if backend == "none":
        return []
    try:
        if backend == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter
        else:
            import mlflow  # noqa: F401
    except ImportError as exc:
        raise TrainingError(
            f"train.report_to: {backend} needs the 'tracking' extra: pip install 'adapterlab[tracking]'"
        ) from exc
    from transformers.integrations import MLflowCallback, TensorBoardCallback

    if backend == "tensorboard":
        return [TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(run.tensorboard)))]
    return [MLflowCallback()]


@contextlib.contextmanager
def tracking_env(recipe: RecipeBase, run: RunDir):
    """MLflow's Trainer callback is configured through the environment; default it to a file store in the run
    directory (a user's own MLFLOW_TRACKING_URI, e.g. a server or sqlite, wins)."""
    if recipe.train.report_to != "mlflow":
        yield
        return
    defaults = {
        "MLFLOW_TRACKING_URI": run.mlruns.resolve().as_uri(),
        "MLFLOW_EXPERIMENT_NAME": recipe.name,
        "MLFLOW_ALLOW_FILE_STORE": "true",  # MLflow 3 keeps the file store but asks for an explicit opt-in
    }
    added = {k: v for k, v in defaults.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)
