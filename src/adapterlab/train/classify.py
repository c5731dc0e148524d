"""``adapterlab train`` for ``task: classify``: LoRA / QLoRA / full fine-tuning of a sequence classifier.

Reads top to bottom: recipe -> run directory -> prepared data (cleaned, split, label map) -> encoder or decoder
with a classification head -> LoRA (head trained in full) -> Trainer with the imbalance-aware loss -> the
checkpoint with the best validation metric restored -> adapter + label map + cleaning config + summary.
"""

from __future__ import annotations

import json
import shutil
from typing import Any

from adapterlab import __version__
from adapterlab.config import Recipe
from adapterlab.console import console
from adapterlab.errors import RecipeError, TrainingError
from adapterlab.memory import tune_cpu_memory
from adapterlab.runs import RunDir, environment, write_json
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


def train_classifier(
    recipe: Recipe, *, resume: bool = False, overwrite: bool = False, callbacks: list | None = None
) -> TrainResult:
    from transformers import set_seed

    from adapterlab.models import load_tokenizer, pick_precision, resolve_base

    run = RunDir.for_recipe(recipe)
    resume_from = start_or_resume(run, resume=resume, overwrite=overwrite)
    set_seed(recipe.seed)
    base = resolve_base(recipe.model.base)
    tokenizer = load_tokenizer(base, recipe.model.trust_remote_code, recipe.model.revision, chat=False)
    prepared = ensure_prepared(recipe, run, tokenizer)
    if resume_from is not None:
        check_resume_matches(resume_from, prepared)
    precision = pick_precision(recipe.train.precision)
    write_json(run.root / "env.json", {**environment(), "precision": precision, "base_model": base})
    run.save_recipe(recipe)

    labels = json.loads((run.data / "label_map.json").read_text())["labels"]
    trainer, guard = build_trainer(recipe, run, base, tokenizer, labels, precision, prepared, callbacks or [])
    console.print(f"[bold]Training[/bold] {describe(trainer.model)} on {len(trainer.train_dataset)} examples")
    with tracking_env(recipe, run):
        output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    raise_if_diverged(guard, run)
    final_eval = final_validation(trainer)
    save(trainer, recipe, run, base, tokenizer, labels, precision, prepared)
    summary = write_summary(trainer, recipe, run, precision, output, final_eval, resume_from, labels)
    plot(run, recipe)
    best = recipe.train.metric_for_best
    if final_eval:
        console.print(
            f"[bold]Validation[/bold] {best} {final_eval.get('eval_' + best, float('nan')):.4f}  "
            f"(majority-class baseline weighted F1 {summary['majority_val_weighted_f1']:.4f})"
        )
    console.print(f"[bold green]Classifier adapter saved[/bold green] to {run.adapter}")
    return TrainResult(run, summary)


def class_weights(recipe: Recipe, train_label_ids: list[int], labels: list[str]):
    import torch

    from adapterlab.train.losses import balanced_class_weights

    setting = recipe.train.class_weights
    if setting is None:
        return None
    if setting == "balanced":
        return balanced_class_weights(train_label_ids, len(labels))
    unknown = sorted(set(setting) - set(labels))
    if unknown:
        raise RecipeError(f"train.class_weights: label '{unknown[0]}' is not one of the labels {labels}")
    return torch.tensor([float(setting.get(label, 1.0)) for label in labels])


