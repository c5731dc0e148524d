"""``adapterlab train``: train a task's adapter into its run directory, with complete-or-ignored checkpoints.

Reads top to bottom and asks the task for its trainer: recipe -> run directory (fresh, resumed, or refused) ->
prepared data (prepared again when missing, incomplete or stale) -> the task's trainer -> what the task measures
before the first step -> train (or resume) -> final validation -> adapter + adapterlab.json + summary.json +
loss curve. The prepared, tokenised data is used as is: the trainer never re-tokenises.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapterlab.config import RecipeBase
from adapterlab.console import console
from adapterlab.environment import environment
from adapterlab.errors import TrainingError
from adapterlab.registry import as_recipe, task_of
from adapterlab.runs import AdapterInfo, BaseModelRef, RunDir, read_json, read_jsonl, write_json, write_jsonl
from adapterlab.stages.prepare import fingerprint, load_tokenizer_for, prepare
from adapterlab.task import TrainContext
from adapterlab.training import checkpoints, distributed
from adapterlab.training.arguments import describe


@dataclass
class TrainResult:
    run: RunDir
    summary: dict[str, Any]


def train(
    recipe: RecipeBase | str | Path,
    overrides: list[str] | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    callbacks: list | None = None,
) -> TrainResult:
    """Train an adapter into ``runs/<name>``; ``resume`` continues from the newest complete checkpoint."""
    from transformers import set_seed

    from adapterlab.models import pick_precision, resolve_base
    from adapterlab.training.callbacks import tracking_env

    recipe = as_recipe(recipe, overrides)
    task = task_of(recipe)
    run = RunDir.for_recipe(recipe)
    world = distributed.current()  # torchrun's processes: rank 0 writes the run directory, the others wait
    ddp_backend = distributed.init(world, recipe.train.ddp_timeout)
    console.quiet = not world.main  # one process speaks for all (the others' output would repeat it)
    resume_from = distributed.on_main(world, lambda: start_or_resume(run, resume=resume, overwrite=overwrite))
    set_seed(recipe.seed)
    base = resolve_base(recipe.model.base)
    tokenizer = load_tokenizer_for(recipe, task)
    # Rank 0 prepares (when missing or stale); every rank then reads the same prepared tokens from the run.
    prepared = distributed.on_main(world, lambda: prepared_for_training(recipe, run, tokenizer, resume_from))
    precision = pick_precision(recipe.train.precision)
    follow_recipe_precision(precision)
    if world.main:
        processes = {"world_size": world.size, "distributed_backend": ddp_backend}
        write_json(run.env, {**environment(), "precision": precision, "base_model": base, **processes})
        run.save_recipe(recipe)

    ctx = TrainContext(recipe, run, base, tokenizer, precision, prepared, list(callbacks or []))
    trainer, guard = task.build_trainer(ctx)
    # FSDP / DeepSpeed prepare the model together with its optimizer at the first step: nothing may run the
    # model before that, so what the task measures first (the base's validation loss) is measured after.
    sharded = distributed.sharded(trainer)
    if unsaveable := distributed.unsaveable_sharding(trainer):
        raise TrainingError(unsaveable)
    if world.main and (unmet := distributed.unmet_sharding(trainer)):
        console.print(f"[yellow]note:[/yellow] {unmet}", soft_wrap=True)
    with tracking_env(recipe, run):
        before = {} if sharded else task.before_training(trainer, ctx, resume_from)
        if world.main:
            console.print(f"[bold]Training[/bold] {describe(trainer.model)} on {len(trainer.train_dataset)} examples"
                          + (f" in {world.size} processes ({ddp_backend})" if world.distributed else ""))  # fmt: skip
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    totals = totals_over_ranks(world, trainer)  # before the final validation and saving: not training time
    trainer.progress.update(totals)  # what the task's summary reads counts every process's tokens
    raise_if_diverged(guard, run)
    final_eval = final_validation(trainer)
    if sharded:  # every rank takes part: the sharded model gathers its weights in each forward
        before = task.before_training(trainer, ctx, resume_from)
    # A sharded model's forwards (golden replies) and its full state dict are collective: every rank joins in.
    info = task.adapter_info(trainer, ctx) if world.main or sharded else {}
    weights = distributed.gathered_trainable_state(trainer) if sharded else None
    summary: dict[str, Any] = {}
    if world.main:
        save_adapter(trainer, ctx, info, weights)
        task.save_extras(trainer, ctx)
        summary = summarise(trainer, ctx, totals, guard, resume_from) | task.summarise(trainer, ctx, final_eval, before)
        summary |= {"processes": world.size, "global_batch": global_batch(recipe, world)}
        write_json(run.summary, summary)
        plot(run, recipe)
        task.print_outcome(summary)
    distributed.finish(world)
    return TrainResult(run, summary)


def follow_recipe_precision(precision: str) -> None:
    """The recipe's precision is what trains: an accelerate config's ``mixed_precision`` (``accelerate launch``
    passes it as ACCELERATE_MIXED_PRECISION) would otherwise turn an fp32 recipe into bf16 without a word."""
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION")
    wanted = precision if precision in ("bf16", "fp16") else "no"
    if launcher is not None and launcher != wanted:
        console.print(
            f"[yellow]note:[/yellow] the accelerate config's mixed_precision {launcher} is replaced by the "
            f"recipe's train.precision {precision}",
            soft_wrap=True,
        )
        os.environ["ACCELERATE_MIXED_PRECISION"] = wanted


def prepared_for_training(recipe: RecipeBase, run: RunDir, tokenizer, resume_from: Path | None) -> dict[str, Any]:
    prepared = ensure_prepared(recipe, run, tokenizer)
    if resume_from is not None:
        check_resume_matches(resume_from, prepared)
    return prepared


def totals_over_ranks(world: distributed.World, trainer) -> dict[str, float]:
    """The whole training's totals: tokens summed over the processes, the slowest one's seconds. Each process's
    loss is its share of the global batch's loss times the world size, so the ranks' mean is the global loss."""
    totals = distributed.sum_over_ranks(world, trainer.totals(), keep_max=("seconds",))
    totals["loss_sum"] /= world.size
    return totals


def global_batch(recipe: RecipeBase, world: distributed.World) -> int:
    """Examples per optimizer step: train.batch_size is per process."""
    return recipe.train.batch_size * recipe.train.grad_accum * world.size


# ------------------------------------------------------------------------------------------- run directory


def start_or_resume(run: RunDir, *, resume: bool, overwrite: bool) -> Path | None:
    """The checkpoint to resume from, or None for a fresh start (refusing to silently clobber a run)."""
    removed = checkpoints.remove_incomplete(run.checkpoints)
    for path in removed:
        console.print(f"[yellow]ignoring half-written checkpoint {path.name} (removed)[/yellow]")
    latest = checkpoints.latest_complete(run.checkpoints)
    if resume:
        if latest is None:
            # Nothing to continue from (e.g. a crash during the first checkpoint save): start over, say so.
            console.print(
                f"[yellow]{run.checkpoints}: no complete checkpoint to resume from; starting over[/yellow]",
                soft_wrap=True,
            )
        else:
            console.print(f"Resuming from {latest}")
            return latest
    elif latest is not None and not overwrite:
        raise TrainingError(
            f"{run.root} already has checkpoints from an earlier training; pass --resume to continue it "
            "or --overwrite to start over"
        )
    folders, files = run.training_outputs()
    for stale in folders:
        shutil.rmtree(stale, ignore_errors=True)
    for stale in files:
        stale.unlink(missing_ok=True)
    return None


def ensure_prepared(recipe: RecipeBase, run: RunDir, tokenizer) -> dict[str, Any]:
    """The prepared data's meta, running ``prepare`` first when it is missing, incomplete or stale."""
    run.remove_stale_staging()
    wanted = fingerprint(recipe, recipe.resolve_path(recipe.data.path), tokenizer)
    complete = run.data_meta.is_file() and run.tokenized.is_dir() and run.data_report.is_file()
    if not complete or read_json(run.data_meta)["fingerprint"] != wanted:
        console.print("[dim]Preparing data (missing, incomplete or changed since the last prepare) ...[/dim]")
        prepare(recipe, tokenizer=tokenizer)
    meta = read_json(run.data_meta)
    meta["report"] = read_json(run.data_report)
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
    metrics = RunDir.of_checkpoint(checkpoint).metrics
    if metrics.is_file():
        write_jsonl(metrics, [r for r in read_jsonl(metrics) if r.get("step", 0) <= step])


