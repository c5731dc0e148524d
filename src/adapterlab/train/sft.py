"""``adapterlab train``: LoRA / DoRA / QLoRA supervised fine-tuning of a chat adapter with TRL's SFTTrainer.

Reads top to bottom: recipe -> run directory -> prepared data -> base model -> trainer -> base validation loss
-> train (or resume) -> adapter + summary + loss curve. The prepared, tokenised data is used as is
(completion-only loss from its ``completion_mask``); the trainer never re-tokenises.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapterlab import __version__
from adapterlab.config import Recipe, as_recipe
from adapterlab.console import console
from adapterlab.errors import TrainingError
from adapterlab.runs import RunDir, environment, read_jsonl, write_json, write_jsonl
from adapterlab.train import checkpoints


@dataclass
class TrainResult:
    run: RunDir
    summary: dict[str, Any]


def train(
    recipe: Recipe | str | Path,
    overrides: list[str] | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    callbacks: list | None = None,
) -> TrainResult:
    """Train an adapter into ``runs/<name>``; ``resume`` continues from the newest complete checkpoint."""
    from transformers import set_seed

    from adapterlab.models import load_tokenizer, pick_precision, resolve_base

    recipe = as_recipe(recipe, overrides)
    run = RunDir.for_recipe(recipe)
    resume_from = start_or_resume(run, resume=resume, overwrite=overwrite)
    set_seed(recipe.seed)
    base = resolve_base(recipe.model.base)
    tokenizer = load_tokenizer(base, recipe.model.trust_remote_code, recipe.model.revision)
    prepared = ensure_prepared(recipe, run, tokenizer)
    if resume_from is not None:
        check_resume_matches(resume_from, prepared)
    precision = pick_precision(recipe.train.precision)
    write_json(run.root / "env.json", {**environment(), "precision": precision, "base_model": base})
    run.save_recipe(recipe)

    trainer, guard = build_trainer(recipe, run, base, tokenizer, precision, prepared, callbacks or [])
    with tracking_env(recipe, run):
        base_eval = evaluate_base(trainer, run, resume_from)
        console.print(f"[bold]Training[/bold] {describe(trainer.model)} on {len(trainer.train_dataset)} examples")
        output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    if guard.tripped_at is not None:
        raise TrainingError(
            f"loss was NaN/inf for {guard.max_in_a_row} logs in a row (step {guard.tripped_at}); "
            "lower train.learning_rate or set train.precision: fp32; the last good checkpoint is in "
            f"{run.checkpoints}"
        )
    final_eval = final_validation(trainer)
    save_adapter(trainer, recipe, run, base, tokenizer, precision, prepared)
    summary = write_summary(trainer, run, recipe, precision, output, base_eval, final_eval, resume_from, guard)
    plot(run, recipe)
    print_outcome(summary)
    return TrainResult(run, summary)


# ------------------------------------------------------------------------------------------- run directory


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


# ----------------------------------------------------------------------------------------------- trainer


def sft_config(recipe: Recipe, run: RunDir, precision: str, has_val: bool):
    import torch
    from trl import SFTConfig

    t = recipe.train
    early = t.early_stopping_patience is not None and has_val
    return SFTConfig(
        output_dir=str(run.checkpoints),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.eval_batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        optim=t.optimizer,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not torch.cuda.is_available(),
        gradient_checkpointing=t.gradient_checkpointing,
        eval_strategy="steps" if has_val else "no",
        eval_steps=t.eval_every,
        save_strategy="steps",
        save_steps=t.save_every,
        save_total_limit=t.keep_checkpoints,
        load_best_model_at_end=early,
        metric_for_best_model="eval_loss" if early else None,
        greater_is_better=False if early else None,
        logging_steps=t.log_every,
        logging_first_step=True,
        logging_nan_inf_filter=False,  # we count non-finite losses instead of hiding them
        report_to=[],
        disable_tqdm=True,
        seed=recipe.seed,
        data_seed=recipe.seed,
        max_length=None,  # prepare already truncated (and counted); TRL must not cut or filter again
        completion_only_loss=True,
        padding_free=t.padding_free,
        packing=False,
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        dataloader_num_workers=0,
        save_only_model=False,
    )


def build_trainer(recipe, run, base, tokenizer, precision, prepared, extra_callbacks):
    from datasets import load_from_disk
    from transformers import EarlyStoppingCallback, PrinterCallback

    from adapterlab.models import load_causal_lm, peft_lora_config
    from adapterlab.train.callbacks import CheckpointMarker, MetricsLogger, NonFiniteLossGuard, RichProgress
    from adapterlab.train.trainer import CompletionSFTTrainer

    warn_if_unservable(recipe)
    data = load_from_disk(str(run.tokenized))
    if len(data["train"]) == 0:
        raise TrainingError(f"{run.data_report}: no training examples left after preparation")
    val = data["val"] if len(data["val"]) else None
    args = sft_config(recipe, run, precision, has_val=val is not None)
    model = load_causal_lm(base, recipe.model, precision, training=True)
    guard = NonFiniteLossGuard(recipe.train.max_nan_logs)
    stamp = {"fingerprint": prepared["fingerprint"], "recipe": recipe.name, "adapterlab": __version__}
    callbacks = [MetricsLogger(run.metrics), guard, CheckpointMarker(stamp), RichProgress(), *tracking(recipe, run)]
    if args.load_best_model_at_end:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=recipe.train.early_stopping_patience))
    trainer = CompletionSFTTrainer(
        model=model,
        args=args,
        train_dataset=data["train"],
        eval_dataset=val,
        processing_class=tokenizer,
        peft_config=peft_lora_config(recipe.lora),
        callbacks=[*callbacks, *extra_callbacks],
    )
    trainer.remove_callback(PrinterCallback)
    if len(trainer.train_dataset) != len(data["train"]):  # TRL filters rows it cannot learn from; we never should
        raise TrainingError(
            f"the trainer dropped {len(data['train']) - len(trainer.train_dataset)} prepared rows; "
            "this is a bug in adapterlab's preparation, please report it"
        )
    return trainer, guard


def warn_if_unservable(recipe: Recipe) -> None:
    """vLLM serves LoRA weights only; an adapter that trains whole modules (lm_head, embeddings) is refused there."""
    full = [m for m in recipe.lora.modules_to_save if any(k in m for k in ("lm_head", "embed", "wte", "wpe"))]
    if full:
        console.print(
            f"[yellow]warning:[/yellow] lora.modules_to_save={full} trains these modules in full; such adapters "
            "work here and in transformers, but vLLM refuses them (it serves LoRA weights only)",
            soft_wrap=True,
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


def evaluate_base(trainer, run: RunDir, resume_from: Path | None) -> dict[str, float]:
    """Validation loss of the base model (adapter disabled) on the same split, once per run."""
    if trainer.eval_dataset is None:
        return {}
    if resume_from is not None and run.metrics.is_file():
        earlier = [r for r in read_jsonl(run.metrics) if "base_loss" in r]
        if earlier:
            return {k: v for k, v in earlier[0].items() if k.startswith("base_")}
    console.print("[dim]Validation loss of the base model ...[/dim]")
    with trainer.model.disable_adapter():
        return trainer.evaluate(metric_key_prefix="base")


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


# ------------------------------------------------------------------------------------------------ outputs


def save_adapter(trainer, recipe: Recipe, run: RunDir, base: str, tokenizer, precision: str, prepared) -> None:
    """PEFT safetensors + tokenizer (with its chat template) + adapterlab.json: everything serving needs."""
    from adapterlab.eval.generate import stop_token_ids

    if run.adapter.exists():
        shutil.rmtree(run.adapter)
    model = trainer.model
    model.save_pretrained(str(run.adapter), safe_serialization=True)
    tokenizer.save_pretrained(str(run.adapter))
    meta = {
        "adapterlab_version": __version__,
        "task": recipe.task,
        "base_model": {"spec": recipe.model.base, "resolved": base},
        "model": recipe.model.model_dump(mode="json"),
        "precision": precision,
        "prompt": {
            "system_prompt": recipe.data.system_prompt,
            "prompt_template": recipe.data.prompt_template,
            "target_column": recipe.data.target_column,
            "max_tokens": recipe.data.max_tokens,
        },
        "chat_template": tokenizer.chat_template,
        "stop": {"eos_token": tokenizer.eos_token, "token_ids": stop_token_ids(tokenizer, model)},
        "data_fingerprint": prepared["fingerprint"],
        "golden": golden_outputs(model, tokenizer, run, recipe.train.golden_prompts),
    }
    write_json(run.adapter / "adapterlab.json", meta)


def golden_outputs(model, tokenizer, run: RunDir, count: int) -> list[dict[str, Any]]:
    """A few validation prompts with the adapter's greedy reply: export and serve check parity against them."""
    from adapterlab.eval.generate import Decoding, generate

    if count == 0:
        return []
    source = run.data / "val.jsonl"
    rows = read_jsonl(source)[:count] if source.is_file() else []
    if not rows:
        rows = read_jsonl(run.data / "train.jsonl")[:count]
    model.eval()
    outputs = generate(model, tokenizer, [r["messages"] for r in rows], Decoding(max_new_tokens=32))
    return [{"id": r["id"], "messages": r["messages"], "greedy_32": o.text} for r, o in zip(rows, outputs, strict=True)]


