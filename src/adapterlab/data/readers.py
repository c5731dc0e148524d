"""Files -> a :class:`~adapterlab.data.table.Table`: every record a row or a counted bad record.

Supported: CSV, TSV, JSONL (one object per line), JSON (a list of objects, or one key holding that list) and
Parquet; text formats may be compressed (.gz, .bz2, .xz). Rows are numbered from 1 in file order ("row 17" is
the 17th data record; the header and blank lines are not records) and every message uses that number.

What a hostile or sloppy file gets, and why:

- One bad record never rejects the file. A record that cannot become a row is a :class:`BadRecord` with a
  reason the data report counts on its own: ``unparseable`` (not JSON), ``not_an_object`` (a JSONL line that is
  a list or a number), ``too_deep`` (nesting past what Python's JSON reader can follow), ``number_too_long``
  (an integer with more digits than Python converts, 4300 by default), ``extra_fields`` (a CSV row with more
  non-empty fields than the header; the row number is known because we parse with the csv module) and
  ``bad_quotes`` (text after a closing quote; a quote opened by mistake takes the next lines into its field up
  to that point, and each of those lines that looks like a record is counted as lost with it).
  ``Table.n_records`` = rows + bad records, so counts add up.
- A problem of the file as a whole is one :class:`DataError` naming the file (and line) and what to do: an
  encoding that does not decode, a quote that is never closed (it swallows every later row), a JSON array
  broken mid-way (where the next item starts is unknowable), a damaged Parquet or compressed file.
- Byte-order marks are honoured, never read as text: a UTF-8 BOM is dropped, and a UTF-16/32 BOM selects that
  encoding when ``data.encoding`` is UTF-8 (the default; those bytes cannot be UTF-8). UTF-16 without a BOM
  (every other byte NUL) is an error asking for ``data.encoding`` rather than text full of NULs.
- C0 control characters other than tab, newline and carriage return (NUL above all), and lone surrogates
  (a JSON ``\\ud800`` that no UTF-8 file can hold) are not text: they are removed from every cell and
  ``Table.cells_cleaned`` counts the cells changed, a figure for the data report. A body of NULs becomes
  empty and prepare drops it as ``empty_field``.
- Column names: a name that appears twice is read once (the first) with a warning, and is an error naming the
  file and column as soon as a recipe uses it (:func:`require_columns`): the recipe cannot say which one it
  means. A nameless header column is not read; a warning says so when it holds values. The same goes for a
  JSON key given twice in one record: that row is bad (``duplicate_key``) when the recipe uses the key.
- Types: each cell's kind is kept and judged against the recipe's use of the column, see
  :mod:`adapterlab.data.table`.
- Smaller choices: a CSV row shorter than the header gives None (missing) for the cells it lacks; extra fields
  that are all empty (a trailing comma) cost nothing; JSONL is split on \n only (a stray \r inside a record
  does not cut it in two) and a raw control character inside a JSON string is accepted, then cleaned.
"""

from __future__ import annotations

import bz2
import codecs
import csv
import gzip
import io
import json
import lzma
import math
import re
import sys
import zlib
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple

from adapterlab.data.table import KIND_NAMES, BadRecord, Table
from adapterlab.errors import DataError

FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json"}
FORMATS |= {".parquet": "parquet", ".pq": "parquet"}
# Control characters that are not layout, and lone surrogates (UTF-8 cannot encode them: a later write fails).
_NOT_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff]")
_UNNAMED_INDEX = re.compile(r"__index_level_\d+__")


class Keys(NamedTuple):
    """How the user names the file, its format and its encoding where the reading was asked for (messages)."""

    path: str = "data.path"
    format: str = "data.format"
    encoding: str = "data.encoding"


RECIPE_KEYS = Keys()


def detect_format(path: Path, fmt: str = "auto", keys: Keys = RECIPE_KEYS) -> str:
    if fmt != "auto":
        return fmt
    suffixes = [s.lower() for s in path.suffixes if s.lower() not in (".gz", ".bz2", ".zst", ".xz")]
    for suffix in reversed(suffixes):
        if suffix in FORMATS:
            return FORMATS[suffix]
    raise DataError(
        f"{path}: cannot tell the format from the extension; set {keys.format} (csv, tsv, jsonl, json, parquet)"
    )