def raise_if_diverged(guard, run: RunDir) -> None:
    if guard.tripped_at is not None:
        raise TrainingError(
            f"loss was NaN/inf for {guard.max_in_a_row} logs in a row (step {guard.tripped_at}); "
            "lower train.learning_rate or set train.precision: fp32; the last good checkpoint is in "
            f"{run.checkpoints}"
        )


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


def save_adapter(trainer, ctx: TrainContext, task_info: dict[str, Any], state_dict: dict | None = None) -> None:
    """PEFT safetensors (or the full model) + tokenizer (with its chat template) + adapterlab.json.

    ``state_dict``: the model's full weights when they are sharded over the processes (gathered by all of them)."""
    run, recipe = ctx.run, ctx.recipe
    if run.adapter.exists():
        shutil.rmtree(run.adapter)
    trainer.model.save_pretrained(str(run.adapter), safe_serialization=True, state_dict=state_dict)
    ctx.tokenizer.save_pretrained(str(run.adapter))
    from adapterlab.models import weights_fingerprint

    AdapterInfo(
        task=recipe.task,
        base_model=BaseModelRef(spec=recipe.model.base, resolved=ctx.base, weights=weights_fingerprint(ctx.base)),
        model=recipe.model,
        precision=ctx.precision,
        data_fingerprint=ctx.prepared["fingerprint"],
        task_info=task_info,
    ).save(run.adapter)


