"""``validate`` (no model loaded) and ``run`` (prepare + train + eval, the demo) as plain functions."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from adapterlab.assets import EMBEDDED
from adapterlab.config import RecipeBase
from adapterlab.console import console
from adapterlab.data.load import read_table, require_columns
from adapterlab.errors import ModelError, RecipeError
from adapterlab.registry import as_recipe, task_of
from adapterlab.stages.evaluate import evaluate
from adapterlab.stages.export import export
from adapterlab.stages.prepare import prepare
from adapterlab.stages.train import train


def validate(recipe: RecipeBase | str | Path, overrides: list[str] | None = None) -> RecipeBase:
    """Check a recipe, its data file's columns and its base model's whereabouts, without loading a model."""
    recipe = as_recipe(recipe, overrides)
    check_export_formats(recipe)
    table = read_table(recipe.resolve_path(recipe.data.path), recipe.data.format, recipe.data.encoding)
    require_columns(table, recipe.data_columns())
    roles = recipe.column_roles()
    bad = Counter(b.reason for b in [*table.bad, *table.type_problems(roles)])
    for warning in [*table.warnings, *table.type_warnings(roles)]:
        console.print(f"[yellow]warning:[/yellow] {warning}", soft_wrap=True)
    if bad:
        shown = ", ".join(f"{reason} {count}" for reason, count in sorted(bad.items()))
        console.print(f"[yellow]{sum(bad.values())} rows would be dropped before formatting:[/yellow] {shown}")
    base = recipe.model.base
    if base in EMBEDDED:
        if EMBEDDED[base].source_path() is None:
            raise ModelError(f"model.base: embedded model '{base}' is not installed; run: {EMBEDDED[base].install}")
    elif base.startswith((".", "/", "~")) and not Path(base).expanduser().is_dir():
        raise ModelError(f"model.base: directory {base} not found")
    return recipe


def run(
    recipe: RecipeBase | str | Path,
    overrides: list[str] | None = None,
    *,
    overwrite: bool = False,
    resume: bool = False,
    evaluate_after: bool = True,
) -> dict[str, Any]:
    """prepare -> train -> eval (base vs adapter on the test split; skipped when not ``evaluate_after``) -> the
    recipe's exports. Returns the summary, the eval report (None when skipped) and each export's parity."""
    recipe = as_recipe(recipe, overrides)
    check_export_formats(recipe)
    console.rule(f"[bold]{recipe.name}[/bold]: prepare")
    prepare(recipe)
    console.rule(f"[bold]{recipe.name}[/bold]: train")
    result = train(recipe, resume=resume, overwrite=overwrite)
    report = None
    if evaluate_after:
        console.rule(f"[bold]{recipe.name}[/bold]: eval (base vs adapter on the test split)")
        report = evaluate(result.run.root).report
    exports = {}  # each export checks itself against the adapter: it does not need the evaluation
    for fmt in recipe.export:
        console.rule(f"[bold]{recipe.name}[/bold]: export {fmt}")
        exports[fmt] = export(result.run.root, fmt).parity
    return {"summary": result.summary, "eval": report, "exports": exports}


def check_export_formats(recipe: RecipeBase) -> None:
    formats = task_of(recipe).export_formats
    for fmt in recipe.export:
        if fmt not in formats:
            raise RecipeError(
                f"export: a '{recipe.task}' adapter exports to {', '.join(formats) or 'nothing'}, not {fmt}"
            )
