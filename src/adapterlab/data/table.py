"""A table read from a data file: rows of strings, the records that could not become rows, and each cell's kind.

Types: every value comes back as a string (``None`` when missing or null), and its original kind (text, number,
bool, list, object, binary, null) is kept (:attr:`Table.kinds`), because "true", 42 and ``["electronics"]`` all
look like strings afterwards and became bogus classes. :meth:`Table.type_problems` judges the kinds against how
the recipe uses each column:

- ``text`` (prompt/text columns): text and numbers are text (a subject "404" is fine); a bool, list, object or
  binary value is a bad row (``wrong_type``); a column of numbers only is a warning (:meth:`Table.type_warnings`:
  probably the wrong column, but not wrong data).
- ``label``: a value whose kind differs from the column's most common kind is a bad row (``mixed_types``: a list
  or bool among text labels, text among numbers); a column of lists or objects is ``wrong_type`` (a label is one
  value). All-number or all-bool labels are consistent and fine.
- ``id``: text and numbers are both fine (an id is a name); anything else is ``wrong_type``.

Bools render as ``true``/``false`` (as the file spells them, and as a CSV would), lists and objects as JSON. CSV
has no kinds: every cell is text, and a text column whose every value reads as a number gets the warning.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

ROLES = ("text", "label", "id")
# How messages name a kind: one value of it (KIND_NAMES), and many.
KIND_NAMES = {
    "text": "text",
    "number": "a number",
    "bool": "a bool",
    "list": "a list",
    "object": "an object",
    "null": "null",
}
KIND_NAMES |= {"binary": "binary data"}
_PLURAL = {"number": "numbers", "bool": "bools", "list": "lists", "object": "objects"}
_NUMBER = re.compile(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*")


class BadRecord(NamedTuple):
    """A record that did not become a row: its 1-based number, the ledger reason, a one-line detail."""

    number: int
    reason: str
    detail: str


@dataclass
class Table:
    path: Path
    columns: list[str]
    rows: list[dict[str, str | None]]
    # The 1-based record number of each row (bad records keep their numbers).
    numbers: list[int] = field(default_factory=list)
    bad: list[BadRecord] = field(default_factory=list)
    # Record number -> column -> kind, only where the kind is not text or null (CSV: always empty).
    kinds: dict[int, dict[str, str]] = field(default_factory=dict)
    # Record number -> keys that one JSON record gave twice (the last value was kept).
    duplicate_keys: dict[int, set[str]] = field(default_factory=dict)
    # Header name -> its 1-based positions, for names the header gives more than once.
    duplicate_columns: dict[str, list[int]] = field(default_factory=dict)
    cells_cleaned: int = 0  # cells from which control characters were removed
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.numbers:
            self.numbers = list(range(1, len(self.rows) + 1))

    @property
    def n_records(self) -> int:
        return len(self.rows) + len(self.bad)

    @property
    def unparsed(self) -> list[tuple[int, str]]:
        """(number, detail) of every bad record: the older view, without reasons; prefer :attr:`bad`."""
        return [(b.number, b.detail) for b in self.bad]

    def column_kinds(self, column: str) -> Counter:
        """How many rows hold each kind in ``column`` (null included)."""
        return Counter(
            _kind_of(self.kinds.get(n, {}), row, column) for n, row in zip(self.numbers, self.rows, strict=True)
        )

    def type_problems(self, columns: dict[str, str]) -> list[BadRecord]:
        """Rows whose value in a used column cannot serve its role (``columns`` maps column -> text|label|id).

        At most one record per row (its first problem), in row order: hand them to :meth:`reject`.
        """
        checks = []
        for column, role in columns.items():
            if role not in ROLES:
                raise ValueError(f"role {role!r} for column {column!r} is not one of {ROLES}")
            counts = self.column_kinds(column)
            dominant = next((k for k, _ in counts.most_common() if k != "null"), "null")
            checks.append((column, role, dominant, counts[dominant]))
        problems = []
        for number, row in zip(self.numbers, self.rows, strict=True):
            kinds, twice = self.kinds.get(number, {}), self.duplicate_keys.get(number, ())
            for column, role, dominant, n_dominant in checks:
                if column in twice:
                    detail = f"key {column!r} appears twice in this record; keep one"
                    problems.append(BadRecord(number, "duplicate_key", detail))
                    break
                problem = _role_problem(column, role, _kind_of(kinds, row, column), dominant, n_dominant)
                if problem:
                    problems.append(BadRecord(number, *problem))
                    break
        return problems

    def type_warnings(self, columns: dict[str, str]) -> list[str]:
        """One line per text column that holds only numbers: probably the wrong column, though not bad data."""
        warnings = []
        for column, role in columns.items():
            values = [v for v in (row.get(column) for row in self.rows) if v is not None and v.strip()]
            if role == "text" and values and all(_NUMBER.fullmatch(v) for v in values):
                warnings.append(
                    f"{self.path}: column {column!r} is used as text but holds only numbers; check it is the "
                    "column you mean"
                )
        return warnings

    def reject(self, records: list[BadRecord]) -> None:
        """Move rows to the bad records (e.g. what :meth:`type_problems` found); ``n_records`` is unchanged."""
        gone = {r.number for r in records}
        if len(gone) != len(records) or not gone <= set(self.numbers):
            raise ValueError("reject takes at most one record per row, and only rows of this table")
        kept = [(n, row) for n, row in zip(self.numbers, self.rows, strict=True) if n not in gone]
        self.numbers, self.rows = [n for n, _ in kept], [row for _, row in kept]
        self.bad = sorted([*self.bad, *records], key=lambda r: r.number)


def _kind_of(kinds: dict[str, str], row: dict[str, str | None], column: str) -> str:
    return kinds.get(column) or ("null" if row.get(column) is None else "text")


def _role_problem(column: str, role: str, kind: str, dominant: str, n_dominant: int) -> tuple[str, str] | None:
    """(reason, detail) when a cell of this kind cannot serve the role; the rules are in the module docstring."""
    if kind == "null":
        return None  # missing values are prepare's to count (missing_field, missing_label)
    if role in ("text", "id"):
        if kind in ("text", "number"):
            return None
        wanted = "text" if role == "text" else "an id (text or a number)"
        return "wrong_type", f"column {column!r} holds {KIND_NAMES[kind]} here, not {wanted}"
    if kind != dominant:
        return (
            "mixed_types",
            f"column {column!r} holds {_PLURAL.get(dominant, KIND_NAMES[dominant])} in {n_dominant} rows but "
            f"{KIND_NAMES[kind]} here",
        )
    if kind in ("list", "object", "binary"):
        return "wrong_type", f"column {column!r} holds {KIND_NAMES[kind]}; a label must be one value (text or a number)"
    return None