def build_trainer(recipe, run, base, tokenizer, labels, precision, prepared, extra_callbacks):
    from datasets import load_from_disk
    from peft import get_peft_model
    from transformers import DataCollatorWithPadding, PrinterCallback, TrainingArguments

    from adapterlab.eval.classify_metrics import trainer_metrics
    from adapterlab.models import load_sequence_classifier, peft_lora_config
    from adapterlab.train.trainer import ClassificationTrainer

    data = load_from_disk(str(run.tokenized))
    if len(data["train"]) == 0:
        raise TrainingError(f"{run.data_report}: no training examples left after preparation")
    val = data["val"] if len(data["val"]) else None
    t = recipe.train
    tune_cpu_memory(t.keep_freed_memory)
    args = trainer_arguments(recipe, run, precision, has_val=val is not None)
    if val is not None:  # keep and restore the checkpoint with the best validation metric
        args.update(load_best_model_at_end=True, metric_for_best_model=t.metric_for_best,
                    greater_is_better=t.metric_for_best != "loss")  # fmt: skip
    # Weights stay fp32 (the head and, in full fine-tuning, every weight is trained); bf16 runs as autocast.
    model = load_sequence_classifier(base, recipe.model, labels, tokenizer.pad_token_id, "fp32")
    if not recipe.lora.full_finetune:
        model = get_peft_model(model, peft_lora_config(recipe.lora, task_type="SEQ_CLS"))
    callbacks, guard = standard_callbacks(
        recipe, run, prepared, early_stopping=bool(t.early_stopping_patience) and val is not None
    )
    trainer = ClassificationTrainer(
        model=model,
        args=TrainingArguments(**args),
        train_dataset=data["train"],
        eval_dataset=val,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=trainer_metrics(len(labels)),
        callbacks=[*callbacks, *extra_callbacks],
        class_weights=class_weights(recipe, list(data["train"]["labels"]), labels),
        focal_gamma=t.focal_gamma,
        label_smoothing=t.label_smoothing,
    )
    trainer.remove_callback(PrinterCallback)
    return trainer, guard


def save(trainer, recipe: Recipe, run: RunDir, base: str, tokenizer, labels, precision: str, prepared) -> None:
    """The adapter (or full model), tokenizer, label map and cleaning steps: everything predict needs."""
    if run.adapter.exists():
        shutil.rmtree(run.adapter)
    trainer.model.save_pretrained(str(run.adapter), safe_serialization=True)
    tokenizer.save_pretrained(str(run.adapter))
    meta = {
        "adapterlab_version": __version__,
        "task": "classify",
        "base_model": {"spec": recipe.model.base, "resolved": base},
        "model": recipe.model.model_dump(mode="json"),
        "full_finetune": recipe.lora.full_finetune,
        "precision": precision,
        "labels": labels,
        "text_columns": recipe.data.text_columns,
        "label_column": recipe.data.label_column,
        "id_column": recipe.data.id_column,
        "clean": recipe.data.clean.steps("classify"),
        "max_tokens": recipe.data.max_tokens,
        "data_fingerprint": prepared["fingerprint"],
    }
    write_json(run.adapter / "adapterlab.json", meta)


def write_summary(trainer, recipe, run, precision, output, final_eval, resume_from, labels) -> dict[str, Any]:
    import torch

    from adapterlab.eval.classify_metrics import classification_metrics

    train_labels = list(trainer.train_dataset["labels"])
    majority = max(set(train_labels), key=train_labels.count)
    val_labels = list(trainer.eval_dataset["labels"]) if trainer.eval_dataset is not None else []
    majority_val = classification_metrics(val_labels, [majority] * len(val_labels), len(labels)) if val_labels else {}
    state = trainer.state
    summary = {
        "name": recipe.name,
        "task": "classify",
        "base_model": recipe.model.base,
        "method": "full" if recipe.lora.full_finetune else ("qlora" if recipe.model.quantization == "4bit" else "lora"),
        "precision": precision,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "labels": labels,
        "steps": state.global_step,
        "epochs": round(state.epoch or 0.0, 3),
        "train_examples": len(trainer.train_dataset),
        "val_examples": len(val_labels),
        "train_loss": output.metrics.get("train_loss"),
        "train_runtime_s": output.metrics.get("train_runtime"),
        "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "best_checkpoint": state.best_model_checkpoint,
        "best_metric": state.best_metric,
        "metric_for_best": recipe.train.metric_for_best,
        "stopped_early": state.global_step < state.max_steps,
        "resumed_from": str(resume_from) if resume_from else None,
        "val": {k.removeprefix("eval_"): v for k, v in final_eval.items() if isinstance(v, float)},
        "majority_val_weighted_f1": majority_val.get("weighted_f1", float("nan")),
        "adapter": str(run.adapter),
    }
    write_json(run.summary, summary)
    return summary