def read_table(path: str | Path, fmt: str = "auto", encoding: str = "utf-8", keys: Keys = RECIPE_KEYS) -> Table:
    """Every record of the file as a row or a :class:`BadRecord`; a file that cannot be read is a DataError.
    ``keys``: how the messages name the settings (a recipe's ``data.*`` keys, or a command's options)."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a data file; give the file itself ({keys.path})")
    if not path.is_file():
        raise DataError(f"{path}: data file not found (check {keys.path}; relative paths start from here)")
    kind = detect_format(path, fmt, keys)
    if kind == "parquet":
        table = _read_parquet(path)
    else:
        text = _read_text(path, encoding, keys)
        if not text.strip():
            raise DataError(f"{path}: the file is empty")
        if kind in ("csv", "tsv"):
            table = _read_delimited(path, text, "\t" if kind == "tsv" else ",")
        elif kind == "jsonl" and _one_json_array(text):
            table = _read_json(path, text)  # one JSON array, not a record per line: read as what it is
            table.warnings.append(f"{path}: read as one JSON array of records (it starts with '['), not as JSON Lines")
        elif kind == "jsonl":
            table = _read_jsonl(path, text)
        elif kind == "json":
            table = _read_json(path, text)
        else:
            raise DataError(f"{path}: unknown {keys.format} '{fmt}' (csv, tsv, jsonl, json, parquet)")
    if table.n_records == 0:
        raise DataError(f"{path}: the file has no data rows")
    return table


# ------------------------------------------------------------------------------------------------ bytes -> text

_BOMS = [(codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32")]  # before UTF-16: FF FE starts both
_BOMS += [(codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")]


def _read_bytes(path: Path) -> bytes:
    opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(path.suffix.lower())
    if path.suffix.lower() == ".zst":
        raise DataError(f"{path}: zstd files are not read directly; decompress it (unzstd) or use .gz")
    if opener is None:
        return path.read_bytes()
    try:
        with opener(path) as handle:
            return handle.read()
    except (OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise DataError(f"{path}: cannot decompress ({_one_line(exc)}); check the file is complete") from None


def _read_text(path: Path, encoding: str, keys: Keys = RECIPE_KEYS) -> str:
    raw = _read_bytes(path)
    candidates = _encodings(path, raw, encoding, keys)
    for candidate in candidates:
        try:
            return raw.decode(candidate).removeprefix("\ufeff")  # a byte-order mark is never content
        except UnicodeDecodeError as exc:
            error = exc
    line = raw.count(b"\n", 0, error.start) + 1
    raise DataError(
        f"{path}: not readable as {candidates[0]} (line {line}, byte {error.start}); set {keys.encoding} "
        "(e.g. cp1251, latin-1)"
    )


def _encodings(path: Path, raw: bytes, encoding: str, keys: Keys = RECIPE_KEYS) -> list[str]:
    """The encodings to try, in order: data.encoding, or what a byte-order mark says when that is UTF-8."""
    try:
        if codecs.lookup(encoding).name != "utf-8":
            return [encoding]
    except LookupError:
        raise DataError(f"{path}: unknown {keys.encoding} '{encoding}' (e.g. utf-8, cp1251, latin-1)") from None
    # A UTF-16/32 byte-order mark is never valid UTF-8, so honouring it cannot misread a UTF-8 file. FF FE 00 00
    # opens UTF-32LE and also UTF-16LE text that starts with a NUL: both are tried.
    marked = [name for bom, name in _BOMS if raw.startswith(bom)]
    odd, even = raw[1:4096:2], raw[0:4096:2]
    if not marked and len(odd) >= 4 and max(odd.count(0), even.count(0)) > 0.9 * len(odd):
        raise DataError(
            f"{path}: every other byte is NUL: this is UTF-16 without a byte-order mark, or not a text file; "
            f"set {keys.encoding} (utf-16-le or utf-16-be)"
        )
    return marked or ["utf-8"]


def _filled(value: Any) -> bool:
    return value is not None and (not isinstance(value, str) or bool(value.strip()))


def _one_line(exc: BaseException, limit: int = 300) -> str:
    return " ".join(str(exc).split())[:limit]


# ------------------------------------------------------------------------------------------------ rows


def _cell(value: Any) -> tuple[str | None, str]:
    """(text, kind) of one parsed value. Raises RecursionError for structures too deep to render."""
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")  # Parquet writers often store text as plain binary
        except UnicodeDecodeError:
            return None, "binary"
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None, "null"
    if isinstance(value, bool):  # before numbers: a bool is an int
        return ("true" if value else "false"), "bool"
    if isinstance(value, (int, float, Decimal)):
        return str(value), "number"
    if isinstance(value, (list, tuple)):
        return json.dumps(value, ensure_ascii=False, default=str), "list"
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False, default=str), "object"
    return str(value), "text"  # strings, dates, times


class _Rows:
    """Collects a file's records in order: rows rendered to text with their kinds kept, and bad records."""

    def __init__(self, path: Path):
        self.path = path
        self.columns: dict[str, None] = {}
        self.rows: list[dict[str, str | None]] = []
        self.numbers: list[int] = []
        self.bad: list[BadRecord] = []
        self.kinds: dict[int, dict[str, str]] = {}
        self.duplicate_keys: dict[int, set[str]] = {}
        self.cleaned = 0

    def reject(self, number: int, reason: str, detail: str) -> None:
        self.bad.append(BadRecord(number, reason, detail))

    def add(self, number: int, record: dict[str, Any], where: str) -> None:
        try:
            cells = {key: _cell(value) for key, value in record.items()}
        except RecursionError:
            self.reject(number, "too_deep", f"{where} is nested too deeply to read")
            return
        row, kinds = {}, {}
        for key, (text, kind) in cells.items():
            if text is not None:
                text, removed = _NOT_TEXT.subn("", text)
                self.cleaned += removed > 0
            row[key] = text
            if kind not in ("text", "null"):
                kinds[key] = kind
        if kinds:
            self.kinds[number] = kinds
        if isinstance(record, _Pairs) and record.twice:
            self.duplicate_keys[number] = record.twice
        self.columns.update(dict.fromkeys(row))
        self.rows.append(row)
        self.numbers.append(number)

    def table(self, columns: list[str] | None = None) -> Table:
        columns = list(self.columns) if columns is None else columns
        table = Table(self.path, columns, self.rows, self.numbers, self.bad, self.kinds, self.duplicate_keys)
        table.cells_cleaned = self.cleaned
        return table


