"""``adapterlab train``: LoRA / DoRA / QLoRA supervised fine-tuning of a chat adapter with TRL's SFTTrainer.

Reads top to bottom: recipe -> run directory -> prepared data -> base model -> trainer -> base validation loss
-> train (or resume) -> adapter + summary + loss curve. The prepared, tokenised data is used as is
(completion-only loss from its ``completion_mask``); the trainer never re-tokenises.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

from adapterlab import __version__
from adapterlab.config import Recipe, as_recipe
from adapterlab.console import console
from adapterlab.errors import TrainingError
from adapterlab.memory import tune_cpu_memory
from adapterlab.runs import RunDir, environment, read_jsonl, write_json
from adapterlab.train.common import (
    TrainResult,
    check_resume_matches,
    describe,
    ensure_prepared,
    final_validation,
    plot,
    raise_if_diverged,
    standard_callbacks,
    start_or_resume,
    tracking_env,
    trainer_arguments,
)


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
    if recipe.task == "classify":
        from adapterlab.train.classify import train_classifier

        return train_classifier(recipe, resume=resume, overwrite=overwrite, callbacks=callbacks)
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
    raise_if_diverged(guard, run)
    final_eval = final_validation(trainer)
    save_adapter(trainer, recipe, run, base, tokenizer, precision, prepared)
    summary = write_summary(trainer, run, recipe, precision, output, base_eval, final_eval, resume_from, guard)
    plot(run, recipe)
    print_outcome(summary)
    return TrainResult(run, summary)


# ------------------------------------------------------------------------------------------- run directory


# ----------------------------------------------------------------------------------------------- trainer


def sft_config(recipe: Recipe, run: RunDir, precision: str, has_val: bool, padding_free: bool = False):
    from trl import SFTConfig

    return SFTConfig(
        **trainer_arguments(recipe, run, precision, has_val, padded=not padding_free),
        max_length=None,  # prepare already truncated (and counted); TRL must not cut or filter again
        completion_only_loss=True,
        padding_free=padding_free,
        packing=False,
    )


def use_padding_free(recipe: Recipe, model) -> bool:
    """Resolve ``train.padding_free`` for a loaded model, switching SDPA to packed per-sequence attention.

    ``auto`` packs when the attention can take packed rows without a (total x total) mask: flash-attention's
    varlen kernel, or SDPA through :mod:`adapterlab.train.packed_attention` for plain causal attention.
    """
    from adapterlab.train import packed_attention

    wanted = recipe.train.padding_free
    implementation = model.config._attn_implementation
    if implementation.startswith("flash_attention"):
        return wanted in ("auto", True)
    packable = (
        implementation == "sdpa"
        and packed_attention.supports_packed_attention(model.config)
        and model._can_set_attn_implementation()
    )
    if packable and wanted in ("auto", True):
        model.set_attn_implementation(packed_attention.register())
        return True
    if wanted is True:  # the model's own masks keep packed rows apart, at the cost of a full-size mask
        console.print(
            f"[yellow]warning:[/yellow] train.padding_free with {implementation} attention builds a mask over the "
            "whole packed batch; expect it to be slower than padded batches",
            soft_wrap=True,
        )
    return wanted is True


def build_trainer(recipe, run, base, tokenizer, precision, prepared, extra_callbacks):
    from datasets import load_from_disk
    from transformers import PrinterCallback

    from adapterlab.models import load_causal_lm, peft_lora_config
    from adapterlab.train.trainer import CompletionSFTTrainer

    warn_if_unservable(recipe)
    data = load_from_disk(str(run.tokenized))
    if len(data["train"]) == 0:
        raise TrainingError(f"{run.data_report}: no training examples left after preparation")
    val = data["val"] if len(data["val"]) else None
    tune_cpu_memory(recipe.train.keep_freed_memory)
    model = load_causal_lm(base, recipe.model, precision, training=True)
    args = sft_config(recipe, run, precision, has_val=val is not None, padding_free=use_padding_free(recipe, model))
    callbacks, guard = standard_callbacks(recipe, run, prepared, args.load_best_model_at_end)
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
