"""The ``classify`` trainer: LoRA / QLoRA / full fine-tuning of a sequence classifier.

An encoder or a decoder with a fresh classification head over the training split's labels, LoRA with the head
trained in full (or every weight), transformers' Trainer with the imbalance-aware loss of
:func:`adapterlab.training.losses.classification_loss`, and the checkpoint with the best validation metric
restored at the end; then the run's shipped classifier is chosen on validation among the fine-tuned encoder,
logistic regression on the (contrastively tuned) base's embeddings, TF-IDF + logistic regression and their averages
(:mod:`adapterlab.tasks.classify.select`).

``train.epochs: auto`` adapts the schedule to the data size (:func:`auto_epochs`).
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
from transformers import Trainer

from adapterlab.console import console
from adapterlab.data.tokenized import load_tokenized
from adapterlab.errors import RecipeError, TrainingError
from adapterlab.memory import tune_cpu_memory
from adapterlab.metrics.classification import classification_metrics, trainer_metrics
from adapterlab.runs import read_json, read_jsonl
from adapterlab.task import TrainContext
from adapterlab.tasks.classify.embedding import Embedder, EmbeddingModel
from adapterlab.tasks.classify.select import Selection, needed_parts, select
from adapterlab.tasks.classify.tfidf import TfidfModel
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
        self.selection: Selection | None = None  # what ships, set after training (adapter_info)
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


AUTO_EXAMPLE_PASSES = 1200  # train.epochs: auto -> about this many examples seen ...
AUTO_EPOCHS = (3, 10)  # ... in 3 to 10 epochs


def auto_epochs(train_examples: int) -> int:
    """Epochs for ``train.epochs: auto``: few texts need more passes, many need fewer (and the time stays bounded:
    on the bundled reviews and the drugs.com dev set the validation F1 peaked in the first 2-3 epochs)."""
    low, high = AUTO_EPOCHS
    return max(low, min(high, math.ceil(AUTO_EXAMPLE_PASSES / max(train_examples, 1))))


def resolved(recipe, train_examples: int):
    """The recipe with ``train.epochs: auto`` settled for this training split."""
    if recipe.train.epochs != "auto":
        return recipe
    epochs = auto_epochs(train_examples)
    console.print(f"train.epochs: auto -> {epochs} epochs for {train_examples} training examples")
    return recipe.model_copy(update={"train": recipe.train.model_copy(update={"epochs": float(epochs)})})


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
    recipe = ctx.recipe = resolved(recipe, len(data["train"]))
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


def encoder_probabilities(model, dataset, tokenizer, batch_size: int):
    """The model's class probabilities on a tokenised split, in the split's order (the order its labels have)."""
    from transformers import DataCollatorWithPadding

    collate, device = DataCollatorWithPadding(tokenizer), next(model.parameters()).device
    was_training, chunks = model.training, []
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(dataset), batch_size):
            batch = collate([{"input_ids": ids} for ids in dataset[start : start + batch_size]["input_ids"]])
            logits = model(**{k: v.to(device) for k, v in batch.items()}).logits.float()
            chunks.append(torch.softmax(logits, dim=-1).cpu().numpy())
    model.train(was_training)
    return np.concatenate(chunks)


def choose_shipped(trainer, ctx: TrainContext) -> Selection:
    """Train the cheap parts that ``select.candidates`` needs on the training split and score every option on the
    validation split (the fine-tuned encoder's best checkpoint is loaded)."""
    recipe, labels = ctx.recipe, labels_of(ctx)
    metric = "weighted_f1" if recipe.train.metric_for_best == "loss" else recipe.train.metric_for_best
    val = trainer.eval_dataset
    if val is None:
        return select(recipe.select.candidates, metric, {}, [], len(labels))
    needed = needed_parts(recipe.select.candidates)
    train_rows, val_rows = read_jsonl(ctx.run.split_file("train")), read_jsonl(ctx.run.split_file("val"))
    train_texts, val_texts = [r["text"] for r in train_rows], [r["text"] for r in val_rows]
    train_labels = [r["label_id"] for r in train_rows]
    probs = {"finetuned": encoder_probabilities(trainer.model, val, ctx.tokenizer,
                                                trainer.args.per_device_eval_batch_size)}  # fmt: skip
    models: dict[str, Any] = {}
    if "tfidf" in needed:
        models["tfidf"] = TfidfModel.fit(train_texts, train_labels, len(labels), recipe.seed)
        probs["tfidf"] = models["tfidf"].predict_proba(val_texts)
    if "embedding" in needed:
        models["embedding"] = embedding_part(recipe, ctx.base, ctx.tokenizer, ctx.precision, train_texts, train_labels,
                                             len(labels))  # fmt: skip
        probs["embedding"] = models["embedding"].predict_proba(val_texts)
    chosen = select(recipe.select.candidates, metric, probs, [int(x) for x in val["labels"]], len(labels), models,
                    recipe.select.tolerance)  # fmt: skip
    if "embedding" in models and models["embedding"].contrastive:
        chosen.details["contrastive"] = models["embedding"].contrastive
    return chosen


def embedding_part(recipe, base: str, tokenizer, precision: str, texts: list[str], labels: list[int],
                   num_labels: int) -> EmbeddingModel:  # fmt: skip
    """Logistic regression on the base encoder's embeddings of the training texts, the encoder first tuned on pairs
    of them (``select.contrastive_pairs``; a copy: the fine-tuned part is not touched). The tuned embedder stays
    attached, to embed the validation texts and to be saved with the part. Also used by
    benchmarks/classify_quality.py to train the part again for runs that did not ship it."""
    from adapterlab.tasks.classify import contrastive
    from adapterlab.tasks.classify.embedding import TUNED_ENCODER

    began = time.perf_counter()
    embedder = Embedder.load(base, recipe.model, tokenizer)
    pairs = contrastive.draw_pairs(labels, recipe.select.contrastive_pairs, recipe.select.contrastive_max_pairs,
                                   recipe.seed)  # fmt: skip
    stats = None
    if pairs:
        stats = contrastive.tune(embedder.model, tokenizer, texts, pairs, precision, recipe.seed)
        console.print(f"Contrastive stage: {stats.pairs} pairs ({stats.pairs_per_text:.1f} + "
                      f"{stats.pairs_per_text:.1f} per text) in {stats.seconds:.0f} s, cosine loss "
                      f"{stats.first_loss:.3f} -> {stats.last_loss:.3f}")  # fmt: skip
        embedder.model.eval()
    model = EmbeddingModel.fit(embedder.embed(texts), labels, num_labels, recipe.seed, embedder).attach(embedder)
    if stats is not None:
        model.encoder, model.contrastive = TUNED_ENCODER, stats.as_dict()
    kind = "the contrastively tuned base" if stats is not None else "the frozen base"
    console.print(f"Embedding part: {len(texts)} training texts embedded by {kind} and a logistic regression "
                  f"fitted in {time.perf_counter() - began:.0f} s")  # fmt: skip
    return model


def adapter_info(trainer, ctx: TrainContext) -> dict[str, Any]:
    """The label map, the cleaning and the length rule: what predict and serve need to see a text as training did;
    and what ships (the parts and their weights; the embedding and TF-IDF parts are saved by :func:`save_extras`)."""
    data = ctx.recipe.data
    trainer.selection = choose_shipped(trainer, ctx)
    console.print(f"[bold]Shipped[/bold]: {trainer.selection.chosen} ({trainer.selection.reason})")
    return {
        "full_finetune": ctx.recipe.lora.full_finetune,
        "labels": labels_of(ctx),
        "text_columns": data.text_columns,
        "label_column": data.label_column,
        "id_column": data.id_column,
        "clean": data.clean.steps(),
        "max_tokens": ctx.prepared["report"].get("max_tokens", data.max_tokens),
        "truncation": data.truncation,
        "shipped": trainer.selection.chosen,
        "weights": trainer.selection.weights,
        "encoder_weight": trainer.selection.encoder_weight,
        "tfidf": "tfidf" in trainer.selection.models,
        "embedding": "embedding" in trainer.selection.models,
    }


def save_extras(trainer, ctx: TrainContext) -> None:
    """The embedding and TF-IDF parts beside the encoder when what ships uses them."""
    if trainer.selection is not None:
        for model in trainer.selection.models.values():
            model.save(ctx.run.adapter)


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
        "selection": trainer.selection.summary() if trainer.selection is not None else None,
        "max_tokens": ctx.prepared["report"].get("max_tokens"),
        "epochs_planned": ctx.recipe.train.epochs,
    }


def print_outcome(summary: dict[str, Any]) -> None:
    best = summary["metric_for_best"]
    if summary["val"]:
        console.print(
            f"[bold]Validation[/bold] {best} {summary['val'].get(best, float('nan')):.4f}  "
            f"(majority-class baseline weighted F1 {summary['majority_val_weighted_f1']:.4f})"
        )
    if summary.get("selection"):
        console.print(f"[bold]Shipped[/bold] {summary['selection']['chosen']}: {summary['selection']['reason']}")
    console.print(f"[bold green]Classifier adapter saved[/bold green] to {summary['adapter']}")
