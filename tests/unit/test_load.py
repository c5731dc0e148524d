"""Reading data files: every format gives the same rows; bad files give one-line errors naming the file."""

import json

import pandas as pd
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
