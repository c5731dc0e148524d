"""``adapterlab compare RUN RUN...``: the base and every run's adapter on every run's test split, in one report.

Reads top to bottom: the runs' recipes and adapters (generative adapters trained on one base) -> one loaded base
with every adapter attached under its run's name -> for each test split, with that run's prompts and decoding:
the base and each adapter generate, that run's task scores them with its headline metrics (a summary's ROUGE-L
and BERTScore, a program's pass rate and syntax validity ...), each adapter against the base with a paired
bootstrap interval -> a table (rows: test sets and metrics, columns: base and each adapter), a chart per test set,
and ``report.json|md|html`` in the output folder. What an adapter costs on another adapter's task is the cell of
its column in that row.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapterlab import metrics
from adapterlab.errors import DataError
from adapterlab.generation import BASE
from adapterlab.metrics.bootstrap import paired_bootstrap
from adapterlab.registry import task_of
from adapterlab.report import Bullets, Image, Report, Table, Text, comparison_chart, fmt, verdict
from adapterlab.runs import AdapterInfo, RunDir
from adapterlab.stages.evaluate import StageTasks, run_recipe, test_rows
from adapterlab.task import EvalContext


@dataclass
class Entry:
    run: RunDir
    recipe: Any
    task: Any
    info: AdapterInfo
    name: str


def compare(run_dirs: list[str | Path], out: str | Path | None = None, max_examples: int | None = None,
            precision: str = "auto", bootstrap: int = 1000, overrides: list[str] | None = None) -> Report:  # fmt: skip
    """``overrides``: dotted ``KEY=VALUE`` settings, as ``adapterlab eval`` takes them, applied to every run whose
    task has the key (``eval.samples=1``: greedy pass rates only, for the code runs)."""
    from transformers import set_seed

    from adapterlab.generation import TransformersGenerator
    from adapterlab.generative.evaluate import decoding_of, score_outputs
    from adapterlab.models import load_with_adapters, pick_precision

    entries = read_runs(run_dirs, overrides)
    precision = pick_precision(precision)
    model, tokenizer = load_with_adapters({e.name: e.info for e in entries}, precision)
    generator = TransformersGenerator(model, tokenizer, max(e.recipe.eval.batch_size for e in entries))
    systems = [BASE, *(e.name for e in entries)]
    folder = Path(out) if out else entries[0].run.root.parent / "compare"
    folder.mkdir(parents=True, exist_ok=True)
    sets: list[dict[str, Any]] = []
    for entry in entries:
        recipe = entry.recipe
        set_seed(recipe.seed)
        all_rows = test_rows(entry.run)
        rows = all_rows[:max_examples] if max_examples else all_rows
        ctx = EvalContext(recipe, entry.run, entry.info, rows, len(all_rows), precision, generator, StageTasks())
        decoding = decoding_of(recipe)
        prompts = [r["messages"] for r in rows]
        outputs = {s: generator.generate(prompts, s, decoding, label=f"{entry.name} test: {s}") for s in systems}
        headline = [m for m in entry.task.headline if metrics.family_of(m) in recipe.eval.metrics]
        families = list(dict.fromkeys(metrics.family_of(m) for m in headline))
        scoring, scored, not_computed = score_outputs(ctx, entry.task, generator, decoding, outputs, families)
        cells = {}
        for name in headline:
            if name not in scored:
                continue
            result = scored[name]
            cells[name] = {"label": metrics.label_of(name, recipe.eval), "base": result.systems[BASE].value,
                           "higher_is_better": metrics.metric(name).higher_is_better,
                           "percent": metrics.metric(name).percent, "adapters": {}}  # fmt: skip
            for system in systems[1:]:
                delta = paired_bootstrap(result.systems[BASE], result.systems[system], bootstrap, recipe.seed)
                cells[name]["adapters"][system] = {"value": delta.adapter, "delta": delta.delta,
                                                   "ci95": [delta.low, delta.high],
                                                   "excludes_zero": delta.excludes_zero}  # fmt: skip
        sets.append({"test_set": entry.name, "task": recipe.task, "examples": len(rows), "metrics": cells,
                     "not_computed": not_computed, "notes": entry.task.scoring_notes(scoring)})  # fmt: skip
    data = {"base_model": entries[0].info.base_model.spec, "precision": precision, "bootstrap": bootstrap,
            "adapters": {e.name: str(e.info.path) for e in entries}, "test_sets": sets}  # fmt: skip
    report = build_report(data, systems, folder)
    report.write(folder)
    report.print()
    return report


def read_runs(run_dirs: list[str | Path], overrides: list[str] | None = None) -> list[Entry]:
    if not run_dirs:
        raise DataError("compare: name at least one run directory")
    from adapterlab.config import known_keys

    runs = [RunDir(Path(path)) for path in run_dirs]
    keys = [set(known_keys(task_of(run_recipe(run, None)).recipe)) for run in runs]

    def applies(override: str, own: set[str]) -> bool:
        """An override goes to every run whose task has the key (eval.samples: the code runs); one that no
        run's task knows goes to all, so that the unknown-key error names it."""
        key = override.partition("=")[0].strip()
        return key in own or not any(key in k for k in keys)

    entries, names = [], set()
    for run, own in zip(runs, keys, strict=True):
        recipe = run_recipe(run, [o for o in overrides or [] if applies(o, own)])
        task = task_of(recipe)
        if not task.generative:
            raise DataError(f"{run.root}: a {recipe.task} run; compare scores generative adapters on one base")
        name = recipe.name
        while name in names or name == BASE:
            name += "_2"
        names.add(name)
        entries.append(Entry(run, recipe, task, AdapterInfo.read(run.root), name))
    return entries


