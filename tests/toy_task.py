"""A toy task that lives outside the package: ``shout`` (a column's text -> the same text in capitals).

It is the example of docs/tasks.md and proves the seam: a unit test registers it in-process and runs it through
prepare -> train -> evaluate with no change to any stage. Everything task-shaped is here: its recipe class, its
formatter and prepared files, its trainer (built from adapterlab.training pieces), its metric (one registry
entry) and its report; the stages and the core are used as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field

from adapterlab import metrics
from adapterlab.config import DataConfig, EvalConfig, RecipeBase
from adapterlab.generation import BASE, Decoding, TransformersGenerator
from adapterlab.metrics.bootstrap import paired_bootstrap
from adapterlab.metrics.stats import mean_stats
from adapterlab.rendering import encode_chat, encode_prompt
from adapterlab.report import Report, Table, comparison_rows
from adapterlab.runs import write_jsonl
from adapterlab.task import Dropped, Evaluation, Task

ADAPTER = "adapter"


# ------------------------------------------------------------------------------------ config.py: the recipe


class ShoutData(DataConfig):
    text_column: str = Field("text", description="the text to shout")


class ShoutEval(EvalConfig):
    max_new_tokens: int = Field(16, gt=0)


class ShoutRecipe(RecipeBase):
    task: Literal["shout"] = "shout"
    data: ShoutData
    eval: ShoutEval = Field(default_factory=ShoutEval)

    def data_columns(self) -> dict[str, str]:
        return {self.data.text_column: "data.text_column", **super().data_columns()}


# ------------------------------------------------------------------------ format.py: rows -> examples, files


@dataclass
class ShoutExample:
    messages: list[dict[str, str]]
    reply: str
    input_ids: list[int]
    completion_mask: list[int]
    truncated: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    pending = False

    def dedupe_key(self) -> tuple[str, Any]:
        return self.reply, None

    def lengths(self) -> dict[str, int]:
        return {"total_tokens": len(self.input_ids)}


class ShoutFormatter:
    def __init__(self, recipe: ShoutRecipe, tokenizer):
        self.tokenizer, self.column = tokenizer, recipe.data.text_column

    def format(self, row: dict[str, str | None]) -> ShoutExample | Dropped:
        text = (row.get(self.column) or "").strip()
        if not text:
            return Dropped("empty_field", f"column '{self.column}' is empty")
        messages = [{"role": "user", "content": text}]
        prompt = encode_prompt(self.tokenizer, messages)
        full = encode_chat(self.tokenizer, [*messages, {"role": "assistant", "content": text.upper()}])
        return ShoutExample(messages, text.upper(), full, [0] * len(prompt) + [1] * (len(full) - len(prompt)))


def write_examples(run, by_split) -> None:
    from datasets import Dataset, DatasetDict

    for name, rows in by_split.items():
        write_jsonl(
            run.split_file(name), [{"id": e.meta["id"], "messages": e.messages, "reply": e.reply} for e in rows]
        )
    columns = {
        name: {"input_ids": [e.input_ids for e in rows], "completion_mask": [e.completion_mask for e in rows]}
        for name, rows in by_split.items()
    }
    DatasetDict({name: Dataset.from_dict(c) for name, c in columns.items()}).save_to_disk(str(run.tokenized))


# ------------------------------------------------------------------------------- train.py: the trainer


def collate(pad_id: int):
    import torch

    def batch(rows: list[dict]) -> dict:
        width = max(len(r["input_ids"]) for r in rows)
        ids = [r["input_ids"] + [pad_id] * (width - len(r["input_ids"])) for r in rows]
        labels = [
            [t if m else -100 for t, m in zip(r["input_ids"], r["completion_mask"], strict=True)]
            + [-100] * (width - len(r["input_ids"]))
            for r in rows
        ]
        mask = [[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in rows]
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "attention_mask": torch.tensor(mask)}

    return batch


def build_trainer(ctx):
    from datasets import load_from_disk
    from peft import get_peft_model
    from transformers import Trainer, TrainingArguments

    from adapterlab.models import load_causal_lm, peft_lora_config
    from adapterlab.training.arguments import trainer_arguments
    from adapterlab.training.callbacks import standard_callbacks
    from adapterlab.training.losses import completion_loss
    from adapterlab.training.progress import TrainingProgress

    class ShoutTrainer(TrainingProgress, Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss, _ = completion_loss(model, inputs, num_items_in_batch)
            return (loss, {"loss": loss}) if return_outputs else loss

    data = load_from_disk(str(ctx.run.tokenized))
    model = get_peft_model(load_causal_lm(ctx.base, ctx.recipe.model, ctx.precision), peft_lora_config(ctx.recipe.lora))
    arguments = trainer_arguments(ctx.recipe, ctx.run, ctx.precision, has_val=len(data["val"]) > 0)
    callbacks, guard = standard_callbacks(ctx.recipe, ctx.run, ctx.prepared, early_stopping=False)
    trainer = ShoutTrainer(
        model=model,
        args=TrainingArguments(**arguments, remove_unused_columns=False),
        train_dataset=data["train"],
        eval_dataset=data["val"] if len(data["val"]) else None,
        data_collator=collate(ctx.tokenizer.pad_token_id),
        callbacks=[*callbacks, *ctx.callbacks],
    )
    return trainer, guard


# ------------------------------------------------------------------- evaluate.py: one metric, one report


def exact_match(replies, ctx, _system):
    return {
        "exact_match": mean_stats([float(r.strip() == ref) for r, ref in zip(replies, ctx.references, strict=True)])
    }


def register_metric() -> None:
    if "exact_match" not in metrics.REGISTRY:  # one entry: the scorer, the report and the chart read it from here
        metrics.register(
            metrics.Family(
                "exact_match",
                "text",
                (metrics.Metric("exact_match", "exact match", True, percent=True),),
                exact_match,
                default=False,  # a task's own metric: not added to every text task's defaults
            )
        )


def evaluate(ctx) -> Evaluation:
    from adapterlab.models import load_with_adapter

    model, tokenizer = load_with_adapter(ctx.info, ctx.precision, adapter_name=ADAPTER)
    generator = ctx.generator or TransformersGenerator(model, tokenizer)
    decoding = Decoding(max_new_tokens=ctx.recipe.eval.max_new_tokens)
    prompts = [r["messages"] for r in ctx.rows]
    replies = {system: [g.text for g in generator.generate(prompts, system, decoding)] for system in (BASE, ADAPTER)}
    scoring = metrics.TextContext([r["reply"] for r in ctx.rows], [], [], ctx.recipe.eval)
    scored, _ = metrics.score(["exact_match"], replies, scoring)
    delta = paired_bootstrap(
        scored["exact_match"].systems[BASE],
        scored["exact_match"].systems[ADAPTER],
        ctx.recipe.eval.bootstrap,
        ctx.recipe.seed,
    )
    entry = {
        "label": "exact match",
        "base": delta.base,
        "adapter": delta.adapter,
        "delta": delta.delta,
        "ci95": [delta.low, delta.high],
        "excludes_zero": delta.excludes_zero,
        "higher_is_better": True,
    }
    data = {"name": ctx.recipe.name, "n_examples": len(ctx.rows), "metrics": {"exact_match": entry}}
    table = Table(
        ["metric", "base", "adapter", "delta", "95% CI", "verdict"],
        comparison_rows(data["metrics"], [BASE, ADAPTER]),
        terminal=True,
        verdict=True,
    )
    predictions = [
        {"id": r["id"], "base": b, "adapter": a} for r, b, a in zip(ctx.rows, *replies.values(), strict=True)
    ]
    return Evaluation(Report(f"Evaluation: {ctx.recipe.name}", data, [table]), predictions)


# ---------------------------------------------------------------------------- __init__.py: the task


class ShoutTask(Task):
    name = "shout"
    recipe = ShoutRecipe
    generative = True
    summary = "a column's text -> the same text in capitals (the docs' example task)"

    def formatter(self, recipe, tokenizer):
        return ShoutFormatter(recipe, tokenizer)

    def write_examples(self, run, by_split, report) -> None:
        write_examples(run, by_split)

    def build_trainer(self, ctx):
        return build_trainer(ctx)

    def adapter_info(self, trainer, ctx) -> dict[str, Any]:
        return {"text_column": ctx.recipe.data.text_column}

    def evaluate(self, ctx) -> Evaluation:
        register_metric()
        return evaluate(ctx)