# ------------------------------------------------------------------------------------------------ CSV / TSV


@dataclass
class _Header:
    """Which positions are read under which name; a repeated or blank name is noted, never guessed at."""

    read: list[tuple[int, str]]
    width: int
    duplicates: dict[str, list[int]]  # name -> 1-based positions
    nameless: list[int]  # 0-based positions

    @classmethod
    def of(cls, names: list[str]) -> _Header:
        read, seen, nameless = [], {}, []
        for position, name in enumerate(names):
            if not name.strip():
                nameless.append(position)
            elif name in seen:
                seen[name].append(position + 1)
            else:
                seen[name] = [position + 1]
                read.append((position, name))
        return cls(read, len(names), {n: p for n, p in seen.items() if len(p) > 1}, nameless)

    def finish(self, table: Table, filled: set[int]) -> Table:
        """Record duplicates and warn about what is not read (``filled``: nameless positions holding values)."""
        table.duplicate_columns = self.duplicates
        for name, positions in self.duplicates.items():
            table.warnings.append(
                f"{table.path}: column {name!r} appears {len(positions)} times in the header (positions "
                f"{', '.join(map(str, positions))}); only the first is read, and a recipe cannot use it until "
                "the others are renamed"
            )
        for position in sorted(filled):
            table.warnings.append(
                f"{table.path}: column {position + 1} has no name in the header but holds values; they are not "
                "read (name the column to use them)"
            )
        return table


def _read_delimited(path: Path, text: str, sep: str) -> Table:
    # The csv module, not pandas: it gives each record's line, so one bad row is counted, not fatal.
    previous = csv.field_size_limit()
    csv.field_size_limit(max(previous, min(len(text) + 1, 2**31 - 1)))  # a long article is a field, not an error
    semicolons = sep == "," and _semicolon_header(text)
    try:
        table = _parse_delimited(path, text, ";" if semicolons else sep)
    finally:
        csv.field_size_limit(previous)
    if semicolons:
        table.warnings.append(f"{path}: read as semicolon-separated (its header has ';' between names and no ',')")
    return table


def _semicolon_header(text: str) -> bool:
    """A .csv file whose header separates its names with ';' and has no ',' (a spreadsheet's export where the
    comma is the decimal mark): read with ';' rather than as one column."""
    header = next((line for line in text.splitlines() if line.strip()), "")
    return "," not in header and ";" in header


