"""Files -> rows, and the row ledger that accounts for every input row.

Reading is :mod:`adapterlab.data.readers` (CSV, TSV, JSONL, JSON, Parquet, compressed; every record a row or a
counted bad record) into a :class:`~adapterlab.data.table.Table`; this module is what the stages use: the reader,
the column check and the :class:`RowLedger`. Rows are numbered from 1 in file order and every message uses that
number.
"""

from __future__ import annotations

import difflib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapterlab.data.readers import detect_format, read_table
from adapterlab.data.table import ROLES, BadRecord, Table
from adapterlab.errors import DataError

__all__ = ["ROLES", "BadRecord", "RowLedger", "Table", "detect_format", "read_table", "require_columns"]


def require_columns(table: Table, needed: dict[str, str]) -> None:
    """``needed`` maps a column to the recipe key that names it; a missing or ambiguous one is a one-line error."""
    for column, key in needed.items():
        if column in table.duplicate_columns:
            positions = ", ".join(map(str, table.duplicate_columns[column]))
            raise DataError(
                f"{table.path}: column {column!r} (from {key}) appears in the header at positions {positions}; "
                "rename all but one so the recipe names a single column"
            )
        if column in table.columns:
            continue
        close = difflib.get_close_matches(column, table.columns, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        shown = ", ".join(repr(c)[1:-1] for c in table.columns[:12]) + (" ..." if len(table.columns) > 12 else "")
        raise DataError(f"{table.path}: column {column!r} (from {key}) not found{hint} (columns: {shown})")


# -------------------------------------------------------------------------------------------- accounting


@dataclass
class RowLedger:
    """Every input row ends up kept, used as context (another row's example holds it) or dropped with a reason; the
    counts add up to the input count.

    In ``error`` mode the first bad row raises a :class:`DataError` naming the file and row instead.
    """

    source: Path
    input_rows: int
    on_bad_rows: str = "drop"
    kept: int = 0
    context: int = 0  # rows used as context for other rows' examples, not examples themselves
    truncated: int = 0
    dropped: Counter = field(default_factory=Counter)
    examples: list[dict[str, Any]] = field(default_factory=list)
    max_examples_per_reason: int = 20
    cells_cleaned: int = 0  # cells from which control characters were removed (Table.cells_cleaned)
    warnings: list[str] = field(default_factory=list)

    @classmethod
    def for_table(cls, table: Table, on_bad_rows: str = "drop") -> RowLedger:
        """A ledger over ``table``'s records with its bad records already dropped (under ``error`` the first raises)."""
        ledger = cls(table.path, table.n_records, on_bad_rows, cells_cleaned=table.cells_cleaned)
        ledger.warnings = list(table.warnings)
        for record in table.bad:
            ledger.drop(record.number, record.reason, record.detail)
        return ledger

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

    def as_context(self) -> None:
        self.context += 1

    def unkeep(self, truncated: bool = False) -> None:
        """Take back a kept row that a later stage (e.g. split assignment) drops."""
        self.kept -= 1
        self.truncated -= int(truncated)

    @property
    def total_dropped(self) -> int:
        return sum(self.dropped.values())

    def check_balanced(self) -> None:
        if self.kept + self.context + self.total_dropped != self.input_rows:
            raise AssertionError(
                f"row accounting is off: {self.kept} kept + {self.context} context + {self.total_dropped} dropped "
                f"!= {self.input_rows} read"
            )

    def to_dict(self) -> dict[str, Any]:
        self.check_balanced()
        return {
            "source": str(self.source),
            "input_rows": self.input_rows,
            "kept": self.kept,
            **({"context": self.context} if self.context else {}),
            "truncated": self.truncated,
            "dropped": dict(sorted(self.dropped.items())),
            "dropped_total": self.total_dropped,
            "dropped_examples": self.examples,
            "cells_cleaned_of_control_chars": self.cells_cleaned,
            "warnings": self.warnings,
        }
