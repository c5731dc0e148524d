"""``adapterlab prepare``: load, check, format, split; write an artefact a user can inspect.

Reads top to bottom and asks the task (:mod:`adapterlab.task`) for everything task-shaped: the data file ->
rows -> the task's formatter (example or a counted reason to drop) -> duplicates -> the split -> the task's
``finish`` (label map, weak labels ...) -> the task's files. Outputs (in the run directory): ``data/{train,val,
test}.jsonl`` (readable), ``data/tokenized`` (exactly what the trainer reads: it never re-tokenises),
``data/splits.json``, ``data/meta.json`` (fingerprint) and ``data_report.json`` (row accounting and lengths).
``data/`` is written in a staging folder and swapped in complete, so a crash never leaves half of it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapterlab.config import RecipeBase
from adapterlab.console import console
from adapterlab.data.load import RowLedger, Table, read_table, require_columns
from adapterlab.data.split import (
    SplitKey,
    check_groups_disjoint,
    load_split_ids,
    normalise_split_value,
    split_by_fractions,
)
from adapterlab.errors import DataError
from adapterlab.metrics.stats import distribution
from adapterlab.registry import as_recipe, task_of
from adapterlab.runs import SPLITS, RunDir, write_json
from adapterlab.task import Context, Dropped, Example, Task


@dataclass
class Prepared:
    run: RunDir
    report: dict[str, Any]
    fingerprint: str

    @property
    def sizes(self) -> dict[str, int]:
        return self.report["splits"]


def fingerprint(recipe: RecipeBase, source: Path, tokenizer) -> str:
    """Changes whenever the prepared data would: the data file, the recipe's preparation sections, the tokenizer."""
    digest = hashlib.sha256()
    digest.update(source.read_bytes())
    parts = [p.model_dump() if hasattr(p, "model_dump") else p for p in recipe.prepare_sections()]
    digest.update(json.dumps(parts, default=str).encode())
    digest.update((tokenizer.chat_template or "").encode())
    digest.update(str(len(tokenizer)).encode())
    return digest.hexdigest()[:16]


def load_tokenizer_for(recipe: RecipeBase, task: Task):
    from adapterlab.models import load_tokenizer, resolve_base

    return load_tokenizer(
        resolve_base(recipe.model.base), recipe.model.trust_remote_code, recipe.model.revision, chat=task.generative
    )


def prepare(recipe: RecipeBase | str | Path, overrides: list[str] | None = None, *, tokenizer=None) -> Prepared:
    """Read the data file, build examples, account for every row, split, and write the prepared artefact."""
    recipe = as_recipe(recipe, overrides)
    task = task_of(recipe)
    run = RunDir.for_recipe(recipe)
    source = recipe.resolve_path(recipe.data.path)
    table = read_table(source, recipe.data.format, recipe.data.encoding)
    require_columns(table, recipe.data_columns())
    roles = recipe.column_roles()
    table.reject(table.type_problems(roles))  # a list in a text column, a bool among labels: bad rows, counted
    ledger = RowLedger.for_table(table, recipe.data.on_bad_rows)  # every unreadable record counted by its reason
    ledger.warnings += table.type_warnings(roles)
    tokenizer = tokenizer or load_tokenizer_for(recipe, task)
    formatter = task.formatter(recipe, tokenizer)
    examples, pool = build_examples(recipe, table, formatter, ledger)
    assignment = assign_splits(recipe, examples, ledger)

    by_split: dict[str, list] = {name: [] for name in SPLITS}
    for example, name in zip(examples, assignment, strict=True):
        if name:
            by_split[name].append(example)
    task_report = task.finish(recipe, by_split, pool, ledger, formatter)
    report = {
        **ledger.to_dict(),
        "splits": {name: len(rows) for name, rows in by_split.items()},
        "split_method": split_method(recipe),
        "lengths": {name: length_stats(rows) for name, rows in by_split.items() if rows},
        "max_tokens": recipe.data.max_tokens,
        **task_report,
    }
    if recipe.stratify_column:
        report["strata"] = {
            name: _counts(e.meta["source"].get(recipe.stratify_column) for e in rows if not e.meta.get("weak"))
            for name, rows in by_split.items()
        }
    report["warnings"] += split_warnings(recipe, report["splits"])
    if not by_split["train"]:  # the report says where every row went; nothing is written that training would reuse
        write_json(run.data_report, report)
        print_report(report, task)
        raise DataError(nothing_to_train(source, report, run.data_report))
    stamp = fingerprint(recipe, source, tokenizer)
    write_prepared(run, recipe, task, by_split, report, stamp, tokenizer)
    print_report(report, task)
    return Prepared(run, report, stamp)


