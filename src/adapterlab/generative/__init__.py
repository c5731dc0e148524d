"""What every generative task shares: a LoRA adapter on a causal chat model, learning replies rendered by the
base model's own chat template.

:class:`GenerativeTask` wires the shared pieces to the stages: the prepared files (:mod:`.examples`), the trainer
with completion-only loss, golden prompts and the base model's validation loss (:mod:`.train`), the base-vs-adapter
evaluation with the text metrics (:mod:`.evaluate`) and the merged model for export (:mod:`.infer`). A generative
task (``chat``, ``dialogue`` ...) subclasses it and brings its recipe class and formatter (rows -> examples), and
overrides a hook only where it adds something (``dialogue``'s evaluation adds style scores). The heavy modules are
imported when a stage calls a hook, so reading a recipe stays cheap.
"""

from __future__ import annotations

from typing import Any

from adapterlab.generative.examples import finish_splits, note_lines, write_examples
from adapterlab.task import Task


class GenerativeTask(Task):
    generative = True
    export_formats = ("merged", "gguf")
    # What ``adapterlab compare`` shows of this task's test set for the base and every adapter.
    headline: tuple[str, ...] = ("rougeL", "bertscore")

    def finish(self, recipe, by_split, pool, ledger, formatter) -> dict[str, Any]:
        return finish_splits(by_split)

    def report_lines(self, report) -> list[tuple[str, str]]:
        return note_lines(report)

    def write_examples(self, run, by_split, report) -> None:
        write_examples(run, by_split)

    def build_trainer(self, ctx):
        from adapterlab.generative import train

        return train.build_trainer(ctx)

    def before_training(self, trainer, ctx, resume_from):
        from adapterlab.generative import train

        return train.evaluate_base(trainer, ctx, resume_from)

    def adapter_info(self, trainer, ctx):
        from adapterlab.generative import train

        return train.adapter_info(trainer, ctx)

    def summarise(self, trainer, ctx, final_eval, before):
        from adapterlab.generative import train

        return train.summarise(trainer, ctx, final_eval, before)

    def print_outcome(self, summary) -> None:
        from adapterlab.generative import train

        train.print_outcome(summary)

    def evaluate(self, ctx):
        from adapterlab.generative import evaluate

        return evaluate.evaluate(ctx, self)

    def scoring(self, ctx, generator, decoding, outputs) -> dict[str, Any]:
        """Extra fields of the metrics' TextContext that this task's own metrics need (none by default)."""
        return {}

    def scoring_notes(self, scoring) -> list[str]:
        """Lines the report adds to its settings (what the task's scoring did, e.g. that code was executed)."""
        return []

    def prediction_fields(self, scoring, outputs):
        """None, or ``(index, system) -> dict`` of extra per-reply fields for predictions.jsonl."""
        return None

    def scored_text(self, text: str) -> str:
        """What of a reply (and of a reference) the metrics score: all of it by default."""
        return text

    def merged_model(self, info, precision):
        from adapterlab.generative.infer import merged_model

        return merged_model(info, precision)
