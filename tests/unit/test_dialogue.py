"""The ``dialogue`` task: a script (speaker, line, scene) -> examples of one character's lines in their scene's
context; every line counted, scenes never split, the masks what the chat template renders."""

from __future__ import annotations

import csv
import json

import pytest

from adapterlab.errors import RecipeError
from adapterlab.registry import recipe_from_dict
from adapterlab.runs import read_jsonl
from adapterlab.stages.prepare import prepare

from tiny import learned_spans

SCRIPT = [
    # episode, scene, speaker, line
    (1, 1, "MARGO", "(yawns) Morning."),  # first in its scene: nothing to answer
    (1, 1, "DEV", "Team! Big news!"),
    (1, 1, "ROSA", "Sit down, querida."),  # two others in a row: one user turn
    (1, 1, "Margo ", "Noted. [She sits] I have notes."),  # a name variant, a stage direction
    (1, 1, "DEV", "(beat)"),  # only a stage direction
    (1, 1, "THEO", "Technically it is Tuesday."),
    (1, 1, "MAGS", "Which is fine."),  # an alias
    (1, 2, "ROSA", "Soup?"),  # a new scene: the window starts again
    (1, 2, "MARGO", "Bold of you to assume I eat."),
    (1, 2, "RADIO", "Rain all week."),  # not in the cast
    (2, 1, "PRIYA", "Drop and give me twenty."),  # episode 2 scene 1 is not episode 1 scene 1
    (2, 1, "MARGO", "Twenty what?"),
]


def write_script(path, rows=SCRIPT):
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["episode", "scene", "speaker", "line"])
        writer.writerows(rows)
    return path


def dialogue_recipe(tmp_path, tiny_model_dir, script, **data) -> dict:
    return {
        "name": "persona",
        "task": "dialogue",
        "output_dir": str(tmp_path / "runs"),
        "model": {"base": str(tiny_model_dir)},
        "data": {
            "path": str(script),
            "character": "MARGO",
            "episode_column": "episode",
            "aliases": {"mags": "Margo"},
            "system_prompt": "You are Margo.",
            "max_tokens": 256,
            **data,
        },
        "split": {"train": 0.6, "val": 0.2, "test": 0.2},
        "train": {
            "max_steps": 2,
            "batch_size": 2,
            "eval_every": 2,
            "save_every": 2,
            "precision": "fp32",
            "golden_prompts": 1,
        },
    }


def all_rows(run) -> list[dict]:
    return [row for name in ("train", "val", "test") for row in read_jsonl(run.split_file(name))]


def test_lines_become_replies_in_their_scene_and_every_line_is_counted(tmp_path, tiny_model_dir, tiny_tokenizer):
    script = write_script(tmp_path / "script.csv")
    recipe = recipe_from_dict(dialogue_recipe(tmp_path, tiny_model_dir, script, cast=["MARGO", "DEV", "ROSA",
                                                                                       "THEO", "PRIYA"]))  # fmt: skip
    report = prepare(recipe, tokenizer=tiny_tokenizer).report
    assert report["input_rows"] == len(SCRIPT) == report["kept"] + report["context"] + report["dropped_total"]
    assert report["kept"] == 4 and report["context"] == 5  # Margo's answered lines; the others' lines
    assert report["dropped"] == {"no_context": 1, "empty_after_stripping": 1, "unknown_speaker": 1}
    assert report["speakers"]["MARGO"] == 5  # "Margo " and "MAGS" are Margo

    by_reply = {row["completion"]: row["messages"] for row in all_rows(_run(recipe))}
    assert set(by_reply) == {"Noted. I have notes.", "Which is fine.", "Bold of you to assume I eat.", "Twenty what?"}
    noted = by_reply["Noted. I have notes."]
    # The persona, then Dev and Rosa merged into one user turn with their names; Margo's unanswered first line
    # is not a turn (nothing came before it).
    assert noted == [
        {"role": "system", "content": "You are Margo."},
        {"role": "user", "content": "DEV: Team! Big news!\nROSA: Sit down, querida."},
    ]
    fine = by_reply["Which is fine."]
    assert [m["role"] for m in fine] == ["system", "user", "assistant", "user"]
    assert fine[2]["content"] == "Noted. I have notes." and fine[3]["content"] == "THEO: Technically it is Tuesday."
    assert by_reply["Bold of you to assume I eat."][1:] == [{"role": "user", "content": "ROSA: Soup?"}]
    assert by_reply["Twenty what?"][1:] == [{"role": "user", "content": "PRIYA: Drop and give me twenty."}]


