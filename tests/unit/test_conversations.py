"""Conversation files for the chat task: both shapes, masks per reply, every bad conversation counted, whole-turn
truncation, and evaluation, golden prompts and predict on multi-turn prompts."""

import csv
import json

import pytest

from adapterlab.errors import DataError, RecipeError
from adapterlab.registry import recipe_from_dict, task_of
from adapterlab.runs import AdapterInfo, read_jsonl
from adapterlab.stages.prepare import prepare

from tiny import learned_spans

SYSTEM = "You are the IT support team."


def exchange(i: int, t: int) -> list[dict[str, str]]:
    return [
        {"role": "user", "content": f"Ticket {i}, question {t}: the VPN drops since this morning in room {100 + i}."},
        {"role": "assistant", "content": f"Hello, thank you for {i}.{t}. Please restart the VPN client and try again."},
    ]


def conversation(i: int, turns: int = 2) -> list[dict[str, str]]:
    return [m for t in range(turns) for m in exchange(i, t)]


def sharegpt(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    names = {"system": "system", "user": "human", "assistant": "gpt"}
    return [{"from": names[m["role"]], "value": m["content"]} for m in messages]


def write_jsonl(path, records) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in records))
    return str(path)


def conversation_recipe(recipe: dict, path: str, **data) -> dict:
    """The shared chat recipe turned into a conversation recipe on ``path``."""
    recipe = json.loads(json.dumps(recipe))
    for key in ("prompt_template", "target_column"):
        del recipe["data"][key]
    recipe["data"].update(
        {"path": path, "id_column": "id", "conversation_column": "messages", "max_tokens": 1024, **data}
    )
    recipe["split"] = {"train": 0.75, "val": 0.125, "test": 0.125}
    return recipe


def rows_of(run) -> dict[str, dict]:
    """Readable prepared records of every split, by id."""
    return {r["id"]: r for name in ("train", "val", "test") for r in read_jsonl(run.split_file(name))}


# ------------------------------------------------------------------------------------------------ recipe


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"conversation_column": "messages"}, "data.conversation_column and data.prompt_template are two ways"),
        ({"prompt_template": None, "target_column": None}, "needs data.prompt_template and data.target_column .*"
         "or data.conversation_column"),
        ({"train_on": "last"}, "data.train_on applies to conversations only; set data.conversation_column"),
        ({"prompt_template": None, "target_column": None, "conversation_column": "messages", "train_on": "first"},
         r"data.train_on: Input should be 'last' or 'all'"),
        ({"prompt_template": None, "target_column": None, "conversation_column": "messages",
          "conversation_format": "openai"}, r"data.conversation_format: Input should be 'auto', 'messages' or"),
    ],
)  # fmt: skip
def test_a_recipe_gives_examples_one_way(recipe_dict, change, message):
    recipe_dict["data"].update(change)
    recipe_dict["data"] = {k: v for k, v in recipe_dict["data"].items() if v is not None}
    with pytest.raises(RecipeError, match=message) as err:
        recipe_from_dict(recipe_dict)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------------------------ prepare


def test_masks_cover_the_last_or_every_reply_token_by_token(recipe_dict, tmp_path, tiny_tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, *conversation(1, 3)]
    full = list(tiny_tokenizer.apply_chat_template(messages, return_dict=False))
    replies = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    for train_on, learned in (("last", replies[-1:]), ("all", replies)):
        recipe = recipe_from_dict(conversation_recipe(recipe_dict, "x.jsonl", train_on=train_on))
        example = task_of(recipe).formatter(recipe, tiny_tokenizer).format({"messages": json.dumps(messages)})
        expected = [0] * len(full)
        for i in learned:  # each reply follows exactly the prompt inference renders for the turns before it
            before = tiny_tokenizer.apply_chat_template(messages[:i], add_generation_prompt=True, return_dict=False)
            through = tiny_tokenizer.apply_chat_template(messages[: i + 1], return_dict=False)
            expected[len(before) : len(through)] = [1] * (len(through) - len(before))
        assert example.input_ids == full
        assert example.completion_mask == expected
        spans = learned_spans(tiny_tokenizer, example.input_ids, example.completion_mask)
        assert spans == [messages[i]["content"] + "<|im_end|>\n" for i in learned]
        assert example.prompt == messages[:-1] and example.completion == messages[-1:]


