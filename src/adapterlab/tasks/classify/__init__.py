"""``classify``: text columns -> one label, with a heavy class imbalance in mind.

The hooks below wire this folder's modules to the stages; the heavy ones (trainer, evaluation, inference) are
imported when a stage calls them, so reading a recipe stays cheap.
"""

from __future__ import annotations

from typing import Any

from adapterlab.task import Task
from adapterlab.tasks.classify import labels
from adapterlab.tasks.classify.config import ClassifyRecipe
from adapterlab.tasks.classify.format import ClassifyFormatter, write_examples


class ClassifyTask(Task):
    name = "classify"
    recipe = ClassifyRecipe
    generative = False
    summary = "text columns -> one label (weak labels, augmentation, class quotas)"
    export_formats = ("merged", "onnx")

    def formatter(self, recipe, tokenizer):
        return ClassifyFormatter(recipe, tokenizer)

    def finish(self, recipe, by_split, pool, ledger, formatter) -> dict[str, Any]:
        return labels.finish(recipe, by_split, pool, ledger, formatter)

    def write_examples(self, run, by_split, report) -> None:
        write_examples(run, by_split, report["labels"])

    def report_lines(self, report) -> list[tuple[str, str]]:
        lines = [
            ("classes (train)", ", ".join(f"{k} {v}" for k, v in report["classes"]["train"].items())),
            ("imbalance (largest / smallest)", str(report["imbalance_ratio"])),
        ]
        for stage in ("augment", "rebalance"):
            if stage in report:
                lines.append((stage, ", ".join(f"{k} {v}" for k, v in report[stage].items())))
        return lines

    def build_trainer(self, ctx):
        from adapterlab.tasks.classify import train

        return train.build_trainer(ctx)

    def adapter_info(self, trainer, ctx):
        from adapterlab.tasks.classify import train

        return train.adapter_info(trainer, ctx)

    def save_extras(self, trainer, ctx):
        from adapterlab.tasks.classify import train

        train.save_extras(trainer, ctx)

    def summarise(self, trainer, ctx, final_eval, before):
        from adapterlab.tasks.classify import train

        return train.summarise(trainer, ctx, final_eval, before)

    def print_outcome(self, summary) -> None:
        from adapterlab.tasks.classify import train

        train.print_outcome(summary)

    def validation_score(self, summary):
        """The validation score of what the run shipped (its option in the selection), by the selection's metric."""
        selection = summary.get("selection") or {}
        option = selection.get("option") or selection.get("chosen")
        if option == "ensemble" and selection.get("weights"):  # runs from before "option" was recorded
            option = "ensemble " + "+".join(selection["weights"])
        if option in (selection.get("candidates") or {}):
            return selection["metric"], float(selection["candidates"][option]), True
        metric = summary.get("metric_for_best") or "weighted_f1"
        metric = "weighted_f1" if metric == "loss" else metric
        return metric, float((summary.get("val") or {}).get(metric, float("nan"))), True

    def ensemble(self, members, single, adapter_dir):
        from adapterlab.tasks.classify.infer import write_ensemble

        write_ensemble(members, single, adapter_dir)
        return True

    def evaluate(self, ctx):
        from adapterlab.tasks.classify import evaluate

        return evaluate.evaluate(ctx)

    def predictor(self, info, precision, **options):
        from adapterlab.tasks.classify.infer import ClassifyPredictor

        return ClassifyPredictor(info, precision, **options)

    def merged_model(self, info, precision):
        from adapterlab.tasks.classify.infer import merged_model

        return merged_model(info, precision)

    def load_served(self, info, precision, compiled=False):
        from adapterlab.tasks.classify.infer import Classifier

        classifier = Classifier.load(info, precision, compiled=compiled)
        # Warmed up now, not in the first request: one row alone, a padded pair (with a mask) and an unpadded pair
        # (rows cut at max_tokens are often all as long: no mask). Compiled, each is a graph of its own to compile
        # (20-50 s, under the lock every classify request waits on); eager, the kernels' first-call set-up (the
        # first request took 930 ms, not 30).
        classifier.predict_proba(["warm up"])
        classifier.predict_proba(["warm up", "warm up the classifier with a longer text"])
        classifier.predict_proba(["warm up", "warm up"])
        return classifier


TASK = ClassifyTask()