def _parse_delimited(path: Path, text: str, sep: str) -> Table:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep, strict=True)
    rows, header, filled, number = _Rows(path), None, set(), 0
    lines: list[str] = []  # the file's lines, split as the reader splits them: read once, if a quote goes wrong
    while True:
        start = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            if "end of data" in str(exc):  # EOF inside quotes: every later row was swallowed into one field
                raise DataError(
                    f"{path}: line {start}: a quoted field starts here and is never closed; close it, or double "
                    "a quote meant inside it"
                ) from None
            if header is None:
                raise DataError(f"{path}: line {start}: the header is not valid ({exc})") from None
            number += 1
            end = reader.line_num
            span = f"line {start}" if end == start else f"lines {start}-{end}"
            detail = f"{span}: {exc} (quote the whole field and double the quotes inside it)"
            rows.reject(number, "bad_quotes", detail)
            # A quote opened and not closed where it should be takes the next lines into its field until the
            # error: those that look like records of their own (enough separators) are counted as lost with it.
            lines = lines or io.StringIO(text, newline="").readlines()
            for line_number in range(start + 1, end + 1):
                line = lines[line_number - 1] if line_number <= len(lines) else ""
                if line.strip() and line.count(sep) >= header.width - 1:
                    number += 1
                    detail = f"line {line_number}: inside the field that the quote on line {start} opened"
                    rows.reject(number, "bad_quotes", detail)
            continue
        if not fields:
            continue  # a blank line is not a record
        if header is None:
            header = _Header.of(fields)
            continue
        number += 1
        if any(f.strip() for f in fields[header.width :]):
            what = "tab" if sep == "\t" else "comma"
            detail = f"line {start} has {len(fields)} fields, the header {header.width} (quote a {what} in a value)"
            rows.reject(number, "extra_fields", detail)
            continue
        filled.update(p for p in header.nameless if p < len(fields) and _filled(fields[p]))
        rows.add(number, {name: fields[p] if p < len(fields) else None for p, name in header.read}, f"line {start}")
    if header is None:
        raise DataError(f"{path}: the file is empty")
    return header.finish(rows.table([name for _, name in header.read]), filled)


# ------------------------------------------------------------------------------------------------ JSON


class _NumberTooLong(ValueError):
    def __init__(self, digits: int):
        super().__init__(digits)
        self.digits = digits


class _Pairs(dict):
    """A JSON object that gave some key more than once (the last value is kept, as json does)."""

    twice: set[str]


def _parse_int(digits: str) -> int:
    limit = sys.get_int_max_str_digits()
    if limit and len(digits.lstrip("-")) > limit:
        raise _NumberTooLong(len(digits.lstrip("-")))
    return int(digits)


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    record = dict(pairs)
    if len(record) == len(pairs):
        return record
    marked = _Pairs(record)
    marked.twice = {k for k, n in Counter(k for k, _ in pairs).items() if n > 1}
    return marked


# strict=False: a raw tab or NUL inside a string is kept (and cleaned) rather than costing the whole record.
_DECODER = json.JSONDecoder(parse_int=_parse_int, object_pairs_hook=_object, strict=False)
_JSON_SPACE = " \t\r\n"


def _why_not(exc: Exception, where: str) -> tuple[str, str]:
    """(reason, detail) for a JSON value that could not be read."""
    if isinstance(exc, _NumberTooLong):
        limit = sys.get_int_max_str_digits()
        return "number_too_long", f"{where} has a number of {exc.digits} digits (at most {limit} are read)"
    if isinstance(exc, RecursionError):
        return "too_deep", f"{where} is nested too deeply to read"
    assert isinstance(exc, json.JSONDecodeError)
    return "unparseable", f"{where} is not valid JSON ({exc.msg}, column {exc.colno})"


def _add_value(rows: _Rows, number: int, value: Any, where: str) -> None:
    if isinstance(value, dict):
        rows.add(number, value, where)
    else:
        kind = "list" if isinstance(value, list) else _cell(value)[1]  # a list may be too deep to render
        rows.reject(number, "not_an_object", f"{where} is {KIND_NAMES[kind]}, not a JSON object")


def _one_json_array(text: str) -> bool:
    """Whether a .jsonl file is one JSON array of records rather than a record per line: the whole text is valid
    JSON, a list holding objects. Anything else stays JSON Lines, every line a record or a counted bad one."""
    if not text.lstrip(_JSON_SPACE).startswith("["):
        return False
    try:
        value = _DECODER.decode(text.strip(_JSON_SPACE))
    except (_NumberTooLong, RecursionError, json.JSONDecodeError):
        return False
    return isinstance(value, list) and any(isinstance(item, dict) for item in value)


def _read_jsonl(path: Path, text: str) -> Table:
    rows, number = _Rows(path), 0
    # Split on \n only (JSON Lines): a stray \r inside a record does not cut it in two.
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip(_JSON_SPACE):
            continue  # a blank line is not a record
        number += 1
        where = f"line {lineno}"
        try:
            value = _DECODER.decode(line)
        except (_NumberTooLong, RecursionError, json.JSONDecodeError) as exc:
            rows.reject(number, *_why_not(exc, where))
            continue
        _add_value(rows, number, value, where)
    return rows.table()