def method_of(recipe: RecipeBase) -> str:
    if getattr(recipe.lora, "full_finetune", False):
        return "full"
    return ("qlora" if recipe.model.quantization == "4bit" else "lora") + ("+dora" if recipe.lora.dora else "")


def summarise(trainer, ctx: TrainContext, totals: dict, guard, resume_from: Path | None) -> dict[str, Any]:
    """What every task's summary.json says; ``totals`` cover the whole training, resumed parts included."""
    import torch

    recipe, state = ctx.recipe, trainer.state
    steps = state.global_step
    return {
        "name": recipe.name,
        "task": recipe.task,
        "base_model": recipe.model.base,
        "method": method_of(recipe),
        "precision": ctx.precision,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "steps": steps,
        "epochs": round(state.epoch or 0.0, 3),
        "train_examples": len(trainer.train_dataset),
        "val_examples": len(trainer.eval_dataset) if trainer.eval_dataset is not None else 0,
        "train_loss": totals["loss_sum"] / steps if steps else None,
        "train_runtime_s": totals["seconds"],
        "train_tokens": int(totals["tokens"]),
        "train_tokens_per_s": totals["tokens"] / totals["seconds"] if totals["seconds"] else None,
        "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "best_checkpoint": state.best_model_checkpoint,
        "stopped_early": steps < state.max_steps,
        "resumed_from": str(resume_from) if resume_from else None,
        "nonfinite_losses": guard.total,
        "adapter": str(ctx.run.adapter),
    }


def plot(run: RunDir, recipe: RecipeBase) -> None:
    from adapterlab.training.plots import plot_loss

    if run.metrics.is_file():
        plot_loss(read_jsonl(run.metrics), run.loss_plot, title=f"{recipe.name}: loss")