def test_the_test_split_scores_the_final_reply_while_training_learns_every_reply(recipe_dict, tmp_path, tiny_tokenizer):
    from datasets import load_from_disk

    path = write_jsonl(tmp_path / "c.jsonl", [{"id": f"C{i}", "messages": conversation(i, 3)} for i in range(16)])
    prepared = prepare(recipe_from_dict(conversation_recipe(recipe_dict, path)), tokenizer=tiny_tokenizer)
    data = load_from_disk(str(prepared.run.tokenized))
    for name, replies in (("train", 3), ("test", 1)):
        readable = read_jsonl(prepared.run.split_file(name))[0]
        row = data[name][0]
        spans = learned_spans(tiny_tokenizer, row["input_ids"], row["completion_mask"])
        assert len(spans) == replies and spans[-1] == readable["completion"] + "<|im_end|>\n"
        assert readable["completion_tokens"] == sum(row["completion_mask"])
        assert [m["role"] for m in readable["messages"]] == ["system", "user", "assistant", "user", "assistant", "user"]


def test_every_bad_conversation_is_counted_with_its_reason(recipe_dict, tmp_path, tiny_tokenizer, capsys):
    good = [{"id": f"ok{i}", "messages": conversation(i)} for i in range(8)]
    user, reply = exchange(50, 0)
    bad = [
        {"id": "b1", "messages": "not json at all"},
        {"id": "b2", "messages": {"role": "user", "content": "hi"}},
        {"id": "b3", "messages": []},
        {"id": "b4", "messages": ["hello", reply]},
        {"id": "b5", "messages": [{"role": "user"}, reply]},
        {"id": "b6", "messages": [{"role": "tool", "content": "42"}, user, reply]},
        {"id": "b7", "messages": [{"role": "system", "content": "a"}, {"role": "system", "content": "b"}, user, reply]},
        {"id": "b8", "messages": [user, {"role": "system", "content": "late"}, reply]},
        {"id": "b9", "messages": [user, {"role": "assistant", "content": "  "}]},
        {"id": "b10", "messages": [user]},
        {"id": "b11", "messages": [{"role": "system", "content": "s"}, reply]},
        {"id": "b12"},
        '{"id": "b13", "messages": [',
    ]
    repaired = [
        {"id": "r1", "messages": [*exchange(60, 0), {"role": "user", "content": "Thanks, bye."}]},
        {"id": "r2", "messages": [{"role": "user", "content": "VPN drops."}, {"role": "user", "content": "Room 7."},
                                  reply]},
    ]  # fmt: skip
    path = write_jsonl(tmp_path / "bad.jsonl", [*good, *bad, *repaired])
    prepared = prepare(recipe_from_dict(conversation_recipe(recipe_dict, path)), tokenizer=tiny_tokenizer)
    report = prepared.report
    assert report["dropped"] == {
        "bad_message": 2,
        "empty_field": 1,
        "empty_message": 1,
        "misplaced_system": 2,
        "missing_field": 1,
        "no_assistant_turn": 1,
        "no_user_turn": 1,
        "not_a_conversation": 2,
        "unknown_role": 1,
        "unparseable": 1,
    }
    assert report["kept"] == 10 and report["kept"] + report["dropped_total"] == report["input_rows"] == 23
    assert report["conversation_notes"] == {"same_role_merged": 1, "trailing_user_turns_cut": 1}
    details = {e["id"]: e["detail"] for e in report["dropped_examples"]}
    assert details["b5"] == "message 1 has no 'content' (data.conversation_format: messages)"
    assert details["b8"] == "the system message is message 2; it must come first"
    records = rows_of(prepared.run)
    assert records["r1"]["completion"] == exchange(60, 0)[1]["content"]  # the unanswered user turn is cut
    assert records["r2"]["messages"][-1]["content"] == "VPN drops.\n\nRoom 7."
    shown = " ".join(capsys.readouterr().out.split())
    assert "note: same_role_merged │ 1" in shown and "dropped: misplaced_system │ 2" in shown
    first_bad = write_jsonl(tmp_path / "first.jsonl", [*good, bad[3], bad[0]])
    error_mode = conversation_recipe(recipe_dict, first_bad, on_bad_rows="error")
    with pytest.raises(DataError, match=r"first\.jsonl row 9: message 1 is text, not an object \(set data.on_bad"):
        prepare(recipe_from_dict(error_mode), tokenizer=tiny_tokenizer)


