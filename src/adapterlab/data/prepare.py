"""``adapterlab prepare``: load, check, template, tokenise and split; write an artefact a user can inspect.

Outputs (in the run directory): ``data/{train,val,test}.jsonl`` (readable), ``data/tokenized`` (exactly what
the trainer reads: it never re-tokenises), ``data/splits.json`` (the ids in each split), ``data/meta.json``
(fingerprint) and ``data_report.json`` (row accounting and length statistics).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from adapterlab.config import Recipe, as_recipe, template_columns
from adapterlab.console import console
from adapterlab.data import classify
from adapterlab.data.classify import weak_source_bytes
from adapterlab.data.load import RowLedger, Table, read_table, require_columns
from adapterlab.data.split import (
    SPLITS,
    SplitKey,
    check_groups_disjoint,
    load_split_ids,
    normalise_split_value,
    split_by_fractions,
)
from adapterlab.data.tasks import ClassifyExample, Dropped, Example, formatter_for
from adapterlab.errors import DataError
from adapterlab.runs import RunDir, write_json, write_jsonl


@dataclass
class Prepared:
    run: RunDir
    report: dict[str, Any]
    fingerprint: str

    @property
    def sizes(self) -> dict[str, int]:
        return self.report["splits"]


def needed_columns(recipe: Recipe) -> dict[str, str]:
    data, split = recipe.data, recipe.split
    needed = {c: "data.prompt_template" for c in template_columns(data.prompt_template or "")}
    needed.update({c: "data.text_columns" for c in data.text_columns or []})
    optional = {
        data.target_column: "data.target_column",
        data.label_column: "data.label_column",
        data.id_column: "data.id_column",
        split.column: "split.column",
        split.stratify_by: "split.stratify_by",
        split.group_by: "split.group_by",
    }
    needed.update({c: key for c, key in optional.items() if c})
    return needed


def fingerprint(recipe: Recipe, source: Path, tokenizer) -> str:
    """Changes whenever the prepared data would: the data file, the data/split/model recipe, the tokenizer."""
    digest = hashlib.sha256()
    digest.update(source.read_bytes())
    parts = [recipe.data, recipe.split, recipe.model.base, recipe.split_seed, recipe.task, recipe.seed]
    parts += [recipe.weak_label, recipe.augment, recipe.rebalance]
    digest.update(json.dumps([p.model_dump() if hasattr(p, "model_dump") else p for p in parts]).encode())
    digest.update(weak_source_bytes(recipe))
    digest.update((tokenizer.chat_template or "").encode())
    digest.update(str(len(tokenizer)).encode())
    return digest.hexdigest()[:16]


def prepare(recipe: Recipe | str | Path, overrides: list[str] | None = None, *, tokenizer=None) -> Prepared:
    """Read the data file, build examples, account for every row, split, and write the prepared artefact."""
    recipe = as_recipe(recipe, overrides)
    run = RunDir.for_recipe(recipe)
    source = recipe.resolve_path(recipe.data.path)
    table = read_table(source, recipe.data.format, recipe.data.encoding)
    require_columns(table, needed_columns(recipe))
    if tokenizer is None:
        from adapterlab.models import load_tokenizer, resolve_base

        tokenizer = load_tokenizer(
            resolve_base(recipe.model.base), recipe.model.trust_remote_code, chat=recipe.task == "chat"
        )

    ledger = RowLedger(source, table.n_records, recipe.data.on_bad_rows)
    for number, detail in table.unparsed:
        ledger.drop(number, "unparseable", detail)
    formatter = formatter_for(recipe, tokenizer)
    examples, pool = build_examples(recipe, table, formatter, ledger)
    assignment = assign_splits(recipe, examples, ledger)

    by_split: dict[str, list] = {name: [] for name in SPLITS}
    for example, name in zip(examples, assignment, strict=True):
        if name:
            by_split[name].append(example)
    task_report = classify.finish(recipe, by_split, pool, ledger, formatter) if recipe.task == "classify" else {}
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
    stamp = fingerprint(recipe, source, tokenizer)
    write_prepared(run, recipe, by_split, report, stamp, tokenizer)
    print_report(report)
    return Prepared(run, report, stamp)


def build_examples(recipe: Recipe, table: Table, formatter, ledger: RowLedger) -> tuple[list, list]:
    """(kept examples, unlabeled pool for weak labelling). Every row is kept, pooled or dropped with a reason."""
    id_column = recipe.data.id_column
    weak_from_rows = recipe.weak_label is not None and recipe.weak_label.path is None
    examples, pool = [], []
    seen: dict[str, tuple[int, Any]] = {}
    seen_ids: dict[str, int] = {}
    for number, row in zip(table.numbers, table.rows, strict=True):
        row_id = row.get(id_column) if id_column else str(number)
        if id_column and not (row_id or "").strip():
            ledger.drop(number, "missing_field", f"id column '{id_column}' is empty")
            continue
        result = formatter.format(row) if not weak_from_rows else formatter.format(row, need_label=False)
        if isinstance(result, Dropped):
            ledger.drop(number, result.reason, result.detail, row_id, fatal=result.fatal)
            continue
        if row_id in seen_ids:
            raise DataError(
                f"{table.path} row {number}: id '{row_id}' (data.id_column) already used by row {seen_ids[row_id]}; "
                "ids must be unique"
            )
        seen_ids[row_id] = number
        result.meta = {"id": row_id, "row": number, "source": row}
        if recipe.task == "classify" and result.label is None:
            pool.append(result)  # settled by weak labelling: kept with a label or dropped with a reason
            continue
        key, target = dedupe_key(result)
        if recipe.data.dedupe and key in seen:
            first, first_target = seen[key]
            reason, what = ("duplicate", "same") if first_target == target else ("conflicting_label", "other label,")
            ledger.drop(number, reason, f"{what} text as row {first}", row_id, fatal=False)
            continue
        seen.setdefault(key, (number, target))
        examples.append(result)
        ledger.keep(result.truncated)
    return examples, pool


def dedupe_key(example) -> tuple[str, Any]:
    """What makes two rows the same, and what they are trained to produce."""
    if isinstance(example, ClassifyExample):
        return example.text, example.label
    return json.dumps([example.prompt, example.completion], ensure_ascii=False), None


def split_method(recipe: Recipe) -> dict[str, Any]:
    split = recipe.split
    if split.from_ids:
        return {"method": "ids_file", "path": split.from_ids}
    if split.column:
        return {"method": "column", "column": split.column}
    return {
        "method": "fractions",
        "fractions": {"train": split.train, "val": split.val, "test": split.test},
        "seed": recipe.split_seed,
        "stratify_by": recipe.stratify_column,
        "group_by": split.group_by,
    }


def assign_splits(recipe: Recipe, examples: list[Example], ledger: RowLedger) -> list[str]:
    """One split name per example; '' for an example dropped here (counted in the ledger)."""
    split = recipe.split

    def value(example: Example, column: str | None) -> str | None:
        return (example.meta["source"].get(column) or None) if column else None

    keys = [
        SplitKey(
            id=e.meta["id"],
            group=value(e, split.group_by),
            stratum=value(e, recipe.stratify_column),
            given=value(e, split.column),
        )
        for e in examples
    ]
    if split.from_ids:
        saved = load_split_ids(recipe.resolve_path(split.from_ids))
        assignment = [saved.get(k.id, "") for k in keys]
        reason, why = "not_in_split_file", f"id not listed in {split.from_ids}"
    elif split.column:
        assignment = [normalise_split_value(k.given) or "" for k in keys]
        reason, why = "unknown_split_value", f"column '{split.column}' is not one of train/val/test"
    else:
        fractions = {"train": split.train, "val": split.val, "test": split.test}
        assignment = split_by_fractions(keys, fractions, recipe.split_seed)
        reason, why = "", ""
    for example, name in zip(examples, assignment, strict=True):
        if not name:
            ledger.unkeep(example.truncated)
            ledger.drop(example.meta["row"], reason, why, example.meta["id"], fatal=not split.from_ids)
    check_groups_disjoint(keys, assignment)
    return assignment


def length_stats(rows: list) -> dict[str, dict[str, float]]:
    if isinstance(rows[0], ClassifyExample):
        return classify.token_stats(rows)
    stats = {}
    for name, values in (
        ("prompt_tokens", [e.prompt_tokens for e in rows]),
        ("completion_tokens", [e.completion_tokens for e in rows]),
        ("total_tokens", [len(e.input_ids) for e in rows]),
    ):
        arr = np.asarray(values)
        stats[name] = {
            "min": int(arr.min()),
            "mean": round(float(arr.mean()), 1),
            "p50": float(np.percentile(arr, 50)),
            "p95": float(np.percentile(arr, 95)),
            "max": int(arr.max()),
            "sum": int(arr.sum()),
        }
    return stats


def _counts(values) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[str(v)] = out.get(str(v), 0) + 1
    return dict(sorted(out.items()))


def write_prepared(run: RunDir, recipe, by_split, report, stamp: str, tokenizer) -> None:
    if run.tokenized.exists():
        shutil.rmtree(run.tokenized)
    run.data.mkdir(parents=True, exist_ok=True)
    if recipe.task == "classify":
        classify.write(run, by_split, report["labels"])
    else:
        write_chat_examples(run, by_split)
    write_json(
        run.data / "splits.json",
        {**report["split_method"], "ids": {name: [e.meta["id"] for e in rows] for name, rows in by_split.items()}},
    )
    write_json(
        run.data / "meta.json",
        {
            "fingerprint": stamp,
            "task": recipe.task,
            "base_model": recipe.model.base,
            "chat_template": tokenizer.chat_template,
            "vocab_size": len(tokenizer),
        },
    )
    write_json(run.data_report, report)
    run.save_recipe(recipe)


def write_chat_examples(run: RunDir, by_split) -> None:
    from datasets import Dataset, DatasetDict, Features, Sequence, Value

    features = Features({"input_ids": Sequence(Value("int32")), "completion_mask": Sequence(Value("int8"))})
    readable = {}
    tokenized = {}
    for name, rows in by_split.items():
        readable[name] = [
            {
                "id": e.meta["id"],
                "row": e.meta["row"],
                "messages": e.prompt,
                "completion": e.completion[0]["content"],
                "prompt_tokens": e.prompt_tokens,
                "completion_tokens": e.completion_tokens,
                "truncated": e.truncated,
                "source": e.meta["source"],
            }
            for e in rows
        ]
        tokenized[name] = Dataset.from_dict(
            {"input_ids": [e.input_ids for e in rows], "completion_mask": [e.completion_mask for e in rows]},
            features=features,
        )
    DatasetDict(tokenized).save_to_disk(str(run.tokenized))
    for name, records in readable.items():
        write_jsonl(run.data / f"{name}.jsonl", records)


def print_report(report: dict[str, Any]) -> None:
    from rich.table import Table as RichTable

    table = RichTable(title=f"Data: {report['source']}", show_header=False, title_justify="left")
    table.add_row("rows read", str(report["input_rows"]))
    table.add_row("kept", f"{report['kept']} ({report['truncated']} truncated to {report['max_tokens']} tokens)")
    for reason, count in report["dropped"].items():
        table.add_row(f"dropped: {reason}", str(count))
    table.add_row("train / val / test", " / ".join(str(report["splits"][s]) for s in SPLITS))
    if "train" in report["lengths"]:
        lengths = report["lengths"]["train"]
        total = lengths.get("total_tokens") or lengths["tokens"]
        table.add_row("train tokens/example", f"mean {total['mean']}, p95 {total['p95']:.0f}, max {total['max']}")
    if "classes" in report:
        train = report["classes"]["train"]
        table.add_row("classes (train)", ", ".join(f"{k} {v}" for k, v in train.items()))
        table.add_row("imbalance (largest / smallest)", str(report["imbalance_ratio"]))
    for stage in ("augment", "rebalance"):
        if stage in report:
            table.add_row(stage, ", ".join(f"{k} {v}" for k, v in report[stage].items()))
    console.print(table)