# Strings (skipped whole, escapes included) and the characters that open, close or separate JSON values.
_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{},]', re.S)
_OPENING = re.compile(r'[ \t\r\n]*(\{[ \t\r\n]*"(?:[^"\\]|\\.)*"[ \t\r\n]*:[ \t\r\n]*)?\[', re.S)
_SHAPE = "a JSON data file must hold a list of objects (or one key holding that list); JSONL also works"


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _JSON_SPACE:
        pos += 1
    return pos


def _value_end(text: str, pos: int) -> int | None:
    """Where the JSON value at ``pos`` ends, by matching brackets outside strings (None: it never does).

    Used only to step over an item json could not read (too deep, too long a number) and go on to the next.
    """
    depth = 0
    for match in _TOKENS.finditer(text, pos):
        token = match.group()[0]
        if token in "[{":
            depth += 1
        elif depth == 0 and token in ",]}":
            return match.start()  # a scalar item ends where the next item or the list's end begins
        elif token in "]}":
            depth -= 1
            if depth == 0:
                return match.end()
    return None


def _array_start(path: Path, text: str) -> tuple[int, bool]:
    """Position after the opening '[' and whether the list sits under one key ({"data": [...]})."""
    opening = _OPENING.match(text)
    if opening is None:
        raise DataError(f"{path}: {_SHAPE}")
    return opening.end(), opening.group(1) is not None


def _read_json(path: Path, text: str) -> Table:
    # Item by item rather than json.loads(whole file): one unreadable item is a bad record, not a lost file.
    pos, wrapped = _array_start(path, text)
    rows, number = _Rows(path), 0
    pos = _skip_space(text, pos)
    closed = text.startswith("]", pos)
    pos += closed
    while not closed:
        number += 1
        pos = _skip_space(text, _json_item(path, rows, text, pos, number))
        if text.startswith(",", pos):
            pos = _skip_space(text, pos + 1)
        elif text.startswith("]", pos):
            pos, closed = pos + 1, True
        else:
            line = text.count("\n", 0, pos) + 1
            raise DataError(f"{path}: not valid JSON (line {line}: expected ',' or ']' after item {number})")
    pos = _skip_space(text, pos)
    if wrapped and text.startswith("}", pos):
        pos, wrapped = _skip_space(text, pos + 1), False
    if wrapped or pos < len(text):
        raise DataError(f"{path}: {_SHAPE}")
    return rows.table()


def _json_item(path: Path, rows: _Rows, text: str, pos: int, number: int) -> int:
    """Read the array item at ``pos`` into ``rows`` (as a row or a bad record); return where it ends."""
    try:
        value, end = _DECODER.raw_decode(text, pos)
    except (_NumberTooLong, RecursionError) as exc:
        rows.reject(number, *_why_not(exc, f"item {number}"))
        end = _value_end(text, pos)
        if end is None:
            raise DataError(f"{path}: item {number} never ends; the file is cut short") from None
        return end
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}: not valid JSON (line {exc.lineno}: {exc.msg}, in item {number}); fix it, or use JSONL so "
            "that a bad line costs one row"
        ) from None
    _add_value(rows, number, value, f"item {number}")
    return end


# ------------------------------------------------------------------------------------------------ Parquet


def _read_parquet(path: Path) -> Table:
    import pyarrow.parquet as pq

    try:
        # ParquetFile, not pq.read_table: the dataset reader refuses a file whose column names repeat.
        data = pq.ParquetFile(path).read()
        index = [
            c for c in (data.schema.pandas_metadata or {}).get("index_columns", []) if _UNNAMED_INDEX.fullmatch(str(c))
        ]
        columns = [data.column(i).to_pylist() for i in range(data.num_columns)]
    except Exception as exc:  # pyarrow raises several unrelated types for a damaged file
        raise DataError(f"{path}: not a readable Parquet file ({_one_line(exc)}); check the file is complete") from None
    # pandas stores an unnamed non-default index as a column "__index_level_0__": not data. A named index
    # (df.set_index("id")) is, and stays a column.
    names = [name if name not in index else "" for name in data.schema.names]
    header, rows, filled = _Header.of(names), _Rows(path), set()
    filled.update(p for p in header.nameless if data.schema.names[p] not in index and any(map(_filled, columns[p])))
    for i in range(data.num_rows):
        rows.add(i + 1, {name: columns[p][i] for p, name in header.read}, f"row {i + 1}")
    return header.finish(rows.table([name for _, name in header.read]), filled)
