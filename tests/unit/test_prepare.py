"""prepare: every row kept or dropped with a reason, completion-only masks, reproducible leak-free splits."""

import json

import pytest

from adapterlab.errors import DataError
from adapterlab.runs import read_jsonl
from adapterlab.stages.prepare import prepare

from samples import ticket_rows, write_csv


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


@pytest.fixture
def messy_rows():
    rows = ticket_rows(30)
    rows[3]["answer"] = "   "  # empty
    del rows[5]["subject"]  # missing
    rows[7] = dict(rows[2], ticket_id="T999")  # exact duplicate of row 3 under another id
    rows[9]["answer"] = "Please reboot the machine now. " * 200  # far over the token limit
    return rows


def test_every_row_is_accounted_for(tmp_path, make_recipe, tiny_tokenizer, messy_rows):
    path = jsonl(tmp_path / "messy.jsonl", messy_rows)
    (tmp_path / "messy.jsonl").write_text(path.read_text() + "{broken json\n")
    recipe = make_recipe([f"data.path={path}", "data.on_too_long=drop"])
    prepared = prepare(recipe, tokenizer=tiny_tokenizer)
    report = prepared.report
    assert report["input_rows"] == 31
    assert report["dropped"] == {
        "duplicate": 1,
        "empty_field": 1,
        "missing_field": 1,
        "over_token_limit": 1,
        "unparseable": 1,
    }
    assert report["kept"] == 26
    assert report["kept"] + report["dropped_total"] == report["input_rows"]
    assert sum(report["splits"].values()) == report["kept"]
    reasons = {e["row"]: e["reason"] for e in report["dropped_examples"]}
    assert reasons == {4: "empty_field", 6: "missing_field", 8: "duplicate", 10: "over_token_limit", 31: "unparseable"}
    on_disk = json.loads(prepared.run.data_report.read_text())
    assert on_disk["dropped"] == report["dropped"]
    assert on_disk["lengths"]["train"]["total_tokens"]["max"] <= 256


def test_error_mode_stops_at_first_bad_row(tmp_path, make_recipe, tiny_tokenizer, messy_rows):
    path = write_csv(tmp_path / "messy.csv", [dict(r, subject=r.get("subject", "")) for r in messy_rows])
    recipe = make_recipe([f"data.path={path}", "data.on_bad_rows=error"])
    with pytest.raises(DataError, match=r"messy\.csv row 4: column 'answer' is empty"):
        prepare(recipe, tokenizer=tiny_tokenizer)


def test_truncate_keeps_prompt_and_cuts_reply_tail(tmp_path, make_recipe, tiny_tokenizer, messy_rows):
    path = jsonl(tmp_path / "m.jsonl", [r for r in messy_rows if "subject" in r])
    prepared = prepare(make_recipe([f"data.path={path}", "data.on_too_long=truncate"]), tokenizer=tiny_tokenizer)
    assert prepared.report["truncated"] == 1
    assert "over_token_limit" not in prepared.report["dropped"]
    rows = [r for name in ("train", "val", "test") for r in read_jsonl(prepared.run.data / f"{name}.jsonl")]
    (long_row,) = [r for r in rows if r["truncated"]]
    assert long_row["id"] == "T009"
    assert long_row["prompt_tokens"] + long_row["completion_tokens"] == 256


def test_completion_mask_covers_reply_and_end_of_turn(make_recipe, tiny_tokenizer):
    from datasets import load_from_disk

    prepared = prepare(make_recipe(), tokenizer=tiny_tokenizer)
    example = load_from_disk(str(prepared.run.tokenized))["train"][0]
    readable = read_jsonl(prepared.run.data / "train.jsonl")[0]
    ids, mask = example["input_ids"], example["completion_mask"]
    completion = tiny_tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if m])
    prompt = tiny_tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if not m])
    assert completion == readable["completion"] + "<|im_end|>\n"
    assert prompt.endswith("<|im_start|>assistant\n")
    assert readable["messages"][1]["content"].startswith("Subject: ")
    assert prompt == tiny_tokenizer.apply_chat_template(
        readable["messages"], add_generation_prompt=True, tokenize=False
    )