def _run(recipe):
    from adapterlab.runs import RunDir

    return RunDir.for_recipe(recipe)


def test_context_turns_and_speaker_names_shape_the_prompt(tmp_path, tiny_model_dir, tiny_tokenizer):
    script = write_script(tmp_path / "script.csv")
    recipe = recipe_from_dict(dialogue_recipe(tmp_path, tiny_model_dir, script, context_turns=1, speaker_names=False))
    prepare(recipe, tokenizer=tiny_tokenizer)
    by_reply = {row["completion"]: row["messages"] for row in all_rows(_run(recipe))}
    assert by_reply["Noted. I have notes."][1:] == [{"role": "user", "content": "Sit down, querida."}]
    assert by_reply["Which is fine."][1:] == [{"role": "user", "content": "Technically it is Tuesday."}]


def test_the_loss_covers_the_last_reply_or_every_reply_of_the_character(tmp_path, tiny_model_dir, tiny_tokenizer):
    from adapterlab.data.tokenized import load_tokenized

    script = write_script(tmp_path / "script.csv")
    for train_on, expected in (("last", ["Which is fine."]), ("all", ["Noted. I have notes.", "Which is fine."])):
        recipe = recipe_from_dict(dialogue_recipe(tmp_path / train_on, tiny_model_dir, script, train_on=train_on),
                                  ["split.train=1.0", "split.val=0", "split.test=0"])  # fmt: skip
        prepare(recipe, tokenizer=tiny_tokenizer)
        run = _run(recipe)
        rows = read_jsonl(run.split_file("train"))
        index = next(i for i, r in enumerate(rows) if r["completion"] == "Which is fine.")
        example = load_tokenized(run.tokenized)["train"][index]
        ids, mask = example["input_ids"], example["completion_mask"]
        spans = [span.replace("<|im_end|>", "").strip() for span in learned_spans(tiny_tokenizer, ids, mask)]
        assert spans == expected, train_on
        # Token by token: the full example is what the chat template renders for the conversation.
        messages = [*rows[index]["messages"], {"role": "assistant", "content": rows[index]["completion"]}]
        assert ids == list(tiny_tokenizer.apply_chat_template(messages, return_dict=False))


def test_no_scene_is_in_two_splits(tmp_path, tiny_model_dir, tiny_tokenizer):
    lines = []
    for scene in range(1, 21):
        for turn in range(6):
            speaker = "MARGO" if turn % 2 else ("DEV", "ROSA", "THEO")[scene % 3]
            lines.append((1 + scene // 10, scene % 10, speaker, f"Line {turn} of scene {scene}, said by {speaker}."))
    script = write_script(tmp_path / "script.csv", lines)
    recipe = recipe_from_dict(dialogue_recipe(tmp_path, tiny_model_dir, script))
    report = prepare(recipe, tokenizer=tiny_tokenizer).report
    assert report["kept"] == 60 and all(report["splits"][s] > 0 for s in ("train", "val", "test"))
    scenes = {}
    for name in ("train", "val", "test"):
        for row in read_jsonl(_run(recipe).split_file(name)):
            key = (row["source"]["episode"], row["source"]["scene"])
            assert scenes.setdefault(key, name) == name, key
    assert len(scenes) == 20


def test_an_order_column_puts_lines_in_order_within_their_scene(tmp_path, tiny_model_dir, tiny_tokenizer):
    path = tmp_path / "shuffled.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["scene", "n", "speaker", "line"])
        writer.writerows([("A", 2, "MARGO", "Noted."), ("B", 1, "ROSA", "Soup?"), ("A", 1, "DEV", "Team!"),
                          ("B", 2, "MARGO", "No.")])  # fmt: skip
    recipe = recipe_from_dict(dialogue_recipe(tmp_path, tiny_model_dir, path, episode_column=None, order_column="n"),
                              ["split.train=1.0", "split.val=0", "split.test=0"])  # fmt: skip
    report = prepare(recipe, tokenizer=tiny_tokenizer).report
    assert report["kept"] == 2 and report["dropped_total"] == 0
    by_reply = {r["completion"]: r["messages"][-1]["content"] for r in read_jsonl(_run(recipe).split_file("train"))}
    assert by_reply == {"Noted.": "DEV: Team!", "No.": "ROSA: Soup?"}


def test_a_name_that_looks_like_the_character_but_is_not_mapped_is_a_warning(tmp_path, tiny_model_dir, tiny_tokenizer):
    rows = [*SCRIPT, (3, 1, "DEV", "Hi."), (3, 1, "MARGO PIKE", "Hello."), (3, 1, "Dev, Margo", "Surprise!"),
            (3, 1, "ROSA AND MARGO", "No."), (3, 1, "ROSA AND MARGO", "Never.")]  # fmt: skip
    recipe = recipe_from_dict(dialogue_recipe(tmp_path, tiny_model_dir, write_script(tmp_path / "s.csv", rows)))
    report = prepare(recipe, tokenizer=tiny_tokenizer).report
    assert any("'MARGO PIKE'" in w and "data.aliases" in w for w in report["warnings"])
    # lines said together are one warning that says what they are, not one "is it them?" per group
    together = [w for w in report["warnings"] if "said together" in w]
    assert len(together) == 1 and together[0].startswith("2 speaker(s)") and "3 lines" in together[0]
    assert not any("'ROSA AND MARGO'" in w and "looks like" in w for w in report["warnings"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"character": " "}, "name the character"),
        ({"stage_directions": ["(unclosed"]}, "not a regular expression"),
        ({"prompt_template": "{line}"}, "prompt_template"),  # a chat key is unknown in a dialogue recipe
    ],
)
def test_recipe_errors_are_one_line(tmp_path, tiny_model_dir, change, message):
    recipe = dialogue_recipe(tmp_path, tiny_model_dir, tmp_path / "s.csv")
    recipe["data"] |= change
    with pytest.raises(RecipeError, match=message):
        recipe_from_dict(recipe)