def cell(entry: dict[str, Any]) -> str:
    low, high = entry["ci95"]
    mark = {"better": " ▲", "worse": " ▼"}.get(verdict(entry), "")
    return f"{fmt(entry['value'])} ({entry['delta']:+.3f} [{fmt(low)}, {fmt(high)}]){mark}"


def build_report(data: dict[str, Any], systems: list[str], folder: Path) -> Report:
    rows, blocks = [], []
    for test_set in data["test_sets"]:
        for metric in test_set["metrics"].values():
            adapters = [
                cell({**a, "higher_is_better": metric["higher_is_better"]}) for a in metric["adapters"].values()
            ]
            rows.append([test_set["test_set"], metric["label"], fmt(metric["base"]), *adapters])
    blocks.append(Bullets([
        f"Base model: {data['base_model']}, {data['precision']}; one loaded base, adapters switched per test set",
        "Each test set is a run's own test split, prompted and decoded as that run's recipe says; cells: value "
        f"(difference from the base [95% paired bootstrap interval, {data['bootstrap']} resamples]); ▲/▼ where the "
        "interval excludes zero",
        *[f"{name}: {path}" for name, path in data["adapters"].items()],
    ]))  # fmt: skip
    blocks.append(Table(["test set", "metric", *systems], rows, title="Base and adapters on every test set",
                        terminal=True))  # fmt: skip
    for test_set in data["test_sets"]:
        blocks += [Text(f"{test_set['test_set']}: not computed {k}: {why}", terminal=True)
                   for k, why in test_set["not_computed"].items()]  # fmt: skip
        blocks += [Text(f"{test_set['test_set']}: {note}") for note in test_set["notes"]]
        chart = chart_of(test_set, systems, folder / f"compare_{test_set['test_set']}.png")
        blocks.append(Image(chart, f"{test_set['test_set']} test set"))
    blocks.append(Text(f"Report: {folder / 'report.html'}", terminal=True))
    return Report("Comparison: base and adapters on every test set", data, blocks)


def chart_of(test_set: dict[str, Any], systems: list[str], path: Path) -> Path | None:
    """The registry's comparison chart for one test set: bars per system, every adapter's difference from the
    base with its interval."""
    entries = {}
    for name, metric in test_set["metrics"].items():
        entries[name] = {"label": metric["label"], BASE: metric["base"], "higher_is_better": metric["higher_is_better"],
                         "percent": metric["percent"], "differences": metric["adapters"],
                         **{s: a["value"] for s, a in metric["adapters"].items()}}  # fmt: skip
    title = f"{test_set['test_set']} test set ({test_set['examples']} examples)"
    return comparison_chart(entries, systems, title, path) if entries else None
