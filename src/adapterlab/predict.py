"""``adapterlab predict RUN input.csv -o predictions.csv``: apply a trained adapter to every row of a file.

The run's task supplies the predictor (a classifier writes ``id,label`` and, with ``--proba``, a probability per
label; a chat adapter writes ``id,reply``, prompted exactly as in training). Every input row gets a line: a row
the predictor cannot use (no text, empty prompt columns) gets empty outputs and is counted with its reason, and
rows that could not be read at all are counted too. A summary is written next to the output
(``<output>.report.json``).
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapterlab.console import console
from adapterlab.data.load import read_table, require_columns
from adapterlab.data.readers import Keys
from adapterlab.errors import DataError, ModelError
from adapterlab.registry import get_task
from adapterlab.runs import AdapterInfo, write_json
from adapterlab.task import Skipped


@dataclass
class PredictResult:
    output: Path
    report: dict[str, Any]


def predict(
    run: str | Path,
    input_path: str | Path,
    output: str | Path = "submission.csv",
    *,
    id_column: str | None = None,
    precision: str = "auto",
    input_format: str = "auto",
    encoding: str = "utf-8",
    **options: Any,
) -> PredictResult:
    """Predict every row of ``input_path`` (read as ``input_format``, ``encoding``: ``auto`` from the extension,
    UTF-8); ``options`` go to the task's predictor (``proba``, ``text_columns``, ``batch_size``, ``compiled``,
    ``onnx`` for classifiers; ``batch_size``, ``max_new_tokens`` for chat adapters)."""
    from adapterlab.models import pick_precision

    info = AdapterInfo.read(run)
    task = get_task(info.task)
    if options.get("onnx") and "onnx" not in task.export_formats:  # else the task's predictor would ignore it
        raise ModelError(f"--onnx: a '{info.task}' adapter has no ONNX export; leave --onnx out")
    predictor = task.predictor(info, pick_precision(precision), **options)
    table = read_table(input_path, input_format, encoding, Keys("the input file", "--format", "--encoding"))
    require_columns(table, {c: "the adapter's input columns (--text-column)" for c in predictor.columns})
    id_column = id_column or _id_column(table.columns, info.task_info.get("id_column"))
    if id_column is not None:
        require_columns(table, {id_column: "--id-column"})
    outputs = predictor.predict(table.rows)
    if not any(isinstance(o, dict) for o in outputs):
        raise DataError(f"{table.path}: no row has any text to predict from (columns {predictor.columns}); "
                        "nothing written")  # fmt: skip
    ids = [row.get(id_column) if id_column else str(n) for row, n in zip(table.rows, table.numbers, strict=True)]
    output = Path(output)
    write_csv(output, ids, outputs, predictor.output_columns)
    report = summarise(table, ids, outputs, output, predictor.describe(table.rows, outputs))
    write_json(output.with_suffix(".report.json"), report)
    show(report)
    return PredictResult(output, report)


def _id_column(columns: list[str], trained: str | None) -> str | None:
    for candidate in (trained, "id", "ID", "Id"):
        if candidate and candidate in columns:
            return candidate
    return None


def write_csv(path: Path, ids: list, outputs: list, columns: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", *columns])
        for row_id, out in zip(ids, outputs, strict=True):
            values = out if isinstance(out, dict) else {}
            writer.writerow([row_id, *(values.get(c, "") for c in columns)])


def summarise(table, ids, outputs, output: Path, extra: dict[str, Any]) -> dict[str, Any]:
    skipped = Counter(o.reason for o in outputs if isinstance(o, Skipped))
    skipped_ids = [ids[i] for i, o in enumerate(outputs) if isinstance(o, Skipped)]
    return {
        "input": str(table.path),
        "output": str(output),
        "input_rows": table.n_records,
        "written": len(ids),
        "predicted": sum(isinstance(o, dict) for o in outputs),
        "skipped": dict(skipped),
        "skipped_ids": skipped_ids[:50],
        "empty_text": skipped.get("empty_text", 0),
        "unreadable": dict(Counter(b.reason for b in table.bad)),
        **extra,
    }


def show(report: dict[str, Any]) -> None:
    console.print(f"Wrote {report['written']} rows to {report['output']} ({report['predicted']} predicted)")
    for reason, count in report["skipped"].items():
        console.print(
            f"[yellow]{count} rows were skipped ({reason}): their outputs are left empty[/yellow] "
            f"(ids: {', '.join(map(str, report['skipped_ids'][:10]))})",
            soft_wrap=True,
        )
    for reason, count in report["unreadable"].items():
        console.print(f"[yellow]{count} unreadable rows were skipped ({reason})[/yellow]")
    for note in report.get("notes", []):
        console.print(note, soft_wrap=True)
