"""``adapterlab predict RUN input.csv -o submission.csv``: label a file with a trained classifier.

The input is cleaned with the steps saved with the adapter, batched by length, and written as ``id,label``
(plus one probability column per label with ``--proba``). Every input row gets a line: a row whose text is empty
(or empty after cleaning) gets an empty label and is counted. When the file also has the label column, rows with
labels the classifier does not know are counted too, and accuracy is reported on the rest.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapterlab.console import console
from adapterlab.data.load import read_table, require_columns
from adapterlab.errors import DataError
from adapterlab.runs import write_json


@dataclass
class PredictResult:
    output: Path
    report: dict[str, Any]


def predict(
    run: str | Path,
    input_path: str | Path,
    output: str | Path = "submission.csv",
    *,
    proba: bool = False,
    id_column: str | None = None,
    text_columns: list[str] | None = None,
    batch_size: int | None = None,
    precision: str = "auto",
    compiled: bool = False,
) -> PredictResult:
    from adapterlab.classifier import Classifier
    from adapterlab.models import pick_precision

    classifier = Classifier.load(run, pick_precision(precision), compiled=compiled)
    meta = classifier.meta
    table = read_table(input_path)
    columns = text_columns or meta["text_columns"]
    id_column = id_column or _id_column(table.columns, meta)
    require_columns(table, {c: "the classifier's text columns (--text-columns)" for c in columns})
    if id_column is not None:
        require_columns(table, {id_column: "--id-column"})

    texts = [classifier.text_of(row, columns) for row in table.rows]
    usable = [i for i, text in enumerate(texts) if text.strip()]
    if not usable:
        raise DataError(f"{table.path}: no row has any text to classify (columns {columns}); nothing written")
    probs = dict(zip(usable, classifier.predict_proba([texts[i] for i in usable], batch_size), strict=True))
    predicted = {i: classifier.labels[int(p.argmax())] for i, p in probs.items()}
    ids = [row.get(id_column) if id_column else str(n) for row, n in zip(table.rows, table.numbers, strict=True)]

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "label", *([f"p_{label}" for label in classifier.labels] if proba else [])])
        for i, row_id in enumerate(ids):
            extra = []
            if proba:
                extra = [f"{x:.6f}" for x in probs[i]] if i in probs else [""] * len(classifier.labels)
            writer.writerow([row_id, predicted.get(i, ""), *extra])

    report = summarise(table, ids, texts, predicted, meta, classifier.labels, output)
    write_json(output.with_suffix(".report.json"), report)
    show(report)
    return PredictResult(output, report)


def _id_column(columns: list[str], meta: dict[str, Any]) -> str | None:
    for candidate in (meta.get("id_column"), "id", "ID", "Id"):
        if candidate and candidate in columns:
            return candidate
    return None


def summarise(table, ids, texts, predicted, meta, labels, output: Path) -> dict[str, Any]:
    empty = [ids[i] for i, text in enumerate(texts) if not text.strip()]
    report: dict[str, Any] = {
        "input": str(table.path),
        "output": str(output),
        "input_rows": table.n_records,
        "written": len(ids),
        "predicted": len(predicted),
        "empty_text": len(empty),
        "empty_text_ids": empty[:50],
        "unparseable": len(table.unparsed),
        "label_counts": dict(sorted(Counter(predicted.values()).items())),
    }
    label_column = meta.get("label_column")
    if label_column and label_column in table.columns:
        truth = {i: (row.get(label_column) or "").strip() for i, row in enumerate(table.rows)}
        unknown = Counter(v for v in truth.values() if v and v not in labels)
        scored = [i for i in predicted if truth[i] in labels]
        report["labelled"] = {
            "unknown_labels": dict(unknown),
            "unknown_label_rows": sum(unknown.values()),
            "missing_label_rows": sum(1 for v in truth.values() if not v),
            "scored_rows": len(scored),
            "accuracy": sum(predicted[i] == truth[i] for i in scored) / len(scored) if scored else None,
        }
    return report


def show(report: dict[str, Any]) -> None:
    console.print(f"Wrote {report['written']} rows to {report['output']} ({report['predicted']} predicted)")
    if report["empty_text"]:
        console.print(
            f"[yellow]{report['empty_text']} rows had no text (empty, or nothing left after cleaning): their label is "
            f"left empty[/yellow] (ids: {', '.join(map(str, report['empty_text_ids'][:10]))})",
            soft_wrap=True,
        )
    if report["unparseable"]:
        console.print(f"[yellow]{report['unparseable']} unreadable rows were skipped[/yellow]")
    labelled = report.get("labelled")
    if labelled:
        if labelled["unknown_label_rows"]:
            known = ", ".join(f"{k} ({v})" for k, v in labelled["unknown_labels"].items())
            console.print(f"[yellow]{labelled['unknown_label_rows']} rows carry labels the classifier does not know: "
                          f"{known}[/yellow]", soft_wrap=True)  # fmt: skip
        if labelled["accuracy"] is not None:
            console.print(
                f"Accuracy on the {labelled['scored_rows']} rows with a known label: {labelled['accuracy']:.4f}"
            )