def test_a_scene_split_cannot_be_stratified(tmp_path, tiny_model_dir):
    recipe = dialogue_recipe(tmp_path, tiny_model_dir, tmp_path / "s.csv")
    recipe["split"]["stratify_by"] = "speaker"
    with pytest.raises(RecipeError, match="keeps scenes whole"):
        recipe_from_dict(recipe)


def test_a_dialogue_adapter_trains_and_carries_its_persona(tmp_path, tiny_model_dir):
    from adapterlab.runs import AdapterInfo
    from adapterlab.stages.train import train

    lines = [(1, s, ("DEV" if t % 2 == 0 else "MARGO"), f"Scene {s} line {t}.") for s in range(1, 9) for t in range(4)]
    script = write_script(tmp_path / "script.csv", lines)
    result = train(recipe_from_dict(dialogue_recipe(tmp_path, tiny_model_dir, script)))
    info = AdapterInfo.read(result.run.root)
    assert info.task == "dialogue"
    assert info.task_info["prompt"]["system_prompt"] == "You are Margo."
    assert info.task_info["prompt"]["character"] == "MARGO"
    golden = info.task_info["golden"][0]["messages"]
    assert golden[0]["role"] == "system" and golden[-1]["content"].startswith("DEV: ")
    assert json.loads((result.run.root / "summary.json").read_text())["val_loss"] is not None

    from typer.testing import CliRunner

    from adapterlab.cli import app

    # predict: a reply in every Margo row of a draft scene, one with her line left empty (a slot to fill)
    draft = write_script(tmp_path / "draft.csv", [(3, 1, "DEV", "Where is everyone?"), (3, 1, "MARGO", ""),
                                                  (3, 1, "DEV", "Margo?"), (3, 1, "MARGO", "Here."),
                                                  (3, 2, "MARGO", "First again.")])  # fmt: skip
    out = tmp_path / "out.csv"
    said = CliRunner().invoke(app, ["predict", str(result.run.root), str(draft), "-o", str(out)])
    assert said.exit_code == 0, said.output
    with out.open(newline="", encoding="utf-8") as handle:
        assert [row["id"] for row in csv.DictReader(handle)] == ["1", "2", "3", "4", "5"]  # every input row
    report = json.loads(out.with_suffix(".report.json").read_text())
    assert report["predicted"] == 2 and report["skipped"] == {"context": 2, "no_context": 1}
    assert report["character"] == "MARGO" and "2 rows are other speakers' lines" in report["notes"][0]

    # An adapter saved before adapterlab kept how it reads a script is told to train again, in one line.
    meta = json.loads((result.run.root / "adapter" / "adapterlab.json").read_text())
    assert meta["task_info"]["decoding"] == {"repetition_penalty": 1.0, "stop": []}  # what predict decodes with
    del meta["task_info"]["prompt"]["cast"]
    (result.run.root / "adapter" / "adapterlab.json").write_text(json.dumps(meta))
    said = CliRunner().invoke(app, ["predict", str(result.run.root), str(draft), "-o", str(out)])
    assert said.exit_code == 2 and "(cast missing from adapterlab.json); train it again" in said.output


