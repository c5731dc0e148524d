"""What every training recipe shares: the run directory lifecycle (fresh start, resume, refusal to clobber),
prepared data, Trainer arguments, callbacks, tracking and the end-of-training validation."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapterlab import __version__
from adapterlab.config import Recipe
from adapterlab.console import console
from adapterlab.errors import TrainingError
from adapterlab.runs import RunDir, read_jsonl, write_jsonl
from adapterlab.train import checkpoints


@dataclass
class TrainResult:
    run: RunDir
    summary: dict[str, Any]


def start_or_resume(run: RunDir, *, resume: bool, overwrite: bool) -> Path | None:
    """The checkpoint to resume from, or None for a fresh start (refusing to silently clobber a run)."""
    existing = checkpoints.all_checkpoints(run.checkpoints)
    if resume:
        removed = checkpoints.remove_incomplete(run.checkpoints)
        for path in removed:
            console.print(f"[yellow]ignoring half-written checkpoint {path.name} (removed)[/yellow]")
        latest = checkpoints.latest_complete(run.checkpoints)
        if latest is None:
            raise TrainingError(f"{run.checkpoints}: no complete checkpoint to resume from; start without --resume")
        console.print(f"Resuming from {latest}")
        return latest
    if existing and not overwrite:
        raise TrainingError(
            f"{run.root} already has checkpoints from an earlier training; pass --resume to continue it "
            "or --overwrite to start over"
        )
    for stale in (run.checkpoints, run.adapter, run.root / "tensorboard", run.root / "mlruns"):
        shutil.rmtree(stale, ignore_errors=True)
    for stale in (run.metrics, run.summary, run.loss_plot):
        stale.unlink(missing_ok=True)
    return None


def ensure_prepared(recipe: Recipe, run: RunDir, tokenizer) -> dict[str, Any]:
    """The prepared data's meta, running ``prepare`` first when it is missing or stale."""
    from adapterlab.data.prepare import fingerprint, prepare

    meta_file = run.data / "meta.json"
    wanted = fingerprint(recipe, recipe.resolve_path(recipe.data.path), tokenizer)
    if not meta_file.is_file() or json.loads(meta_file.read_text())["fingerprint"] != wanted:
        console.print("[dim]Preparing data (missing or changed since the last prepare) ...[/dim]")
        prepare(recipe, tokenizer=tokenizer)
    meta = json.loads(meta_file.read_text())
    meta["report"] = json.loads(run.data_report.read_text())
    return meta


def check_resume_matches(checkpoint: Path, prepared: dict[str, Any]) -> None:
    stamp = checkpoints.read_stamp(checkpoint)
    if stamp.get("fingerprint") != prepared["fingerprint"]:
        raise TrainingError(
            f"{checkpoint}: the data or recipe changed since this checkpoint was written; resuming would mix "
            "two trainings (restore them, or start over with --overwrite)"
        )
    # Drop log lines written after the checkpoint: the resumed run logs those steps again.
    step = checkpoints.step_of(checkpoint)
    metrics = checkpoint.parent.parent / "metrics.jsonl"
    if metrics.is_file():
        write_jsonl(metrics, [r for r in read_jsonl(metrics) if r.get("step", 0) <= step])


def optimizer_name(recipe: Recipe, *, cuda: bool) -> str:
    """QLoRA gets bitsandbytes' paged 8-bit AdamW where it can page (CUDA) unless the recipe names an optimizer."""
    if recipe.model.quantization == "4bit" and cuda and recipe.train.optimizer == "adamw_torch":
        return "paged_adamw_8bit"
    return recipe.train.optimizer


