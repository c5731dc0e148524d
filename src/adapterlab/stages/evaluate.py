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
from adapterlab.runs import ADAPTER_INFO, AdapterInfo, RunDir, read_jsonl, write_jsonl
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


BENCHMARKS = ("humaneval",)


def benchmark(
    target: str | Path, name: str, *, samples: int = 1, limit: int | None = None, precision: str = "auto",
    max_new_tokens: int = 384, out: str | Path | None = None, prompts: str = "auto",
) -> dict[str, Any]:  # fmt: skip
    """A public benchmark for a run's base and adapter, or for a base model alone (``target`` a model: ``default``,
    a directory or a hub id); the report goes to ``RUN/eval/<benchmark>/`` (or ``out``)."""
    from adapterlab.generation import TransformersGenerator
    from adapterlab.generative.benchmark import humaneval
    from adapterlab.models import load_with_adapter, pick_precision

    if name not in BENCHMARKS:
        raise DataError(f"--benchmark {name}: unknown; choose from {', '.join(BENCHMARKS)}")
    precision = pick_precision(precision)
    path = Path(target)
    if path.is_dir() and ((path / ADAPTER_INFO).is_file() or (path / "adapter" / ADAPTER_INFO).is_file()):
        info = AdapterInfo.read(path)
        if not get_task(info.task).generative:
            raise DataError(f"{path}: a {info.task} adapter; HumanEval needs a generative (chat model) adapter")
        model, tokenizer = load_with_adapter(info, precision, adapter_name="adapter")
        run_root = path if (path / "adapter").is_dir() else path.parent
        systems, folder = ["base", "adapter"], Path(out) if out else RunDir(run_root).eval / name
        system_prompt = info.task_info.get("prompt", {}).get("system_prompt")
        describe = {"base_model": info.base_model.spec, "adapter": str(info.path)}
    else:
        from adapterlab.config import ModelConfig
        from adapterlab.models import load_causal_lm, load_tokenizer, resolve_base

        if path.is_dir() and (path / "recipe.resolved.yaml").is_file():
            raise DataError(f"{path}: a run without a trained adapter (no adapterlab.json); train it first")
        base = resolve_base(str(target))
        model, tokenizer = load_causal_lm(base, ModelConfig(), precision), load_tokenizer(base)
        model.eval()
        systems, system_prompt = ["base"], None
        folder = Path(out) if out else Path("runs") / f"{name}-{Path(str(target)).name}"
        describe = {"base_model": str(target)}
    generator = TransformersGenerator(model, tokenizer, 16)
    report = humaneval(generator, systems, folder, system_prompt=system_prompt, samples=samples, limit=limit,
                       max_new_tokens=max_new_tokens, describe=describe, style=prompts)  # fmt: skip
    return report.data
