"""``adapterlab cv RECIPE --folds K``: a K-fold estimate of the validation score, and the fold models as an ensemble.

Reads top to bottom: the recipe's own run (trained and evaluated when it is not yet: the single model) -> its
training and validation rows pooled (weak-labelled, augmented and oversampled rows stay out of the folds: prepare
makes them again inside each fold's training split) -> K folds, stratified and group-aware like the split itself,
leak-free (a group never straddles folds; the test split is the run's own and never enters a fold) -> one
ordinary run per fold (``<name>-fold<k>``: prepare with ``split.from_ids``, train, evaluate; a fold already
evaluated from the same recipe on the same ids is kept, so an interrupted cross-validation goes on from the
first unfinished fold) -> each fold's validation score, their mean and spread -> when the task can average
models (classify), ``<name>-cv``: a run directory whose adapter averages the K fold models, evaluated on the same
test split against the single model and the task's baselines (``<name>-cv/eval/``) ->
``<name>-cv/report.json|md|html``.
"""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path
from typing import Any

from adapterlab.config import RecipeBase
from adapterlab.console import console
from adapterlab.data.split import SplitKey, split_into_folds
from adapterlab.errors import RecipeError
from adapterlab.registry import as_recipe, task_of
from adapterlab.report import Bullets, Report, Table, Text, fmt
from adapterlab.runs import AdapterInfo, RunDir, read_json, read_jsonl, write_json
from adapterlab.stages.evaluate import evaluate
from adapterlab.stages.pipeline import run

MAX_FOLDS = 20


def cross_validate(recipe: RecipeBase | str | Path, overrides: list[str] | None = None, *, folds: int = 5,
                   overwrite: bool = False) -> Report:  # fmt: skip
    """Train ``folds`` fold runs beside the recipe's own run and report their validation scores (and, for tasks
    that can average models, the fold ensemble on the test split). ``overwrite`` retrains every run."""
    recipe = as_recipe(recipe, overrides)
    task = task_of(recipe)
    if not 2 <= folds <= MAX_FOLDS:
        raise RecipeError(f"--folds {folds}: give 2 to {MAX_FOLDS} folds (5 is usual)")
    single = RunDir.for_recipe(recipe)
    if overwrite or not evaluated_with(single, recipe):
        console.rule(f"[bold]{recipe.name}[/bold]: the single model, on the recipe's own split")
        run(recipe, overwrite=True)
    keys, test_ids = fold_keys(recipe, single)
    assignment = split_into_folds(keys, folds, recipe.split_seed)
    if len(set(assignment)) < folds:
        raise RecipeError(f"--folds {folds}: only {len(keys)} training and validation rows (or groups) to share out; "
                          "use fewer folds")  # fmt: skip
    out = single.root.parent / f"{recipe.name}-cv"
    (out / "folds").mkdir(parents=True, exist_ok=True)
    fold_runs: list[RunDir] = []
    for k in range(folds):
        held = [key.id for key, f in zip(keys, assignment, strict=True) if f == k]
        rest = [key.id for key, f in zip(keys, assignment, strict=True) if f != k]
        ids = {"train": rest, "val": held, "test": test_ids}
        fold_runs.append(train_fold(recipe, k, folds, ids, out / "folds", overwrite))
    scores = [fold_summary(task, f) for f in fold_runs]
    data: dict[str, Any] = {
        "name": recipe.name, "folds": folds, "rows": len(keys), "single_run": str(single.root),
        "fold_runs": [str(f.root) for f in fold_runs], "per_fold": scores, "metric": scores[0]["metric"],
        "higher_is_better": scores[0]["higher_is_better"], "seed": recipe.split_seed,
    }  # fmt: skip
    values = [s["value"] for s in scores]
    data["mean"], data["stdev"] = statistics.fmean(values), statistics.stdev(values)
    data["min"], data["max"] = min(values), max(values)
    single_summary = read_json(single.summary) if single.summary.is_file() else {}
    data["single_validation"] = task.validation_score(single_summary)[1] if single_summary else None
    members = [AdapterInfo.read(f.root) for f in fold_runs]
    if task.ensemble(members, AdapterInfo.read(single.root), out / "adapter"):
        prepare_ensemble_run(recipe, single, out, data)
        console.rule(f"[bold]{recipe.name}-cv[/bold]: the {folds} fold models averaged, on the test split")
        data["ensemble"] = ensemble_summary(evaluate(out).report)
    report = build_report(data)
    report.write(out)
    report.print()
    return report


def fold_keys(recipe: RecipeBase, single: RunDir) -> tuple[list[SplitKey], list[str]]:
    """The pooled training and validation rows of the single run (each id once, original rows only) with their
    group and stratum, and the test ids."""
    saved = read_json(single.data / "splits.json")
    group_by, stratify = recipe.split.group_by, recipe.stratify_column
    keys: dict[str, SplitKey] = {}
    for name in ("train", "val"):
        for row in read_jsonl(single.split_file(name)):
            if row.get("weak") or row.get("augmented") or row.get("oversampled") or str(row.get("id")) in keys:
                continue
            source = row.get("source") or {}
            group = (source.get(group_by) or None) if group_by else None
            stratum = source.get(stratify) if stratify else None
            keys[str(row["id"])] = SplitKey(id=str(row["id"]), group=group, stratum=stratum)
    return list(keys.values()), [str(i) for i in saved["ids"]["test"]]