def test_predict_prompts_a_script_exactly_as_prepare_made_the_examples(tmp_path, tiny_model_dir, tiny_tokenizer):
    from adapterlab.tasks.dialogue.infer import ScriptPrompter, script_data

    script = write_script(tmp_path / "script.csv")
    recipe = recipe_from_dict(dialogue_recipe(tmp_path, tiny_model_dir, script, cast=["MARGO", "DEV", "ROSA",
                                                                                       "THEO", "PRIYA"]))  # fmt: skip
    prepare(recipe, tokenizer=tiny_tokenizer)
    trained = {row["completion"]: row["messages"] for row in all_rows(_run(recipe))}
    prompter = ScriptPrompter(script_data(recipe.data.prompt_info()))  # what the adapter's adapterlab.json holds
    header = ["episode", "scene", "speaker", "line"]
    outputs = [prompter.prompt(dict(zip(header, map(str, row), strict=True))) for row in SCRIPT]
    reasons = [o.reason for o in outputs if not isinstance(o, list)]
    assert sorted(reasons) == sorted(["no_context", *["context"] * 5, "empty_after_stripping", "unknown_speaker"])
    prompts = [o for o in outputs if isinstance(o, list)]
    assert prompts == [trained[reply] for reply in ("Noted. I have notes.", "Which is fine.",
                                                    "Bold of you to assume I eat.", "Twenty what?")]  # fmt: skip


def test_style_metrics_score_repetition_distinct_and_centroids():
    import numpy as np

    from adapterlab.metrics import style

    assert style.repetition(["noted noted noted noted", "a fresh line here"]).value == pytest.approx((2 / 3 + 0) / 2)
    distinct = style.distinct(["a b", "a c"], 1)
    assert distinct.value == pytest.approx(3 / 4)  # a, b, c unique among four words
    assert style.distinct(["x x", "x x"], 1).value == pytest.approx(1 / 4)
    centroids = {"m": np.array([1.0, 0.0]), "d": np.array([0.0, 1.0])}
    margin = style.centroid_margin(np.array([[1.0, 0.0], [0.0, 1.0]]), centroids, "m")
    assert list(margin.per_example) == [1.0, -1.0]
    word, share = style.commonest_opening(["Oh! Fine.", "oh no", "Well, oh.", "", "Oh, right"])
    assert word == "oh" and share.value == pytest.approx(3 / 5) and list(share.per_example) == [1, 1, 0, 0, 1]
    assert style.commonest_opening([""])[1].value == 0.0


