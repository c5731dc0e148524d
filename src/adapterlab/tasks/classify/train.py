"""The ``classify`` trainer: LoRA / QLoRA / full fine-tuning of a sequence classifier.

An encoder or a decoder with a fresh classification head over the training split's labels, LoRA with the head
trained in full (or every weight), transformers' Trainer with the imbalance-aware loss of
:func:`adapterlab.training.losses.classification_loss`, and the checkpoint with the best validation metric
restored at the end.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import Trainer

from adapterlab.console import console
from adapterlab.data.tokenized import load_tokenized
from adapterlab.errors import RecipeError, TrainingError
from adapterlab.memory import tune_cpu_memory
from adapterlab.metrics.classification import classification_metrics, trainer_metrics
from adapterlab.runs import read_json
from adapterlab.task import TrainContext
from adapterlab.training.arguments import trainer_arguments
from adapterlab.training.callbacks import standard_callbacks
from adapterlab.training.distributed import GradientAveraging
from adapterlab.training.losses import balanced_class_weights, classification_loss
from adapterlab.training.progress import TrainingProgress
from adapterlab.training.samplers import SeededLengthGrouping


class ClassificationTrainer(TrainingProgress, GradientAveraging, SeededLengthGrouping, Trainer):
    """transformers' Trainer with the imbalance-aware loss (class weights, focal modulation, label smoothing)."""

    def __init__(self, *args, class_weights=None, focal_gamma: float = 0.0, label_smoothing: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.class_weights = class_weights
        self.focal_gamma = focal_gamma
        self.label_smoothing = label_smoothing
        # The loss below is a per-batch mean; the Trainer then averages it over gradient-accumulation steps.
        self.model_accepts_loss_kwargs = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        weights = None if self.class_weights is None else self.class_weights.to(outputs.logits.device)
        loss = classification_loss(outputs.logits, labels, weights, self.focal_gamma, self.label_smoothing)
        return (loss, outputs) if return_outputs else loss


def labels_of(ctx: TrainContext) -> list[str]:
    return read_json(ctx.run.label_map)["labels"]


def class_weights(recipe, train_label_ids: list[int], labels: list[str]):
    setting = recipe.train.class_weights
    if setting is None:
        return None
    if setting == "balanced":
        return balanced_class_weights(train_label_ids, len(labels))
    unknown = sorted(set(setting) - set(labels))
    if unknown:
        raise RecipeError(f"train.class_weights: label '{unknown[0]}' is not one of the labels {labels}")
    return torch.tensor([float(setting.get(label, 1.0)) for label in labels])


def build_trainer(ctx: TrainContext):
    from peft import get_peft_model
    from transformers import DataCollatorWithPadding, PrinterCallback, TrainingArguments

    from adapterlab.models import load_sequence_classifier, peft_lora_config

    recipe, run = ctx.recipe, ctx.run
    labels = labels_of(ctx)
    data = load_tokenized(run.tokenized)
    if data["train"] is None:
        raise TrainingError(f"{run.data_report}: no training examples left after preparation")
    val = data["val"]
    t = recipe.train
    tune_cpu_memory(t.keep_freed_memory)
    args = trainer_arguments(recipe, run, ctx.precision, has_val=val is not None)
    if val is not None:  # keep and restore the checkpoint with the best validation metric
        args.update(load_best_model_at_end=True, metric_for_best_model=t.metric_for_best,
                    greater_is_better=t.metric_for_best != "loss")  # fmt: skip
    # Weights stay fp32 (the head and, in full fine-tuning, every weight is trained); bf16 runs as autocast.
    model = load_sequence_classifier(ctx.base, recipe.model, labels, ctx.tokenizer.pad_token_id, "fp32")
    if not recipe.lora.full_finetune:
        model = get_peft_model(model, peft_lora_config(recipe.lora, task_type="SEQ_CLS"))
    callbacks, guard = standard_callbacks(
        recipe, run, ctx.prepared, early_stopping=bool(t.early_stopping_patience) and val is not None
    )
    trainer = ClassificationTrainer(
        model=model,
        args=TrainingArguments(**args),
        train_dataset=data["train"],
        eval_dataset=val,
        processing_class=ctx.tokenizer,
        data_collator=DataCollatorWithPadding(ctx.tokenizer),
        compute_metrics=trainer_metrics(len(labels)),
        callbacks=[*callbacks, *ctx.callbacks],
        class_weights=class_weights(recipe, list(data["train"]["labels"]), labels),
        focal_gamma=t.focal_gamma,
        label_smoothing=t.label_smoothing,
    )
    trainer.remove_callback(PrinterCallback)
    return trainer, guard


def adapter_info(trainer, ctx: TrainContext) -> dict[str, Any]:
    """The label map and the cleaning: what predict and serve need to see a text as training did."""
    data = ctx.recipe.data
    return {
        "full_finetune": ctx.recipe.lora.full_finetune,
        "labels": labels_of(ctx),
        "text_columns": data.text_columns,
        "label_column": data.label_column,
        "id_column": data.id_column,
        "clean": data.clean.steps(),
        "max_tokens": data.max_tokens,
    }


def summarise(trainer, ctx: TrainContext, final_eval: dict, before: dict) -> dict[str, Any]:
    labels = labels_of(ctx)
    train_labels = list(trainer.train_dataset["labels"])
    majority = max(set(train_labels), key=train_labels.count)
    val_labels = list(trainer.eval_dataset["labels"]) if trainer.eval_dataset is not None else []
    majority_val = classification_metrics(val_labels, [majority] * len(val_labels), len(labels)) if val_labels else {}
    return {
        "labels": labels,
        "best_metric": trainer.state.best_metric,
        "metric_for_best": ctx.recipe.train.metric_for_best,
        "val": {k.removeprefix("eval_"): v for k, v in final_eval.items() if isinstance(v, float)},
        "majority_val_weighted_f1": majority_val.get("weighted_f1", float("nan")),
    }


def print_outcome(summary: dict[str, Any]) -> None:
    best = summary["metric_for_best"]
    if summary["val"]:
        console.print(
            f"[bold]Validation[/bold] {best} {summary['val'].get(best, float('nan')):.4f}  "
            f"(majority-class baseline weighted F1 {summary['majority_val_weighted_f1']:.4f})"
        )
    console.print(f"[bold green]Classifier adapter saved[/bold green] to {summary['adapter']}")
