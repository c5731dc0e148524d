"""Files -> rows, and the row ledger that accounts for every input row.

Supported: CSV, TSV, JSONL (one object per line), JSON (a list of objects) and Parquet. Every value comes back
as a string, or ``None`` when the cell/key is missing. Rows are numbered from 1 in file order ("row 17" is the
17th data record, the header not counted) and every message uses that number.
"""

from __future__ import annotations

import difflib
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapterlab.errors import DataError

FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json"}
FORMATS |= {".parquet": "parquet", ".pq": "parquet"}


@dataclass
class Table:
    path: Path
    columns: list[str]
    rows: list[dict[str, str | None]]
    # The 1-based record number of each row (records that failed to parse keep their numbers).
    numbers: list[int] = field(default_factory=list)
    # Records that could not be parsed at all (a bad JSON line): (row number, detail).
    unparsed: list[tuple[int, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.numbers:
            self.numbers = list(range(1, len(self.rows) + 1))

    @property
    def n_records(self) -> int:
        return len(self.rows) + len(self.unparsed)


def detect_format(path: Path, fmt: str = "auto") -> str:
    if fmt != "auto":
        return fmt
    suffixes = [s.lower() for s in path.suffixes if s.lower() not in (".gz", ".bz2", ".zst", ".xz")]
    for suffix in reversed(suffixes):
        if suffix in FORMATS:
            return FORMATS[suffix]
    raise DataError(f"{path}: cannot tell the format from the extension; set data.format (csv, tsv, jsonl, parquet)")


def read_table(path: str | Path, fmt: str = "auto", encoding: str = "utf-8") -> Table:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: data file not found (check data.path; relative paths start from here)")
    kind = detect_format(path, fmt)
    try:
        if kind in ("csv", "tsv"):
            table = _read_delimited(path, "\t" if kind == "tsv" else ",", encoding)
        elif kind == "jsonl":
            table = _read_jsonl(path, encoding)
        elif kind == "json":
            table = _read_json(path, encoding)
        else:
            table = _read_parquet(path)
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: not readable as {encoding} (byte {exc.start}); set data.encoding (e.g. cp1251, latin-1)"
        ) from None
    if table.n_records == 0:
        raise DataError(f"{path}: the file has no data rows")
    return table


def _cell(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _read_delimited(path: Path, sep: str, encoding: str) -> Table:
    import pandas as pd

    try:
        frame = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, encoding=encoding)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty") from None
    except pd.errors.ParserError as exc:
        raise DataError(f"{path}: not a valid {'TSV' if sep == chr(9) else 'CSV'} file ({exc})".strip()) from None
    rows = [{k: _cell(v) for k, v in rec.items()} for rec in frame.to_dict(orient="records")]
    return Table(path, [str(c) for c in frame.columns], rows)


def _table(path: Path, records) -> Table:
    """A Table from ``(record number, parsed object or why it is unusable)`` pairs."""
    rows, numbers, unparsed, columns = [], [], [], {}
    for number, record in records:
        if isinstance(record, str):
            unparsed.append((number, record))
            continue
        columns.update(dict.fromkeys(record))
        rows.append({k: _cell(v) for k, v in record.items()})
        numbers.append(number)
    return Table(path, list(columns), rows, numbers, unparsed)


def _read_jsonl(path: Path, encoding: str) -> Table:
    def records():
        with path.open(encoding=encoding) as handle:
            lines = ((n, line) for n, line in enumerate(handle, 1) if line.strip())
            for number, (lineno, line) in enumerate(lines, 1):
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield number, f"line {lineno} is not valid JSON ({exc.msg})"
                    continue
                yield number, record if isinstance(record, dict) else f"line {lineno} is not a JSON object"

    return _table(path, records())


def _read_json(path: Path, encoding: str) -> Table:
    try:
        data = json.loads(path.read_text(encoding=encoding))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg}); use a list of objects") from None
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))  # {"data": [...]}
    if not isinstance(data, list):
        raise DataError(f"{path}: a JSON data file must hold a list of objects (or use JSONL)")
    return _table(
        path, ((n, r if isinstance(r, dict) else f"item {n} is not a JSON object") for n, r in enumerate(data, 1))
    )


def _read_parquet(path: Path) -> Table:
    import pandas as pd

    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a damaged file
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    rows = [{k: _cell(v) for k, v in rec.items()} for rec in frame.to_dict(orient="records")]
    return Table(path, [str(c) for c in frame.columns], rows)


def require_columns(table: Table, needed: dict[str, str]) -> None:
    """``needed`` maps a column to the recipe key that names it; a missing one is a one-line error."""
    for column, key in needed.items():
        if column in table.columns:
            continue
        close = difflib.get_close_matches(column, table.columns, n=1, cutoff=0.6)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        shown = ", ".join(table.columns[:12]) + (" ..." if len(table.columns) > 12 else "")
        raise DataError(f"{table.path}: column '{column}' (from {key}) not found{hint} (columns: {shown})")


# -------------------------------------------------------------------------------------------- accounting


@dataclass
class RowLedger:
    """Every input row ends up kept or dropped with a reason; the counts add up to the input count.

    In ``error`` mode the first bad row raises a :class:`DataError` naming the file and row instead.
    """

    source: Path
    input_rows: int
    on_bad_rows: str = "drop"
    kept: int = 0
    truncated: int = 0
    dropped: Counter = field(default_factory=Counter)
    examples: list[dict[str, Any]] = field(default_factory=list)
    max_examples_per_reason: int = 20

    def keep(self, truncated: bool = False) -> None:
        self.kept += 1
        self.truncated += int(truncated)

    def drop(self, row: int, reason: str, detail: str, row_id: str | None = None, fatal: bool = True) -> None:
        """Count a dropped row. ``fatal=False`` for drops that are policy, not bad data (duplicates, too long)."""
        if fatal and self.on_bad_rows == "error":
            raise DataError(f"{self.source} row {row}: {detail} (set data.on_bad_rows: drop to skip such rows)")
        self.dropped[reason] += 1
        if sum(1 for e in self.examples if e["reason"] == reason) < self.max_examples_per_reason:
            self.examples.append({"row": row, "id": row_id, "reason": reason, "detail": detail})

    def unkeep(self, truncated: bool = False) -> None:
        """Take back a kept row that a later stage (e.g. split assignment) drops."""
        self.kept -= 1
        self.truncated -= int(truncated)

    @property
    def total_dropped(self) -> int:
        return sum(self.dropped.values())

    def check_balanced(self) -> None:
        if self.kept + self.total_dropped != self.input_rows:
            raise AssertionError(
                f"row accounting is off: {self.kept} kept + {self.total_dropped} dropped != {self.input_rows} read"
            )

    def to_dict(self) -> dict[str, Any]:
        self.check_balanced()
        return {
            "source": str(self.source),
            "input_rows": self.input_rows,
            "kept": self.kept,
            "truncated": self.truncated,
            "dropped": dict(sorted(self.dropped.items())),
            "dropped_total": self.total_dropped,
            "dropped_examples": self.examples,
        }