def test_splits_are_reproducible_stratified_and_saved(make_recipe, tiny_tokenizer):
    first = prepare(make_recipe(), tokenizer=tiny_tokenizer)
    ids_a = json.loads((first.run.data / "splits.json").read_text())["ids"]
    ids_b = json.loads((prepare(make_recipe(), tokenizer=tiny_tokenizer).run.data / "splits.json").read_text())["ids"]
    assert ids_a == ids_b
    other = prepare(make_recipe(["split.seed=7", "name=other"]), tokenizer=tiny_tokenizer)
    assert json.loads((other.run.data / "splits.json").read_text())["ids"] != ids_a
    assert sorted(i for ids in ids_a.values() for i in ids) == sorted(f"T{i:03d}" for i in range(36))
    strata = first.report["strata"]
    for language in ("en", "de", "ru"):  # 12 rows each: 0.7/0.15/0.15 of every language
        assert (strata["train"][language], strata["val"][language], strata["test"][language]) in {(8, 2, 2), (9, 2, 1)}


def test_group_never_straddles_splits(tmp_path, make_recipe, tiny_tokenizer):
    rows = ticket_rows(36)
    for i, row in enumerate(rows):
        row["thread"] = f"thread-{i // 4}"  # 9 threads of 4 rows
    path = write_csv(tmp_path / "g.csv", rows)
    prepared = prepare(make_recipe([f"data.path={path}", "split.group_by=thread"]), tokenizer=tiny_tokenizer)
    where = {}
    for name in ("train", "val", "test"):
        for row in read_jsonl(prepared.run.data / f"{name}.jsonl"):
            where.setdefault(row["source"]["thread"], set()).add(name)
    assert all(len(splits) == 1 for splits in where.values())
    assert prepared.sizes["train"] >= 20


def test_existing_split_column_is_honoured(tmp_path, make_recipe, tiny_tokenizer):
    rows = ticket_rows(12)
    for i, row in enumerate(rows):
        row["part"] = ["train", "Validation", "TEST", "bogus"][i % 4]
    path = write_csv(tmp_path / "s.csv", rows)
    prepared = prepare(make_recipe([f"data.path={path}", "split.column=part"]), tokenizer=tiny_tokenizer)
    assert prepared.sizes == {"train": 3, "val": 3, "test": 3}
    assert prepared.report["dropped"] == {"unknown_split_value": 3}
    assert prepared.report["kept"] == 9
    assert "column 'part' holds 'bogus', not train/val/test" in prepared.report["dropped_examples"][0]["detail"]


def test_no_row_left_to_train_on_is_an_error_naming_why(tmp_path, make_recipe, tiny_tokenizer):
    """A split column that holds something else (a language): every row dropped, and prepare must not succeed."""
    rows = ticket_rows(8)
    for row in rows:
        row["lang"] = "en"
    path = write_csv(tmp_path / "lang.csv", rows)
    recipe = make_recipe([f"data.path={path}", "split.column=lang"])
    message = r"lang\.csv: no row is left to train on \(8 read; dropped: unknown_split_value 8 \(row \d+: column 'lang'"
    with pytest.raises(DataError, match=message) as raised:
        prepare(recipe, tokenizer=tiny_tokenizer)
    report = json.loads(recipe_report(recipe).read_text())  # where every row went, for the user to read
    assert report["dropped"] == {"unknown_split_value": 8} and str(recipe_report(recipe)) in str(raised.value)
    assert not (recipe_report(recipe).parent / "data" / "meta.json").exists()  # nothing a training would reuse


def recipe_report(recipe):
    from adapterlab.runs import RunDir

    return RunDir.for_recipe(recipe).data_report


def test_split_can_be_reproduced_from_saved_ids(make_recipe, tiny_tokenizer, tmp_path):
    first = prepare(make_recipe(), tokenizer=tiny_tokenizer)
    saved = first.run.splits_file
    copy = tmp_path / "saved-splits.json"  # data/ is rewritten as a whole by every prepare
    copy.write_text(saved.read_text())
    again = prepare(make_recipe([f"split.from_ids={copy}", "split.seed=123"]), tokenizer=tiny_tokenizer)
    assert json.loads(saved.read_text())["ids"] == json.loads(copy.read_text())["ids"]
    assert again.report["split_method"]["method"] == "ids_file"
    assert again.sizes == first.sizes