def build_examples(recipe: RecipeBase, table: Table, formatter, ledger: RowLedger) -> tuple[list, list]:
    """(kept examples, pending rows for the task's finish). Every row is kept, pending or dropped with a reason."""
    id_column = recipe.data.id_column
    examples, pool = [], []
    seen: dict[str, tuple[int, Any]] = {}
    seen_ids: dict[str, int] = {}
    numbers, rows = table.numbers, table.rows
    if hasattr(formatter, "arrange"):  # e.g. a script's lines by scene and an order column
        numbers, rows = formatter.arrange(numbers, rows)
    for number, row in zip(numbers, rows, strict=True):
        row_id = row.get(id_column) if id_column else str(number)
        if id_column and not (row_id or "").strip():
            ledger.drop(number, "missing_field", f"id column '{id_column}' is empty")
            continue
        result = formatter.format(row)
        if isinstance(result, Context):
            ledger.as_context()
            continue
        if isinstance(result, Dropped):
            ledger.drop(number, result.reason, result.detail, row_id, fatal=result.fatal)
            continue
        if row_id in seen_ids:
            raise DataError(
                f"{table.path} row {number}: id '{row_id}' (data.id_column) already used by row {seen_ids[row_id]}; "
                "ids must be unique"
            )
        seen_ids[row_id] = number
        result.meta = {**(getattr(result, "meta", None) or {}), "id": row_id, "row": number, "source": row}
        if result.pending:
            pool.append(result)  # settled by the task's finish: kept or dropped with a reason
            continue
        key, target = result.dedupe_key()
        if recipe.data.dedupe and key in seen:
            first, first_target = seen[key]
            reason, what = ("duplicate", "same") if first_target == target else ("conflicting_label", "other label,")
            ledger.drop(number, reason, f"{what} text as row {first}", row_id, fatal=False)
            continue
        seen.setdefault(key, (number, target))
        examples.append(result)
        ledger.keep(result.truncated)
    return examples, pool


def split_method(recipe: RecipeBase) -> dict[str, Any]:
    split = recipe.split
    if split.from_ids:
        return {"method": "ids_file", "path": split.from_ids}
    if split.column:
        return {"method": "column", "column": split.column}
    return {
        "method": "fractions",
        "fractions": split.fractions,
        "seed": recipe.split_seed,
        "stratify_by": recipe.stratify_column,
        "group_by": split.group_by,
    }


def assign_splits(recipe: RecipeBase, examples: list[Example], ledger: RowLedger) -> list[str]:
    """One split name per example; '' for an example dropped here (counted in the ledger)."""
    split = recipe.split

    def value(example: Example, column: str | None) -> str | None:
        return (example.meta["source"].get(column) or None) if column else None

    keys = [
        SplitKey(id=e.meta["id"], group=value(e, split.group_by) or e.meta.get("group"),
                 stratum=value(e, recipe.stratify_column), given=value(e, split.column))
        for e in examples
    ]  # fmt: skip
    if split.from_ids:
        saved = load_split_ids(recipe.resolve_path(split.from_ids))
        assignment = [saved.get(k.id, "") for k in keys]
        reason, why = "not_in_split_file", f"id not listed in {split.from_ids}"
    elif split.column:
        assignment = [normalise_split_value(k.given) or "" for k in keys]
        reason, why = "unknown_split_value", f"column '{split.column}' is not one of train/val/test"
    else:
        assignment = split_by_fractions(keys, split.fractions, recipe.split_seed)
        reason, why = "", ""
    for example, key, name in zip(examples, keys, assignment, strict=True):
        if not name:
            ledger.unkeep(example.truncated)
            given = str(key.given or "")
            detail = f"column '{split.column}' holds {given!r}, not train/val/test" if split.column else why
            ledger.drop(example.meta["row"], reason, detail, example.meta["id"], fatal=not split.from_ids)
    check_groups_disjoint(keys, assignment)
    return assignment