def test_a_template_that_rewrites_earlier_turns_is_a_counted_template_mismatch(recipe_dict, tmp_path, tiny_tokenizer):
    path = write_jsonl(tmp_path / "c.jsonl", [{"id": "one", "messages": conversation(1, 1)},
                                               {"id": "two", "messages": conversation(2, 2)}])  # fmt: skip
    original = tiny_tokenizer.chat_template
    tiny_tokenizer.chat_template = (  # earlier replies shown as "[earlier]" once a later turn follows
        "{% for m in messages %}<|im_start|>{{ m.role }}\n"
        "{% if m.role == 'assistant' and not loop.last %}[earlier]{% else %}{{ m.content }}{% endif %}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    try:
        report = prepare(recipe_from_dict(conversation_recipe(recipe_dict, path)), tokenizer=tiny_tokenizer).report
    finally:
        tiny_tokenizer.chat_template = original
    assert report["dropped"] == {"template_mismatch": 1} and report["kept"] == 1
    assert report["dropped_examples"][0]["id"] == "two"


def test_a_long_conversation_loses_whole_turns_from_the_start(recipe_dict, tmp_path, tiny_tokenizer):
    from adapterlab.rendering import encode_chat

    long = conversation(1, 4)
    last_two = [{"role": "system", "content": SYSTEM}, *long[4:]]
    limit = len(encode_chat(tiny_tokenizer, last_two))  # room for the system message and the last two exchanges
    huge = [{"role": "user", "content": "help " * 400}, {"role": "assistant", "content": "Restart it."}]
    path = write_jsonl(
        tmp_path / "c.jsonl",
        [
            {"id": "long", "messages": long},
            {"id": "huge", "messages": huge},
            *({"id": f"s{i}", "messages": conversation(i, 1)} for i in range(6)),
        ],
    )
    prepared = prepare(recipe_from_dict(conversation_recipe(recipe_dict, path, max_tokens=limit)),
                       tokenizer=tiny_tokenizer)  # fmt: skip
    report = prepared.report
    assert report["truncated"] == 1 and report["dropped"] == {"over_token_limit": 1}
    assert report["conversation_notes"] == {"earlier_turns_dropped_to_fit": 1}
    assert "with only the last exchange" not in report["dropped_examples"][0]["detail"]  # a single exchange
    kept = rows_of(prepared.run)["long"]
    assert kept["truncated"] and kept["messages"] == last_two[:-1] and kept["completion"] == long[-1]["content"]
    assert kept["prompt_tokens"] + kept["completion_tokens"] == limit
    dropping = conversation_recipe(recipe_dict, path, max_tokens=limit, on_too_long="drop")
    assert prepare(recipe_from_dict(dropping), tokenizer=tiny_tokenizer).report["dropped"] == {"over_token_limit": 2}


def test_the_system_prompt_applies_only_where_a_conversation_has_none(recipe_dict, tmp_path, tiny_tokenizer):
    own = {"role": "system", "content": "You are the Lyon desk."}
    path = write_jsonl(tmp_path / "c.jsonl", [
        {"id": "own", "messages": [own, *conversation(1)]},
        {"id": "none", "messages": conversation(2)},
        {"id": "sharegpt-field", "messages": sharegpt(conversation(3)), "system": "You are the Madrid desk."},
        {"id": "sharegpt-none", "messages": sharegpt(conversation(4))},
    ])  # fmt: skip
    prepared = prepare(recipe_from_dict(conversation_recipe(recipe_dict, path)), tokenizer=tiny_tokenizer)
    systems = {i: r["messages"][0] for i, r in rows_of(prepared.run).items()}
    assert systems == {
        "own": own,
        "none": {"role": "system", "content": SYSTEM},
        "sharegpt-field": {"role": "system", "content": "You are the Madrid desk."},
        "sharegpt-none": {"role": "system", "content": SYSTEM},
    }


def test_sharegpt_conversations_load_and_train(recipe_dict, tmp_path):
    from adapterlab.stages.train import train

    records = [{"id": f"S{i}", "conversations": sharegpt(conversation(i, 2))} for i in range(16)]
    records[0]["conversations"][0]["from"] = "user"  # the aliases of other exporters
    records[0]["conversations"][1]["from"] = "bot"
    path = write_jsonl(tmp_path / "sharegpt.jsonl", records)
    recipe = conversation_recipe(recipe_dict, path, conversation_column="conversations", conversation_format="sharegpt")
    result = train(recipe_from_dict(recipe, ["train.max_steps=2", "train.save_every=50", "train.eval_every=50"]))
    assert result.summary["steps"] == 2 and (result.run.adapter / "adapter_model.safetensors").is_file()
    assert len(rows_of(result.run)) == 16
    prompt = AdapterInfo.read(result.run.root).task_info["prompt"]
    assert prompt["conversation_column"] == "conversations" and prompt["conversation_format"] == "sharegpt"


# ------------------------------------------------------------------------------------ a trained conversation run


@pytest.fixture(scope="module")
def conversation_run(tmp_path_factory, tiny_model_dir):
    """A tiny adapter trained on messages-shaped conversations of two and three exchanges."""
    from adapterlab.stages.train import train

    tmp = tmp_path_factory.mktemp("conversations")
    path = write_jsonl(tmp / "c.jsonl", [{"id": f"C{i:02d}", "messages": conversation(i, 2 + i % 2)}
                                         for i in range(20)])  # fmt: skip
    recipe = recipe_from_dict({
        "name": "conversations",
        "output_dir": str(tmp / "runs"),
        "model": {"base": str(tiny_model_dir)},
        "data": {"path": path, "id_column": "id", "conversation_column": "messages", "system_prompt": SYSTEM},
        "split": {"train": 0.6, "val": 0.1, "test": 0.3},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "train": {"max_steps": 4, "learning_rate": 0.02, "precision": "fp32", "save_every": 50, "golden_prompts": 2},
        "eval": {"max_new_tokens": 6, "bootstrap": 100, "precision": "fp32", "metrics": ["rouge", "length"]},
    })  # fmt: skip
    return train(recipe).run.root


def test_golden_prompts_are_multi_turn(conversation_run):
    golden = AdapterInfo.read(conversation_run).task_info["golden"]
    val = {r["id"]: r for r in read_jsonl(conversation_run / "data" / "val.jsonl")}
    assert len(golden) == 2 and all(g["messages"] == val[g["id"]]["messages"] for g in golden)
    assert all([m["role"] for m in g["messages"]][:4] == ["system", "user", "assistant", "user"] for g in golden)


def test_evaluation_prompts_each_model_with_the_conversation_so_far(conversation_run, monkeypatch):
    from adapterlab.generation import TransformersGenerator
    from adapterlab.stages.evaluate import evaluate

    seen = []
    original = TransformersGenerator.generate

    def spying(self, prompts, model="base", *args, **kwargs):
        seen.append((model, prompts))
        return original(self, prompts, model, *args, **kwargs)

    monkeypatch.setattr(TransformersGenerator, "generate", spying)
    report = evaluate(conversation_run).report
    test = read_jsonl(conversation_run / "data" / "test.jsonl")
    predictions = read_jsonl(conversation_run / "eval" / "predictions.jsonl")
    contexts = [r["messages"] for r in test]
    assert all(len(c) >= 4 and c[2]["role"] == "assistant" for c in contexts)  # earlier turns are in the prompt
    assert seen == [("base", contexts), ("adapter", contexts)]
    assert [p["messages"] for p in predictions] == contexts
    assert [p["reference"] for p in predictions] == [r["completion"] for r in test]
    example = report["examples"][0]
    context = next(r["messages"] for r in test if r["id"] == example["id"])
    assert example["input"].startswith(f"user: {context[1]['content']}\n\nassistant: {context[2]['content']}")


def test_predict_replies_to_each_conversation_of_a_file(conversation_run, tmp_path):
    from adapterlab.generation import Decoding, TransformersGenerator
    from adapterlab.models import load_with_adapter
    from adapterlab.predict import predict

    open_ended = [*conversation(1), {"role": "user", "content": "And the printer?"}]
    answered = conversation(2)
    path = write_jsonl(tmp_path / "new.jsonl", [
        {"id": "open", "messages": open_ended},
        {"id": "answered", "messages": answered},
        {"id": "bad", "messages": [{"role": "tool", "content": "x"}]},
        {"id": "sharegpt", "messages": sharegpt(open_ended), "system": "You are the Madrid desk."},
    ])  # fmt: skip
    out = predict(conversation_run, path, tmp_path / "replies.csv", max_new_tokens=6)
    with out.output.open() as handle:
        written = {r["id"]: r["reply"] for r in csv.DictReader(handle)}
    assert list(written) == ["open", "answered", "bad", "sharegpt"] and written["bad"] == ""
    assert out.report["predicted"] == 3 and out.report["skipped"] == {"unknown_role": 1}
    assert out.report["replies_set_aside"] == 1
    contexts = [
        [{"role": "system", "content": SYSTEM}, *open_ended],
        [{"role": "system", "content": SYSTEM}, *answered[:-1]],  # a new reply to its last user message
        [{"role": "system", "content": "You are the Madrid desk."}, *open_ended],
    ]
    model, tokenizer = load_with_adapter(AdapterInfo.read(conversation_run), adapter_name="adapter")
    expected = TransformersGenerator(model, tokenizer).generate(contexts, "adapter", Decoding(max_new_tokens=6))
    assert [written[i] for i in ("open", "answered", "sharegpt")] == [g.text for g in expected]
