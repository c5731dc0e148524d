"""``adapterlab eval RUN``: the run's adapter against its base (and the task's baselines) on the test split.

Reads top to bottom and asks the task for the scoring: the run's resolved recipe -> the test rows prepared with
the run -> the adapter's description -> the task's evaluation (a report and per-example predictions) -> the
files: ``eval/predictions.jsonl`` and ``eval/report.json|md|html`` written by the one report writer. Pass a
``generator`` (anything with the :class:`adapterlab.generation.Generator` interface) to evaluate a generative
task through another backend without touching the task's scoring.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapterlab.errors import DataError
from adapterlab.registry import get_task, load_recipe, task_of
from adapterlab.runs import AdapterInfo, RunDir, read_jsonl, write_jsonl
from adapterlab.task import EvalContext


@dataclass
class EvalResult:
    run: RunDir
    report: dict[str, Any]


def evaluate(run_dir: str | Path, overrides: list[str] | None = None, *, generator=None) -> EvalResult:
    from transformers import set_seed

    from adapterlab.models import pick_precision

    run = RunDir(Path(run_dir))
    recipe = run_recipe(run, overrides)
    task = task_of(recipe)
    set_seed(recipe.seed)
    all_rows = test_rows(run)
    rows = all_rows[: recipe.eval.max_examples] if recipe.eval.max_examples else all_rows
    info = AdapterInfo.read(run.root)
    precision = pick_precision(recipe.eval.precision)
    ctx = EvalContext(recipe, run, info, rows, len(all_rows), precision, generator, StageTasks())
    evaluation = task.evaluate(ctx)
    write_jsonl(run.eval_file("predictions.jsonl"), evaluation.predictions)
    evaluation.report.write(run.eval)
    evaluation.report.print()
    return EvalResult(run, evaluation.report.data)


class StageTasks:
    """:class:`~adapterlab.task.TaskRunner` through the registry and the train stage."""

    def train(self, recipe: dict[str, Any]) -> RunDir:
        from adapterlab.registry import recipe_from_dict
        from adapterlab.stages.train import train

        return train(recipe_from_dict(recipe)).run

    def predictor(self, run_dir: Path, precision: str, **options: Any):
        info = AdapterInfo.read(run_dir)
        return get_task(info.task).predictor(info, precision, **options)


def run_recipe(run: RunDir, overrides: list[str] | None):
    if not run.recipe_file.is_file():
        raise DataError(f"{run.root}: not a run directory (no {run.recipe_file.name}); train first")
    return load_recipe(run.recipe_file, overrides)


def test_rows(run: RunDir) -> list[dict[str, Any]]:
    path = run.split_file("test")
    if not path.is_file():
        raise DataError(f"{path} not found: prepare the run first (adapterlab prepare)")
    rows = read_jsonl(path)
    if not rows:
        raise DataError(f"{path}: the test split is empty; give split.test a share of the data (e.g. 0.1)")
    return rows