def trainer_arguments(
    recipe: Recipe, run: RunDir, precision: str, has_val: bool, padded: bool = True
) -> dict[str, Any]:
    """The TrainingArguments both recipes share (SFTConfig for chat, TrainingArguments for classify).

    ``padded``: whether batches are padded to their longest row (not padding-free), which is when grouping rows
    of similar length pays (``train.group_by_length: auto``).
    """
    import torch

    t = recipe.train
    group = padded if t.group_by_length == "auto" else t.group_by_length
    early = t.early_stopping_patience is not None and has_val
    return {
        "output_dir": str(run.checkpoints),
        "num_train_epochs": t.epochs,
        "max_steps": t.max_steps or -1,
        "per_device_train_batch_size": t.batch_size,
        "per_device_eval_batch_size": t.eval_batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "learning_rate": t.learning_rate,
        "lr_scheduler_type": t.lr_scheduler,
        "warmup_steps": t.warmup_ratio,
        "weight_decay": t.weight_decay,
        "max_grad_norm": t.max_grad_norm,
        "optim": optimizer_name(recipe, cuda=torch.cuda.is_available()),
        "bf16": precision == "bf16",
        "fp16": precision == "fp16",
        "use_cpu": not torch.cuda.is_available(),
        "gradient_checkpointing": t.gradient_checkpointing,
        "eval_strategy": ("epoch" if t.eval_every == "epoch" else "steps") if has_val else "no",
        "eval_steps": None if t.eval_every == "epoch" else t.eval_every,
        "save_strategy": "epoch" if t.save_every == "epoch" else "steps",
        "save_steps": None if t.save_every == "epoch" else t.save_every,
        "save_total_limit": t.keep_checkpoints,
        "load_best_model_at_end": early,
        "metric_for_best_model": "eval_loss" if early else None,
        "greater_is_better": False if early else None,
        "logging_steps": t.log_every,
        "logging_first_step": True,
        "logging_nan_inf_filter": False,  # we count non-finite losses instead of hiding them
        "report_to": [],
        "disable_tqdm": True,
        "seed": recipe.seed,
        "data_seed": recipe.seed,
        "train_sampling_strategy": "group_by_length" if group else "random",
        "dataloader_num_workers": 0,
        "save_only_model": False,
    }


def standard_callbacks(recipe: Recipe, run: RunDir, prepared: dict[str, Any], early_stopping: bool):
    """metrics.jsonl, NaN guard, complete-checkpoint markers, progress bar, tracking, early stopping."""
    from transformers import EarlyStoppingCallback

    from adapterlab.train.callbacks import CheckpointMarker, MetricsLogger, NonFiniteLossGuard, RichProgress

    guard = NonFiniteLossGuard(recipe.train.max_nan_logs)
    stamp = {"fingerprint": prepared["fingerprint"], "recipe": recipe.name, "adapterlab": __version__}
    callbacks = [MetricsLogger(run.metrics), guard, CheckpointMarker(stamp), RichProgress(), *tracking(recipe, run)]
    if early_stopping:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=recipe.train.early_stopping_patience))
    return callbacks, guard


def raise_if_diverged(guard, run: RunDir) -> None:
    if guard.tripped_at is not None:
        raise TrainingError(
            f"loss was NaN/inf for {guard.max_in_a_row} logs in a row (step {guard.tripped_at}); "
            "lower train.learning_rate or set train.precision: fp32; the last good checkpoint is in "
            f"{run.checkpoints}"
        )


def tracking(recipe: Recipe, run: RunDir) -> list:
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
        return [TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(run.root / "tensorboard")))]
    return [MLflowCallback()]


@contextlib.contextmanager
def tracking_env(recipe: Recipe, run: RunDir):
    """MLflow's Trainer callback is configured through the environment; default it to a file store in the run
    directory (a user's own MLFLOW_TRACKING_URI, e.g. a server or sqlite, wins)."""
    if recipe.train.report_to != "mlflow":
        yield
        return
    defaults = {
        "MLFLOW_TRACKING_URI": (run.root / "mlruns").resolve().as_uri(),
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


def describe(model) -> str:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return f"{trainable / 1e6:.2f}M trainable of {total / 1e6:.1f}M parameters"


def final_validation(trainer) -> dict[str, float]:
    """The adapter's validation metrics at the end: the last in-training evaluation if it was at the final step
    (and no best checkpoint was restored), otherwise one more pass. Trackers are detached first: their run ended
    with the training."""
    from transformers.integrations import MLflowCallback, TensorBoardCallback

    if trainer.eval_dataset is None:
        return {}
    for tracker in (MLflowCallback, TensorBoardCallback):
        trainer.remove_callback(tracker)
    last = next((r for r in reversed(trainer.state.log_history) if "eval_loss" in r), None)
    if last and last["step"] == trainer.state.global_step and not trainer.args.load_best_model_at_end:
        return {k: v for k, v in last.items() if k.startswith("eval_")}
    return trainer.evaluate()


def plot(run: RunDir, recipe: Recipe) -> None:
    from adapterlab.train.plots import plot_loss

    if run.metrics.is_file():
        plot_loss(read_jsonl(run.metrics), run.loss_plot, title=f"{recipe.name}: loss")
