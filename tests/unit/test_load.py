"""Reading data files: every format gives the same rows; bad files give one-line errors naming the file."""

import gzip
import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from adapterlab.data.load import RowLedger, read_table, require_columns
from adapterlab.errors import DataError

from samples import ticket_rows, write_csv


@pytest.fixture
def rows():
    return ticket_rows(6)


def test_all_formats_read_the_same_rows(tmp_path, rows):
    csv_path = write_csv(tmp_path / "t.csv", rows)
    pd.DataFrame(rows).to_csv(tmp_path / "t.tsv", sep="\t", index=False)
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    (tmp_path / "t.json").write_text(json.dumps(rows, ensure_ascii=False))
    pd.DataFrame(rows).to_parquet(tmp_path / "t.parquet")
    expected = read_table(csv_path).rows
    assert expected == rows
    for name in ("t.tsv", "t.jsonl", "t.json", "t.parquet"):
        table = read_table(tmp_path / name)
        assert table.rows == expected, name
        assert table.columns == list(rows[0])
        assert table.numbers == list(range(1, len(rows) + 1))


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.csv: data file not found"):
        read_table(tmp_path / "nope.csv")


def test_unknown_extension_asks_for_format(tmp_path):
    (tmp_path / "data.txt").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="set data.format"):
        read_table(tmp_path / "data.txt")
    assert read_table(tmp_path / "data.txt", fmt="csv").rows == [{"a": "1", "b": "2"}]


def test_unreadable_encoding_names_file_and_fix(tmp_path):
    path = tmp_path / "cp.csv"
    path.write_bytes("subject,body\nпринтер,не печатает\n".encode("cp1251"))
    with pytest.raises(DataError, match=r"cp\.csv: not readable as utf-8 .*set data.encoding"):
        read_table(path)
    assert read_table(path, encoding="cp1251").rows == [{"subject": "принтер", "body": "не печатает"}]