def nothing_to_train(source: Path, report: dict[str, Any], report_path: Path) -> str:
    """One line: no training row is left, the reasons by count with the first row of the largest, where to read on."""
    dropped = sorted(report["dropped"].items(), key=lambda item: -item[1])
    if not dropped:
        reasons = f"the {report['kept']} kept rows all went to val/test"
    else:
        parts = [f"{reason} {count}" for reason, count in dropped]
        first = next((e for e in report["dropped_examples"] if e["reason"] == dropped[0][0]), None)
        if first is not None:
            parts[0] += f" (row {first['row']}: {first['detail']})"
        reasons = ", ".join(parts)
    return (f"{source}: no row is left to train on ({report['input_rows']} read; dropped: {reasons}); every row's "
            f"fate is in {report_path}")  # fmt: skip


def split_warnings(recipe: RecipeBase, sizes: dict[str, int]) -> list[str]:
    """A split that asked for a share of the data but got no row (too few distinct rows, groups or strata)."""
    wanted = {} if recipe.split.from_ids or recipe.split.column else recipe.split.fractions
    warnings = []
    for name in SPLITS:
        if wanted.get(name, 0) > 0 and sizes[name] == 0:
            warnings.append(
                f"the {name} split is empty although split.{name} is {wanted[name]:g}: only {sum(sizes.values())} "
                "rows are left after cleaning and deduplication (or one group or stratum holds them all)"
            )
    return warnings


def length_stats(rows: list) -> dict[str, dict[str, float]]:
    """One token-length summary per length the task's examples report (prompt, completion, total ...)."""
    names = rows[0].lengths()
    return {name: distribution([e.lengths()[name] for e in rows]) for name in names}


def _counts(values) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[str(v)] = out.get(str(v), 0) + 1
    return dict(sorted(out.items()))


def write_prepared(run: RunDir, recipe, task: Task, by_split, report, stamp: str, tokenizer) -> None:
    """Everything in a staging folder first, meta.json last; the report once the data is complete."""
    meta = {"fingerprint": stamp, "task": recipe.task, "base_model": recipe.model.base,
            "chat_template": tokenizer.chat_template, "vocab_size": len(tokenizer)}  # fmt: skip
    with run.staged_data() as staged:
        task.write_examples(staged, by_split, report)
        ids = {name: [e.meta["id"] for e in rows] for name, rows in by_split.items()}
        write_json(staged.splits_file, {**report["split_method"], "ids": ids})
        write_json(staged.data_meta, meta)
        write_json(run.data_report, report)
    run.save_recipe(recipe)


def print_report(report: dict[str, Any], task: Task) -> None:
    from rich.table import Table as RichTable

    table = RichTable(title=f"Data: {report['source']}", show_header=False, title_justify="left")
    table.add_row("rows read", str(report["input_rows"]))
    table.add_row("kept", f"{report['kept']} ({report['truncated']} truncated to {report['max_tokens']} tokens)")
    if report.get("context"):
        table.add_row("context only", f"{report['context']} (lines of others, in the examples' prompts)")
    for reason, count in report["dropped"].items():
        table.add_row(f"dropped: {reason}", str(count))
    table.add_row("train / val / test", " / ".join(str(report["splits"][s]) for s in SPLITS))
    if "train" in report["lengths"]:
        total = report["lengths"]["train"]["total_tokens"]
        table.add_row("train tokens/example", f"mean {total['mean']}, p95 {total['p95']:.0f}, max {total['max']}")
    for name, value in task.report_lines(report):
        table.add_row(name, value)
    console.print(table)
    for warning in report["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {warning}", soft_wrap=True)