def test_evaluation_reports_style_for_base_adapter_and_real_lines(tmp_path, tiny_model_dir, tiny_encoder_dir):
    from adapterlab.stages.evaluate import evaluate
    from adapterlab.stages.train import train

    speakers = ("DEV", "ROSA", "THEO")
    lines = []
    for scene in range(1, 31):
        for turn in range(6):
            speaker = "MARGO" if turn % 2 else speakers[(scene + turn) % 3]
            text = "Noted. Which is fine." if speaker == "MARGO" else f"Team, scene {scene} needs you now!"
            lines.append((1, scene, speaker, f"{text} ({turn})"))
    script = write_script(tmp_path / "script.csv", lines)
    recipe = dialogue_recipe(tmp_path, tiny_model_dir, script, cast=["MARGO", *speakers])
    recipe["eval"] = {"metrics": ["perplexity", "rouge", "length"], "max_new_tokens": 8, "bootstrap": 100,
                      "style_encoder": str(tiny_encoder_dir), "judge_epochs": 1}  # fmt: skip
    root = train(recipe_from_dict(recipe)).run.root
    report = evaluate(root).report
    style_report = report["style"]
    names = ("judge", "centroid_margin", "relevance", "distinct_1", "distinct_2", "repetition", "opening", "length")
    for name in names:
        entry = style_report["metrics"][name]
        assert {"real", "base", "adapter", "delta", "ci95", "gap_to_real"} <= set(entry), name
    assert style_report["judge"]["held_out_lines"] > 0 and 0 <= style_report["judge"]["accuracy"] <= 1
    assert set(style_report["centroids"]) == {"MARGO", "DEV", "ROSA", "THEO"} - {
        s for s in speakers if sum(1 for line in lines if line[2] == s) < 20
    }
    assert (root / "judge" / "adapter" / "adapterlab.json").is_file() and (root / "eval" / "style.png").is_file()
    predictions = [json.loads(x) for x in (root / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert set(predictions[0]["style"]["judge"]) == {"real", "base", "adapter"}
    assert "Style fidelity" in (root / "eval" / "report.md").read_text()
    assert style_report["openings"]["real"] == "noted"  # every real Margo line of this script opens with it
    assert style_report["metrics"]["opening"]["real"] == 1.0
    assert "Commonest first word of the replies: real 'noted' (100%)" in (root / "eval" / "report.md").read_text()
    # The judge is trained once per run: a second evaluation reuses it.
    stamp = (root / "judge" / "adapter" / "adapterlab.json").stat().st_mtime_ns
    evaluate(root)
    assert (root / "judge" / "adapter" / "adapterlab.json").stat().st_mtime_ns == stamp


def conversations_file(path, count: int = 24):
    with path.open("w", encoding="utf-8") as handle:
        for i in range(count):
            messages = [
                {"role": "user", "content": f"Margo, can you help with form {i}?"},
                {"role": "assistant", "content": "Noted. Which is fine."},
                {"role": "user", "content": f"Is form {i} done yet?"},
                {"role": "assistant", "content": f"In my defence, form {i} started it."},
            ]
            handle.write(json.dumps({"id": f"c{i}", "messages": messages}) + "\n")
        handle.write(json.dumps({"id": "bad", "messages": [{"role": "narrator", "content": "x"}]}) + "\n")
    return path


def test_conversation_files_give_the_character_lines_and_style_scores(tmp_path, tiny_model_dir, tiny_encoder_dir):
    from adapterlab.stages.evaluate import evaluate
    from adapterlab.stages.train import train

    recipe = dialogue_recipe(tmp_path, tiny_model_dir, conversations_file(tmp_path / "chats.jsonl"))
    del recipe["data"]["episode_column"], recipe["data"]["aliases"]
    recipe["data"] |= {"conversation_column": "messages", "id_column": "id", "context_turns": 2}
    recipe["eval"] = {"metrics": ["perplexity", "length"], "max_new_tokens": 8, "bootstrap": 100,
                      "style_encoder": str(tiny_encoder_dir), "judge_epochs": 1}  # fmt: skip
    result = train(recipe_from_dict(recipe))
    report = json.loads((result.run.root / "data_report.json").read_text())
    assert report["kept"] == 24 and report["dropped"] == {"unknown_role": 1}
    rows = read_jsonl(result.run.split_file("train"))
    # context_turns=2: the last exchange before the reply, after the persona
    assert [m["role"] for m in rows[0]["messages"]] == ["system", "user"]
    assert rows[0]["completion"].startswith("In my defence")
    style_report = evaluate(result.run.root).report["style"]
    assert set(style_report["centroids"]) == {"MARGO", "others"}
    assert style_report["judge"]["held_out_lines"] == 4 * report["splits"]["test"]

    # predict continues each conversation after its last user turn, within the training window (context_turns=2)
    from adapterlab.predict import predict
    from adapterlab.runs import AdapterInfo
    from adapterlab.tasks.dialogue.infer import ConversationPredictor

    said = predict(result.run.root, tmp_path / "chats.jsonl", tmp_path / "out.csv", max_new_tokens=4).report
    assert said["predicted"] == 24 and said["skipped"] == {"unknown_role": 1} and said["replies_set_aside"] == 24
    predictor = ConversationPredictor(AdapterInfo.read(result.run.root), "fp32")
    cell = json.dumps([{"role": "user", "content": "One?"}, {"role": "assistant", "content": "Noted."},
                       {"role": "user", "content": "Two?"}])  # fmt: skip
    assert predictor.conversation({"messages": cell}) == [
        {"role": "system", "content": "You are Margo."},
        {"role": "user", "content": "Two?"},
    ]


def test_a_conversation_column_and_script_keys_are_two_sources(tmp_path, tiny_model_dir):
    recipe = dialogue_recipe(tmp_path, tiny_model_dir, tmp_path / "s.jsonl")
    recipe["data"]["conversation_column"] = "messages"  # beside episode_column and aliases
    with pytest.raises(RecipeError, match="two ways to give the character's lines"):
        recipe_from_dict(recipe)


def test_predict_decodes_with_the_evaluation_s_repetition_penalty_and_stop_strings():
    from adapterlab.generative.infer import predict_decoding
    from adapterlab.runs import AdapterInfo

    saved = AdapterInfo.model_construct(task_info={"decoding": {"repetition_penalty": 1.2, "stop": ["\nDEV:"]}})
    decoding = predict_decoding(saved, 96)
    assert (decoding.max_new_tokens, decoding.do_sample) == (96, False)
    assert decoding.repetition_penalty == 1.2 and decoding.stop_strings == ["\nDEV:"]
    older = predict_decoding(AdapterInfo.model_construct(task_info={}), 32)  # saved before decoding was kept
    assert older.repetition_penalty == 1.0 and older.stop_strings == []
