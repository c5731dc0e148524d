"""Probe: whatever file a user hands ``read_table``, it returns a Table that accounts for every record, or raises
a one-line DataError naming the file; never another exception, never a lost or double-counted record.

Files are generated with what a hostile or careless user produces: any Unicode (NUL, control characters, line
and paragraph separators, byte-order marks), lone-surrogate escapes, integers past Python's 4300-digit limit,
nesting thousands deep, repeated and blank column names, ragged CSV rows, mixed kinds in one column, several
encodings, and plain random bytes in every format.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapterlab.data import readers
from adapterlab.data.load import ROLES, RowLedger, Table, read_table
from adapterlab.errors import DataError

pytestmark = pytest.mark.probe

PROBE = settings(
    # A few seconds in the unit tier; PROBE_EXAMPLES=5000 for a long hunt.
    max_examples=int(os.environ.get("PROBE_EXAMPLES", "60")),
    deadline=None,  # one example may parse a 5,000-digit number or recurse to Python's limit
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
REASONS = {"unparseable", "not_an_object", "too_deep", "number_too_long", "extra_fields", "bad_quotes"}
REASONS |= {"wrong_type", "mixed_types", "duplicate_key"}
NOT_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff]")
ENCODINGS = ["utf-8", "utf-8-sig", "utf-16", "utf-32"]  # read back with the default utf-8: BOMs must be honoured

# Text that breaks naive readers: control characters, separators Python's str.splitlines honours, BOMs, quotes.
nasty = st.sampled_from(
    ["\x00", "\x07", "\x1b", "\x0b", "\x0c", "\r", "\n", "\t", "\u2028", "\x85", "\ufeff", '"', ","]
)
text = st.lists(st.one_of(st.text(max_size=8), nasty), max_size=6).map("".join)
names = st.one_of(st.sampled_from(["id", "text", "label", "body", "", " "]), text)


def json_value(depth: int = 2) -> st.SearchStrategy[str]:
    """JSON source text of one value, hostile fragments included (written raw: json.dumps cannot make them)."""
    scalar = st.one_of(
        st.none().map(json.dumps),
        st.booleans().map(json.dumps),
        st.integers().map(json.dumps),
        st.floats(allow_nan=True, allow_infinity=True).map(json.dumps),
        text.map(lambda s: json.dumps(s, ensure_ascii=False)),
        text.map(json.dumps),
        st.integers(4000, 4600).map(lambda n: "9" * n),  # around the int-conversion limit
        st.integers(1, 3000).map(lambda n: "[" * n + "]" * n),  # to and past the recursion limit
        st.integers(1, 3000).map(lambda n: '{"a": ' * n + "1" + "}" * n),
        st.just('"\\ud800 lone surrogate"'),
    )
    if depth == 0:
        return scalar
    inner = json_value(depth - 1)
    return st.one_of(
        scalar,
        st.lists(inner, max_size=3).map(lambda items: "[" + ", ".join(items) + "]"),
        json_object(inner),
    )


def json_object(values: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    pair = st.tuples(names.map(lambda k: json.dumps(k, ensure_ascii=False)), values)
    return st.lists(pair, max_size=5).map(lambda pairs: "{" + ", ".join(f"{k}: {v}" for k, v in pairs) + "}")


record = json_object(json_value())
garbage_line = text.map(lambda s: "x" + s.replace("\n", " ").replace("\r", " ").replace("\x85", " "))
blank_line = st.sampled_from(["", " ", "\t", "\r", " \r"])


def read_or_refuse(path, **kwargs) -> Table | None:
    """The table, or None when read_table refused the file in the house style (one line naming the file)."""
    try:
        return read_table(path, **kwargs)
    except DataError as exc:
        assert "\n" not in str(exc) and path.name in str(exc), str(exc)
        return None


def assert_accounts_for_every_record(table: Table, expected: int | None = None) -> None:
    """Rows and bad records number 1..n once each, the ledger balances, cells are text, roles never crash."""
    if expected is not None:
        assert table.n_records == expected
    numbers = sorted([*table.numbers, *(b.number for b in table.bad)])
    assert numbers == list(range(1, table.n_records + 1))
    assert {b.reason for b in table.bad} <= REASONS
    assert all("\n" not in b.detail for b in table.bad)
    for row in table.rows:
        assert all(v is None or (isinstance(v, str) and not NOT_TEXT.search(v)) for v in row.values())
        assert set(row) <= set(table.columns)
    roles = {column: ROLES[i % len(ROLES)] for i, column in enumerate(table.columns)}
    table.type_warnings(roles)
    before = table.n_records
    table.reject(table.type_problems(roles))
    assert table.n_records == before
    ledger = RowLedger.for_table(table)
    for _ in table.rows:
        ledger.keep()
    ledger.check_balanced()
    assert set(ledger.dropped) <= REASONS
    if table.bad:
        with pytest.raises(DataError) as err:
            RowLedger.for_table(table, on_bad_rows="error")
        assert str(err.value).startswith(f"{table.path} row {table.bad[0].number}: ")
        assert "\n" not in str(err.value)


@PROBE
@given(
    lines=st.lists(st.one_of(record, json_value(1), garbage_line, blank_line), max_size=8),
    encoding=st.sampled_from(ENCODINGS),
    ending=st.sampled_from(["\n", "\r\n"]),
)
def test_jsonl_accounts_for_every_line(tmp_path, lines, encoding, ending):
    path = tmp_path / "probe.jsonl"
    path.write_bytes(ending.join(lines).encode(encoding))
    expected = sum(1 for line in lines if line.strip(" \t\r"))
    if readers._one_json_array(ending.join(lines)):  # one JSON array of records in a .jsonl: read as an array
        expected = len(readers._DECODER.decode(ending.join(lines).strip(" \t\r\n")))
    table = read_or_refuse(path)
    if expected == 0:
        assert table is None  # an empty file or one without records is refused, not returned empty
    else:
        assert table is not None, "a file of readable lines was refused"
        assert_accounts_for_every_record(table, expected)


@PROBE
@given(
    items=st.lists(st.one_of(record, record, json_value(1)), max_size=6),
    wrapped=st.booleans(),
    encoding=st.sampled_from(ENCODINGS),
    cut=st.booleans(),
)
def test_json_array_accounts_for_every_item(tmp_path, items, wrapped, encoding, cut):
    document = "[\n" + ",\n".join(items) + "\n]"
    document = '{"data": ' + document + "}" if wrapped else document
    document = document[: len(document) // 2] if cut else document
    path = tmp_path / "probe.json"
    path.write_bytes(document.encode(encoding))
    table = read_or_refuse(path)
    if cut or not items:
        assert table is None or cut
    else:
        assert table is not None, "a well-formed array was refused"
    if table is not None:
        assert_accounts_for_every_record(table, None if cut else len(items))


@PROBE
@given(
    header=st.lists(names, min_size=1, max_size=5),
    rows=st.lists(st.lists(st.one_of(text, st.sampled_from(["", "42", "true"])), min_size=1, max_size=7), max_size=8),
    sep=st.sampled_from([",", "\t"]),
    ending=st.sampled_from(["\n", "\r\n", "\r"]),
    encoding=st.sampled_from(ENCODINGS),
)
def test_delimited_accounts_for_every_row(tmp_path, header, rows, sep, ending, encoding):
    buffer = io.StringIO(newline="")
    # The writer quotes a field holding CR or LF only when its line ending holds them, and every reader (ours,
    # pandas, Excel) takes a bare CR or LF for the end of a record: quote all where the ending is not CRLF.
    quoting = csv.QUOTE_MINIMAL if ending == "\r\n" else csv.QUOTE_ALL
    csv.writer(buffer, delimiter=sep, lineterminator=ending, quoting=quoting).writerows([header, *rows])
    path = tmp_path / ("probe.csv" if sep == "," else "probe.tsv")
    path.write_bytes(buffer.getvalue().encode(encoding))
    table = read_or_refuse(path)
    if rows:
        assert table is not None, "a file the csv module wrote was refused"
        assert_accounts_for_every_record(table, len(rows))
        extra = [b for b in table.bad if b.reason == "extra_fields"]
        assert len(extra) == sum(1 for r in rows if any(f.strip() for f in r[len(header) :]))
    else:
        assert table is None


column_kinds = {
    "int": (st.integers(-(2**63), 2**63 - 1), pa.int64()),
    "float": (st.floats(allow_nan=True), pa.float64()),
    "text": (text, pa.string()),
    "bool": (st.booleans(), pa.bool_()),
    "list": (st.lists(text, max_size=3), pa.list_(pa.string())),
    "binary": (st.binary(max_size=6), pa.binary()),
    "struct": (
        st.fixed_dictionaries({"a": text, "b": st.integers(0, 9)}),
        pa.struct({"a": pa.string(), "b": pa.int8()}),
    ),
    "time": (st.datetimes(), pa.timestamp("us")),
    "decimal": (
        st.decimals(places=2, allow_nan=False, allow_infinity=False, min_value=-999, max_value=999),
        pa.decimal128(5, 2),
    ),
}


@st.composite
def parquet_tables(draw) -> pa.Table:
    n_rows = draw(st.integers(0, 6))
    columns, fields = [], []
    for name in draw(st.lists(names, min_size=1, max_size=4)):
        values, kind = column_kinds[draw(st.sampled_from(sorted(column_kinds)))]
        columns.append(pa.array(draw(st.lists(st.one_of(st.none(), values), min_size=n_rows, max_size=n_rows)), kind))
        fields.append(name)
    return pa.Table.from_arrays(columns, names=fields)


@PROBE
@given(data=parquet_tables(), cut=st.integers(0, 3))
def test_parquet_accounts_for_every_row(tmp_path, data, cut):
    path = tmp_path / "probe.parquet"
    pq.write_table(data, path)
    if cut:  # a download cut short, by a little or a lot
        path.write_bytes(path.read_bytes()[: -cut * 7])
    table = read_or_refuse(path)
    if cut or data.num_rows == 0:
        assert table is None
    else:
        assert table is not None, "a Parquet file pyarrow wrote was refused"
        assert_accounts_for_every_record(table, data.num_rows)


@PROBE
@given(
    content=st.one_of(st.binary(max_size=400), text.map(lambda s: s.encode("utf-8", "surrogatepass"))),
    suffix=st.sampled_from([".csv", ".tsv", ".jsonl", ".json", ".parquet", ".csv.gz", ".jsonl.bz2"]),
    encoding=st.sampled_from(["utf-8", "latin-1", "cp1251", "utf-16"]),
)
def test_random_bytes_are_a_table_or_a_data_error(tmp_path, content, suffix, encoding):
    path = tmp_path / f"probe{suffix}"
    path.write_bytes(content)
    table = read_or_refuse(path, encoding=encoding)
    if table is not None:
        assert_accounts_for_every_record(table)