def test_duplicate_ids_are_an_error(tmp_path, make_recipe, tiny_tokenizer):
    rows = ticket_rows(6)
    rows[4]["ticket_id"] = rows[1]["ticket_id"]
    path = write_csv(tmp_path / "d.csv", rows)
    with pytest.raises(DataError, match=r"d\.csv row 5: id 'T001' .* already used by row 2"):
        prepare(make_recipe([f"data.path={path}"]), tokenizer=tiny_tokenizer)


def test_missing_column_before_any_work(tmp_path, make_recipe, tiny_tokenizer):
    with pytest.raises(DataError, match="column 'anwser' .* did you mean 'answer'"):
        prepare(make_recipe(["data.target_column=anwser"]), tokenizer=tiny_tokenizer)


def test_hostile_records_are_counted_rows_not_a_rejected_file(tmp_path, make_recipe, tiny_tokenizer):
    """One huge integer, one line nested 5,000 deep, a body of NULs: each a counted row, the rest prepared."""
    rows = ticket_rows(12)
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    lines[2] = lines[2][:-1] + ', "extra": ' + "9" * 5000 + "}"
    lines[4] = '{"ticket_id": "deep", "x": ' + "[" * 5000 + "]" * 5000 + "}"
    lines[6] = json.dumps(dict(rows[6], body="\x00\x00\x00"))
    path = tmp_path / "hostile.jsonl"
    path.write_text("\n".join(lines) + "\n")
    report = prepare(make_recipe([f"data.path={path}"]), tokenizer=tiny_tokenizer).report
    assert report["dropped"] == {"number_too_long": 1, "too_deep": 1, "empty_field": 1}
    assert report["kept"] == 9 and report["cells_cleaned_of_control_chars"] == 1
    with pytest.raises(DataError, match=r"hostile\.jsonl row 3: .*digits") as err:
        prepare(make_recipe([f"data.path={path}", "data.on_bad_rows=error"]), tokenizer=tiny_tokenizer)
    assert "\n" not in str(err.value)


def test_mixed_json_types_never_become_classes(tmp_path, classify_dict):
    from samples import review_rows

    rows = review_rows()
    rows[0]["category"], rows[1]["category"], rows[2]["category"] = True, 42, ["electronics"]
    rows[3]["text"] = ["a", "list"]
    classify_dict["data"]["path"] = str(jsonl(tmp_path / "reviews.jsonl", rows))
    from adapterlab.registry import recipe_from_dict

    report = prepare(recipe_from_dict(classify_dict)).report
    assert set(report["labels"]) == {"books", "clothing", "electronics", "no_product"}
    assert report["dropped"]["mixed_types"] == 3 and report["dropped"]["wrong_type"] == 1
    assert report["kept"] + report["dropped_total"] == report["input_rows"] == len(rows)


def test_a_split_left_empty_is_a_warning(tmp_path, make_recipe, tiny_tokenizer, capsys):
    rows = [dict(ticket_rows(1)[0], ticket_id=f"T{i}") for i in range(20)]  # twenty identical tickets
    report = prepare(make_recipe([f"data.path={write_csv(tmp_path / 'same.csv', rows)}"]), tokenizer=tiny_tokenizer)
    assert report.sizes == {"train": 1, "val": 0, "test": 0} and report.report["dropped"] == {"duplicate": 19}
    assert any("the val split is empty although split.val is 0.15" in w for w in report.report["warnings"])
    assert "the test split is empty" in " ".join(capsys.readouterr().out.split())


def test_a_split_asked_to_be_empty_trains_without_it(make_recipe):
    """split.val: 0 and split.test: 0 (train on everything): the prepared data reads back and training runs."""
    from adapterlab.data.tokenized import load_tokenized
    from adapterlab.stages.train import train

    recipe = make_recipe(["split.train=1.0", "split.val=0", "split.test=0", "split.stratify_by=null",
                          "train.max_steps=1"])  # fmt: skip
    result = train(recipe)
    data = load_tokenized(result.run.tokenized)
    assert data["val"] is None and data["test"] is None and len(data["train"]) > 0
    assert result.summary["val_loss"] is None