def train_fold(recipe: RecipeBase, k: int, folds: int, ids: dict[str, list[str]], folder: Path,
               overwrite: bool) -> RunDir:  # fmt: skip
    """One fold as an ordinary run; kept as it is when it was already evaluated on exactly these ids."""
    path = folder / f"fold-{k + 1}.splits.json"
    wanted = {"method": f"cross-validation fold {k + 1} of {folds}", "ids": ids}
    name = f"{recipe.name}-fold{k + 1}"
    fold = as_recipe(recipe, [f"name={name}", f"split.from_ids={path.resolve()}", "export=[]"])  # no fold exports
    fold_run = RunDir.for_recipe(fold)
    done = evaluated_with(fold_run, fold) and path.is_file()
    if done and not overwrite and json.loads(path.read_text())["ids"] == ids:
        console.print(f"fold {k + 1} of {folds}: already trained and evaluated on these ids ({fold_run.root})")
        return fold_run
    write_json(path, wanted)
    console.rule(f"[bold]{name}[/bold]: fold {k + 1} of {folds}, {len(ids['train'])} training and "
                 f"{len(ids['val'])} validation rows")  # fmt: skip
    run(fold, overwrite=True)
    return fold_run


def evaluated_with(run_dir: RunDir, recipe: RecipeBase) -> bool:
    """The run was trained from exactly this recipe and evaluated (a changed recipe means training again)."""
    if not (run_dir.eval_file("report.json").is_file() and run_dir.recipe_file.is_file()):
        return False
    return run_dir.recipe_file.read_text(encoding="utf-8") == recipe.to_yaml()


def fold_summary(task, fold_run: RunDir) -> dict[str, Any]:
    summary = read_json(fold_run.summary)
    metric, value, higher = task.validation_score(summary)
    return {"run": str(fold_run.root), "metric": metric, "value": value, "higher_is_better": higher,
            "train_examples": summary.get("train_examples"), "val_examples": summary.get("val_examples")}  # fmt: skip


def prepare_ensemble_run(recipe: RecipeBase, single: RunDir, out: Path, data: dict[str, Any]) -> None:
    """``<name>-cv`` as a run directory the evaluate stage reads: the single run's prepared splits (the test split
    is every fold's too) and recipe, and a summary saying what ships."""
    target = RunDir(out)
    target.data.mkdir(parents=True, exist_ok=True)
    for path in single.data.iterdir():
        if path.is_file():
            shutil.copy2(path, target.data / path.name)
    target.save_recipe(as_recipe(recipe, [f"name={recipe.name}-cv"]))
    reason = (f"the {data['folds']} fold models of `adapterlab cv` averaged; {data['folds']}-fold validation "
              f"{data['metric']} {data['mean']:.4f} +- {data['stdev']:.4f}")  # fmt: skip
    write_json(target.summary, {"selection": {"chosen": "folds", "reason": reason}, "cv": str(out / "report.json")})


def ensemble_summary(report: dict[str, Any]) -> dict[str, Any]:
    """The headline of the ensemble's evaluation: what the task's report says against the single model."""
    keep = ("systems", "ensemble_vs_single", "adapter_vs_tfidf", "n_examples")
    return {k: report[k] for k in keep if k in report}


def build_report(data: dict[str, Any]) -> Report:
    metric, folds = data["metric"], data["folds"]
    rows = [[str(i + 1), fmt(s["value"]), str(s["train_examples"]), str(s["val_examples"]), s["run"]]
            for i, s in enumerate(data["per_fold"])]  # fmt: skip
    better = "higher" if data["higher_is_better"] else "lower"
    headline = (f"{folds}-fold validation {metric}: {data['mean']:.4f} +- {data['stdev']:.4f} (sample standard "
                f"deviation; min {data['min']:.4f}, max {data['max']:.4f}; {better} is better)")  # fmt: skip
    blocks: list[Any] = [
        Bullets([
            f"Rows shared into folds: {data['rows']} (the single run's training and validation rows; its test split "
            "never enters a fold)",
            f"Folds: stratified and group-aware as the recipe's split, seed {data['seed']}",
            f"Single model (the recipe's own split): {data['single_run']}, validation {metric} "
            f"{fmt(data['single_validation'])}",
        ]),
        Text(headline, terminal=True),
        Table(["fold", f"validation {metric}", "training rows", "validation rows", "run"], rows,
              title=f"{data['name']}: {folds}-fold cross-validation", terminal=True),
    ]  # fmt: skip
    ensemble = data.get("ensemble")
    if ensemble and ensemble.get("ensemble_vs_single"):
        line = ensemble["ensemble_vs_single"]["line"]
        blocks.append(Text(f"Ensemble of the {folds} fold models on the test split: {line}", terminal=True))
    return Report(f"Cross-validation: {data['name']}", data, blocks)