def write_summary(trainer, run, recipe, precision, output, base_eval, final_eval, resume_from, guard) -> dict:
    import torch

    metrics = output.metrics
    state = trainer.state
    tokens = trainer.tokens_seen  # this process only: a resumed run counts from the checkpoint on
    summary = {
        "name": recipe.name,
        "task": recipe.task,
        "base_model": recipe.model.base,
        "method": ("qlora" if recipe.model.quantization == "4bit" else "lora") + ("+dora" if recipe.lora.dora else ""),
        "precision": precision,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "steps": state.global_step,
        "epochs": round(state.epoch or 0.0, 3),
        "train_examples": len(trainer.train_dataset),
        "val_examples": len(trainer.eval_dataset) if trainer.eval_dataset is not None else 0,
        "train_loss": metrics.get("train_loss"),
        "train_runtime_s": metrics.get("train_runtime"),
        "train_tokens": tokens,
        "train_completion_tokens": trainer.completion_tokens_seen,
        "train_tokens_per_s": tokens / metrics["train_runtime"] if metrics.get("train_runtime") else None,
        "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "base_val_loss": base_eval.get("base_loss"),
        "val_loss": final_eval.get("eval_loss"),
        "best_checkpoint": state.best_model_checkpoint,
        "stopped_early": state.global_step < state.max_steps,
        "resumed_from": str(resume_from) if resume_from else None,
        "nonfinite_losses": guard.total,
        "adapter": str(run.adapter),
    }
    for key in ("base_val", "val"):
        loss = summary[f"{key}_loss"]
        summary[f"{key}_perplexity"] = math.exp(min(loss, 50.0)) if loss is not None else None
    write_json(run.summary, summary)
    return summary


def plot(run: RunDir, recipe: Recipe) -> None:
    from adapterlab.train.plots import plot_loss

    if run.metrics.is_file():
        plot_loss(read_jsonl(run.metrics), run.loss_plot, title=f"{recipe.name}: loss")


def print_outcome(summary: dict[str, Any]) -> None:
    base, tuned = summary["base_val_loss"], summary["val_loss"]
    if base is None or tuned is None:
        console.print(f"[bold green]Adapter saved[/bold green] to {summary['adapter']} (no validation split)")
        return
    change = (tuned - base) / base * 100
    colour = "green" if tuned < base else "red"
    console.print(
        f"[bold]Validation loss[/bold]  base {base:.3f} (ppl {summary['base_val_perplexity']:.1f})  ->  "
        f"adapter [{colour}]{tuned:.3f} (ppl {summary['val_perplexity']:.1f})[/{colour}]  ({change:+.1f}%)"
    )
    console.print(f"[bold green]Adapter saved[/bold green] to {summary['adapter']}")