def test_empty_file(tmp_path):
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(DataError, match="empty"):
        read_table(tmp_path / "e.csv")
    (tmp_path / "h.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="no data rows"):
        read_table(tmp_path / "h.csv")


def test_jsonl_bad_lines_are_recorded_not_lost(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"a": "1"}\nnot json\n\n[1, 2]\n{"a": null, "b": 3}\n')
    table = read_table(path)
    assert table.n_records == 4
    assert table.rows == [{"a": "1"}, {"a": None, "b": "3"}]
    assert table.numbers == [1, 4]
    assert [n for n, _ in table.unparsed] == [2, 3]
    assert "line 2 is not valid JSON" in table.unparsed[0][1]


def test_missing_column_suggests_close_name(tmp_path, rows):
    table = read_table(write_csv(tmp_path / "t.csv", rows))
    with pytest.raises(DataError) as err:
        require_columns(table, {"anwser": "data.target_column"})
    message = str(err.value)
    assert "t.csv: column 'anwser' (from data.target_column) not found; did you mean 'answer'?" in message
    assert "columns: ticket_id, language" in message


def test_ledger_counts_add_up_and_error_mode_names_row(tmp_path):
    ledger = RowLedger(tmp_path / "x.csv", input_rows=4)
    ledger.keep()
    ledger.keep(truncated=True)
    ledger.drop(3, "empty_field", "column 'answer' is empty")
    ledger.drop(4, "duplicate", "same as row 1", fatal=False)
    report = ledger.to_dict()
    assert report["kept"] + report["dropped_total"] == report["input_rows"] == 4
    assert report["dropped"] == {"duplicate": 1, "empty_field": 1}
    strict = RowLedger(tmp_path / "x.csv", input_rows=2, on_bad_rows="error")
    with pytest.raises(DataError, match=r"x\.csv row 7: column 'answer' is empty \(set data.on_bad_rows: drop"):
        strict.drop(7, "empty_field", "column 'answer' is empty")


# ------------------------------------------------------------------ issue 12 (13): one bad record, not a lost file


def reasons(table):
    return [(b.number, b.reason) for b in table.bad]


def test_jsonl_record_too_long_or_too_deep_is_one_counted_row(tmp_path):
    path = tmp_path / "t.jsonl"
    lines = ['{"a": "1"}', '{"a": ' + "9" * 5000 + "}", '{"a": ' + "[" * 5000 + "]" * 5000 + "}", "[1]", '{"a": "5"}']
    path.write_text("\n".join(lines) + "\n")
    table = read_table(path)
    assert table.rows == [{"a": "1"}, {"a": "5"}]
    assert table.numbers == [1, 5]
    assert reasons(table) == [(2, "number_too_long"), (3, "too_deep"), (4, "not_an_object")]
    assert table.bad[0].detail == "line 2 has a number of 5000 digits (at most 4300 are read)"
    assert table.n_records == 5


def test_json_array_steps_over_an_unreadable_item(tmp_path):
    path = tmp_path / "t.json"
    deep = "[" * 5000 + '"]"' + "]" * 5000  # a bracket inside a string must not end the item early
    path.write_text('{"data": [{"a": 1}, {"a": ' + "9" * 5000 + "}, " + deep + ', {"b": "x"}]}')
    table = read_table(path)
    assert table.rows == [{"a": "1"}, {"b": "x"}]
    assert reasons(table) == [(2, "number_too_long"), (3, "too_deep")]
    (tmp_path / "cut.json").write_text('[{"a": 1}, {"a": ' + "[" * 5000)
    with pytest.raises(DataError, match=r"cut\.json: item 2 never ends"):
        read_table(tmp_path / "cut.json")
    (tmp_path / "broken.json").write_text('[{"a": 1},\n {"a": }]')
    with pytest.raises(DataError, match=r"broken\.json: not valid JSON \(line 2: Expecting value, in item 2\)"):
        read_table(tmp_path / "broken.json")


def test_csv_row_with_extra_fields_is_counted_with_its_line(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('a,b\n1,2\n3,4,5\n"multi\nline",6\n7,8,\n9\n"x"y,10\n')
    table = read_table(path)
    assert table.rows == [
        {"a": "1", "b": "2"},
        {"a": "multi\nline", "b": "6"},
        {"a": "7", "b": "8"},
        {"a": "9", "b": None},
    ]
    assert reasons(table) == [(2, "extra_fields"), (6, "bad_quotes")]
    assert table.bad[0].detail == "line 3 has 3 fields, the header 2 (quote a comma in a value)"
    assert table.bad[1].detail.startswith("line 8: ")  # the quoted record above spans lines 4-5
    assert table.n_records == 6


def test_rows_swallowed_by_a_stray_quote_are_counted_with_their_lines(tmp_path):
    """A quote opened by mistake takes the next lines into its field until the reader fails: the records on those
    lines are lost with it, and counted, so that the rows read add up to the rows in the file."""
    path = tmp_path / "q.csv"
    path.write_text('id,text,label\n1,fine,a\n2,"never closed,b\n3,swallowed,a\n4,also swallowed,b\n'
                    '5,"quoted" here,a\n6,fine again,b\n')  # fmt: skip
    table = read_table(path)
    assert [r["id"] for r in table.rows] == ["1", "6"]
    assert reasons(table) == [(2, "bad_quotes"), (3, "bad_quotes"), (4, "bad_quotes"), (5, "bad_quotes")]
    assert table.bad[0].detail.startswith("lines 3-6: ")
    assert [b.detail for b in table.bad[1:]] == [f"line {n}: inside the field that the quote on line 3 opened"
                                                 for n in (4, 5, 6)]  # fmt: skip
    assert table.n_records == 6  # six records in the file, six counted


def test_a_semicolon_separated_csv_is_read_as_such_and_said(tmp_path):
    """Spreadsheets where the comma is the decimal mark export .csv with ';'; a header with ';' and no ','."""
    path = tmp_path / "eu.csv"
    path.write_text('id;text;price\n1;"nice; cheap";3,50\n2;bad;4,00\n')
    table = read_table(path)
    assert table.rows == [
        {"id": "1", "text": "nice; cheap", "price": "3,50"},
        {"id": "2", "text": "bad", "price": "4,00"},
    ]
    assert table.warnings == [f"{path}: read as semicolon-separated (its header has ';' between names and no ',')"]
    (tmp_path / "plain.csv").write_text('id,text\n1,"a; b"\n')  # a comma header stays comma-separated
    assert read_table(tmp_path / "plain.csv").rows == [{"id": "1", "text": "a; b"}]


def test_a_json_array_saved_as_jsonl_is_read_as_an_array_and_said(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('[{"id": 1, "text": "a"},\n {"id": 2, "text": "b"}]\n')
    table = read_table(path)
    assert table.rows == [{"id": "1", "text": "a"}, {"id": "2", "text": "b"}]
    assert table.warnings == [f"{path}: read as one JSON array of records (it starts with '['), not as JSON Lines"]
    path.write_text('[1, 2]\n{"id": 3}\n')  # JSON Lines whose first record is a list: a bad record, as before
    assert reasons(read_table(path)) == [(1, "not_an_object")]


def test_messages_name_the_setting_where_the_reading_was_asked_for(tmp_path):
    """A recipe's data.* keys, or a command's own options (predict: --format, --encoding)."""
    from adapterlab.data.readers import Keys

    (tmp_path / "rows.txt").write_text("id,text\n1,a\n")
    (tmp_path / "latin.csv").write_bytes("id,text\n1,caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"rows\.txt: cannot tell the format from the extension; set data\.format"):
        read_table(tmp_path / "rows.txt")
    options = Keys("the input file", "--format", "--encoding")
    with pytest.raises(DataError, match=r"set --format \(csv, tsv, jsonl, json, parquet\)"):
        read_table(tmp_path / "rows.txt", keys=options)
    with pytest.raises(DataError, match=r"latin\.csv: not readable as utf-8 \(line 2, byte \d+\); set --encoding"):
        read_table(tmp_path / "latin.csv", keys=options)
    assert read_table(tmp_path / "latin.csv", encoding="latin-1").rows == [{"id": "1", "text": "café"}]
    with pytest.raises(DataError, match=r"is a folder, not a data file; give the file itself \(data\.path\)"):
        read_table(tmp_path)


def test_unclosed_quote_is_one_line_error_naming_its_line(tmp_path):
    (tmp_path / "q.csv").write_text('a,b\n1,2\n"3,4\n5,6\n')
    with pytest.raises(DataError, match=r"q\.csv: line 3: a quoted field starts here and is never closed"):
        read_table(tmp_path / "q.csv")


def test_bad_records_reach_the_ledger_with_their_reasons(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"a": "1"}\n{"a": ' + "9" * 5000 + "}\nnot json\n")
    table = read_table(path)
    ledger = RowLedger.for_table(table)
    for _ in table.rows:
        ledger.keep()
    report = ledger.to_dict()
    assert report["dropped"] == {"number_too_long": 1, "unparseable": 1}
    assert report["kept"] + report["dropped_total"] == report["input_rows"] == 3
    with pytest.raises(DataError) as err:
        RowLedger.for_table(table, on_bad_rows="error")
    assert str(err.value) == (
        f"{path} row 2: line 2 has a number of 5000 digits (at most 4300 are read) "
        "(set data.on_bad_rows: drop to skip such rows)"
    )


# ------------------------------------------------------------------ issue 12 (14): nothing accepted silently


def test_control_characters_are_removed_and_counted(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('id,body\n1,\x00\x00\x00\n2,"tab\tand\r\nnew\x07line"\n3,clean\n', newline="")
    table = read_table(path)
    assert [r["body"] for r in table.rows] == ["", "tab\tand\r\nnewline", "clean"]
    assert table.cells_cleaned == 2
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text('{"body": "a\\u0000b\\ud800"}\n')
    table = read_table(jsonl)
    assert table.rows == [{"body": "ab"}] and table.cells_cleaned == 1
    ledger = RowLedger.for_table(table)
    ledger.keep()
    assert ledger.to_dict()["cells_cleaned_of_control_chars"] == 1


def test_duplicate_column_is_an_error_when_a_recipe_uses_it(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("id,body,body,note\n1,first,second,x\n")
    table = read_table(path)
    assert table.columns == ["id", "body", "note"]
    assert table.rows == [{"id": "1", "body": "first", "note": "x"}]
    assert table.warnings == [
        f"{path}: column 'body' appears 2 times in the header (positions 2, 3); only the first is read, and a "
        "recipe cannot use it until the others are renamed"
    ]
    require_columns(table, {"note": "data.text_columns"})
    with pytest.raises(DataError, match=r"d\.csv: column 'body' \(from data.prompt_template\) appears in the header "):
        require_columns(table, {"body": "data.prompt_template"})
    pq.write_table(pa.table([[1], ["a"], ["b"]], names=["id", "text", "text"]), tmp_path / "d.parquet")
    with pytest.raises(DataError, match="column 'text' .* positions 2, 3"):
        require_columns(read_table(tmp_path / "d.parquet"), {"text": "data.text_columns"})


def test_nameless_header_column_is_not_read_and_warned_about_when_it_holds_values(tmp_path):
    path = tmp_path / "n.csv"
    path.write_text("a,,b,\n1,x,2,\n3,,4,\n")
    table = read_table(path)
    assert table.columns == ["a", "b"]
    assert table.rows == [{"a": "1", "b": "2"}, {"a": "3", "b": "4"}]
    assert table.warnings == [f"{path}: column 2 has no name in the header but holds values; they are not read "
                              "(name the column to use them)"]  # fmt: skip


def test_jsonl_kinds_are_kept_and_judged_by_role(tmp_path):
    path = tmp_path / "m.jsonl"
    records = [{"id": i, "text": f"review {i}", "category": "books", "stars": i % 5} for i in range(1, 7)]
    records[1]["category"] = ["electronics"]
    records[2]["category"] = True
    records[3]["text"] = False
    records[4]["id"] = {"x": 1}
    records[5]["category"] = 1
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    table = read_table(path)
    assert table.rows[1]["category"] == '["electronics"]' and table.rows[2]["category"] == "true"
    assert table.column_kinds("category") == {"text": 3, "list": 1, "bool": 1, "number": 1}
    problems = table.type_problems({"text": "text", "category": "label", "id": "id", "stars": "label"})
    assert [(p.number, p.reason) for p in problems] == [
        (2, "mixed_types"), (3, "mixed_types"), (4, "wrong_type"), (5, "wrong_type"), (6, "mixed_types")
    ]  # fmt: skip
    assert problems[0].detail == "column 'category' holds text in 3 rows but a list here"
    assert problems[2].detail == "column 'text' holds a bool here, not text"
    assert problems[3].detail == "column 'id' holds an object here, not an id (text or a number)"
    table.reject(problems)
    assert table.numbers == [1] and table.n_records == 6
    assert [b.number for b in table.bad] == [2, 3, 4, 5, 6]
    with pytest.raises(ValueError, match="only rows of this table"):
        table.reject(problems)  # twice would count those rows twice
    assert table.type_problems({"stars": "label", "id": "id"}) == []  # all-number labels and ids are fine


def test_numbers_used_as_text_are_a_warning_not_a_drop(tmp_path):
    pd.DataFrame({"id": ["a", "b"], "body": [3, 42], "label": [1, 2]}).to_parquet(tmp_path / "p.parquet")
    table = read_table(tmp_path / "p.parquet")
    assert table.rows == [{"id": "a", "body": "3", "label": "1"}, {"id": "b", "body": "42", "label": "2"}]
    roles = {"body": "text", "label": "label", "id": "id"}
    assert table.type_problems(roles) == []
    assert table.type_warnings(roles) == [
        f"{tmp_path / 'p.parquet'}: column 'body' is used as text but holds only numbers; check it is the column "
        "you mean"
    ]


def test_duplicate_json_key_makes_the_row_bad_only_when_used(tmp_path):
    path = tmp_path / "k.jsonl"
    path.write_text('{"text": "a", "label": "x", "label": "y"}\n{"text": "b", "label": "z", "n": 1, "n": 2}\n')
    table = read_table(path)
    assert table.rows[0]["label"] == "y"
    problems = table.type_problems({"text": "text", "label": "label"})
    assert problems == [(1, "duplicate_key", "key 'label' appears twice in this record; keep one")]


# ------------------------------------------------------------------ hostile files: a counted row or one line


READABLE = [
    ("bom.csv", "\ufeffa,b\n1,2\n".encode(), [{"a": "1", "b": "2"}]),
    ("bom.jsonl", '\ufeff{"a": "1"}\n'.encode(), [{"a": "1"}]),
    ("bom.json", '\ufeff[{"a": "1"}]'.encode(), [{"a": "1"}]),
    ("u16.csv", "a,b\n1,ü\n".encode("utf-16"), [{"a": "1", "b": "ü"}]),
    ("u32.jsonl", '{"a": "ü"}\n'.encode("utf-32"), [{"a": "ü"}]),
    ("endings.csv", b"a,b\r\n1,2\r3,4\n\n5,6", [{"a": "1", "b": "2"}, {"a": "3", "b": "4"}, {"a": "5", "b": "6"}]),
    ("endings.jsonl", b'{"a": "1"}\r\n\n  \n{"a": "2"}', [{"a": "1"}, {"a": "2"}]),
    ("cr.jsonl", b'{"a": "1\r2"}\n', [{"a": "1\r2"}]),  # a raw CR inside a string does not split the record
    ("long.csv", b"a\n" + b"x" * 300_000, [{"a": "x" * 300_000}]),  # past the csv module's default field limit
]


@pytest.mark.parametrize(("name", "content", "rows"), READABLE, ids=[case[0] for case in READABLE])
def test_hostile_but_readable_files(tmp_path, name, content, rows):
    (tmp_path / name).write_bytes(content)
    assert read_table(tmp_path / name).rows == rows


UNREADABLE = [
    ("u16.csv", "a,b\n1,2\n".encode("utf-16-le"), "every other byte is NUL: .* set data.encoding"),
    ("zeros.jsonl", bytes(64), "every other byte is NUL"),
    ("garbage.jsonl", bytes(range(256)) * 4, r"not readable as utf-8 \(line 2, byte 128\)"),
    ("garbage.parquet", bytes(range(256)), "not a readable Parquet file"),
    ("cut.csv.gz", gzip.compress(b"a,b\n1,2\n" * 100)[:20], "cannot decompress"),
    ("spaces.jsonl", b"  \n\n", "the file is empty"),
    ("blank.json", b"[]", "no data rows"),
    ("scalar.json", b"42", "must hold a list of objects"),
    ("two.json", b'{"a": [{"x": 1}], "b": []}', "must hold a list of objects"),
]


@pytest.mark.parametrize(("name", "content", "message"), UNREADABLE, ids=[case[0] for case in UNREADABLE])
def test_hostile_unreadable_files_are_one_line_errors(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=message) as err:
        read_table(tmp_path / name)
    assert name in str(err.value) and "\n" not in str(err.value)


def test_truncated_parquet_and_unknown_encoding(tmp_path, rows):
    pd.DataFrame(rows).to_parquet(tmp_path / "t.parquet")
    (tmp_path / "cut.parquet").write_bytes((tmp_path / "t.parquet").read_bytes()[:-30])
    with pytest.raises(DataError, match=r"cut\.parquet: not a readable Parquet file .*check the file is complete"):
        read_table(tmp_path / "cut.parquet")
    with pytest.raises(DataError, match="unknown data.encoding 'klingon'"):
        read_table(write_csv(tmp_path / "t.csv", rows), encoding="klingon")


def test_compressed_text_files_are_read(tmp_path, rows):
    (tmp_path / "t.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    assert read_table(tmp_path / "t.jsonl.gz").rows == rows


def test_messages_stay_one_line_whatever_the_column_names(tmp_path):
    path = tmp_path / "n.jsonl"
    path.write_text('{"a\\nb": true}\n')
    (problem,) = read_table(path).type_problems({"a\nb": "text"})
    assert problem.detail == "column 'a\\nb' holds a bool here, not text"


def test_utf16_text_that_starts_with_nul_is_not_taken_for_utf32(tmp_path):
    path = tmp_path / "z.csv"
    path.write_bytes("\x00a,b\n1,2\n".encode("utf-16"))  # FF FE 00 00 also opens UTF-32LE
    assert read_table(path).rows == [{"\x00a": "1", "b": "2"}]


def test_parquet_keeps_a_named_index_and_drops_pandas_unnamed_one(tmp_path, rows):
    frame = pd.DataFrame(rows)
    frame.set_index("ticket_id").to_parquet(tmp_path / "named.parquet")
    assert read_table(tmp_path / "named.parquet").rows == rows  # the id a user indexed by is data
    frame.set_index(pd.Index(range(10, 16))).to_parquet(tmp_path / "unnamed.parquet")
    assert read_table(tmp_path / "unnamed.parquet").columns == list(rows[0])
