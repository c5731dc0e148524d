"""What makes a small-data classifier win: the length rule, the schedule, TF-IDF saved without pickle, and the
choice of what ships on the validation split (tiny models; the real figures are in docs/benchmarks.md)."""

import numpy as np
import pytest

from adapterlab.errors import RecipeError
from adapterlab.registry import recipe_from_dict
from adapterlab.runs import AdapterInfo, read_json, read_jsonl
from adapterlab.stages.prepare import prepare
from adapterlab.tasks.classify.format import auto_max_tokens, cut, encode_text, special_tokens
from adapterlab.tasks.classify.select import blend, select
from adapterlab.tasks.classify.tfidf import TfidfModel
from adapterlab.tasks.classify.train import auto_epochs

TEXTS = [
    "good phone battery lasts", "bad shoes size wrong", "great coffee taste", "terrible delivery late again",
    "phone screen is nice", "shoes sole broke fast", "кофе вкусный", "доставка плохая", "我很喜欢这个手机",
]  # fmt: skip


def test_cut_keeps_special_tokens_and_the_head_or_both_ends():
    ids = [101, *range(1, 21), 102]  # [CLS] 1..20 [SEP]
    assert cut(ids, 8, "head", (1, 1)) == [101, 1, 2, 3, 4, 5, 6, 102]
    assert cut(ids, 8, "head_tail", (1, 1)) == [101, 1, 2, 3, 18, 19, 20, 102]
    assert cut(ids, 9, "head_tail", (1, 1)) == [101, 1, 2, 3, 4, 18, 19, 20, 102]  # an odd room: head first
    assert cut(ids, 30, "head_tail", (1, 1)) == ids
    assert cut(list(range(10)), 4, "head_tail", (0, 0)) == [0, 1, 8, 9]


def test_encode_text_with_a_bert_style_tokenizer():
    from tokenizers.processors import TemplateProcessing

    from tiny import build_tokenizer

    tokenizer = build_tokenizer()
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single="<|im_start|> $A <|im_end|>", special_tokens=[("<|im_start|>", bos), ("<|im_end|>", eos)]
    )
    assert special_tokens(tokenizer) == (1, 1)
    text = "Hello, thank you for your message. Please restart the VPN client and try again."
    full = tokenizer(text)["input_ids"]
    (head,) = encode_text(tokenizer, [text], 10, "head")
    (both,) = encode_text(tokenizer, [text], 10, "head_tail")
    assert head == [*full[:9], eos] and len(both) == 10
    assert both[0] == bos and both[-1] == eos and both[1:5] == full[1:5] and both[5:9] == full[-5:-1]


def test_auto_max_tokens_follows_the_training_lengths_within_the_limits():
    assert auto_max_tokens([40] * 95 + [900] * 5, 512) == 64  # 90% are short: at least 64
    assert auto_max_tokens(list(range(1, 101)), 512) == 96  # p90 = 90 -> 96
    assert auto_max_tokens([1000] * 10, 512) == 128  # long texts: capped at 128 ...
    assert auto_max_tokens([1000] * 10, 100) == 100  # ... and at the encoder's limit
    assert auto_max_tokens([], 512) == 128


def test_auto_epochs_adapt_to_the_data_size():
    assert [auto_epochs(n) for n in (50, 120, 200, 300, 489, 1000, 5000)] == [10, 10, 6, 4, 3, 3, 3]


@pytest.mark.parametrize("labels", [[0, 1, 2, 1, 0, 1, 2, 1, 0], [0, 1, 0, 1, 0, 1, 0, 1, 0]])
def test_tfidf_model_round_trips_without_pickle(tmp_path, labels):
    from adapterlab.metrics.classification import tfidf_baseline

    texts, labels = TEXTS * 2, labels * 2
    model = TfidfModel.fit(texts, labels, 4)  # label 3 has no training example: probability 0
    model.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tfidf.json", "tfidf.safetensors"]
    loaded = TfidfModel.load(tmp_path)
    new = ["phone battery", "unseen words entirely", ""]
    expected = tfidf_baseline(texts, labels).predict_proba(new)
    got = loaded.predict_proba(new)
    assert got.shape == (3, 4) and np.allclose(got[:, : expected.shape[1]], expected, atol=1e-6)
    assert np.allclose(got[:, 3], 0) and loaded.predict_proba([]).shape == (0, 4)


def test_select_ships_the_best_on_validation_and_records_every_candidate():
    texts, labels = TEXTS * 2, [0, 1, 0, 1, 0, 1, 0, 1, 0] * 2
    val_texts, val_labels = ["phone battery good", "shoes broke", "coffee great", "late delivery"], [0, 1, 0, 1]
    wrong = np.array([[0.4, 0.6], [0.6, 0.4], [0.4, 0.6], [0.6, 0.4]])  # an encoder that is always wrong
    chosen = select(
        ["finetuned", "ensemble", "tfidf"], "weighted_f1", wrong, val_labels, texts, labels, val_texts, 2, 0
    )
    assert set(chosen.scores) == {"finetuned", "ensemble w=0.25", "ensemble w=0.5", "ensemble w=0.75", "tfidf"}
    assert chosen.scores["finetuned"] == 0.0 and chosen.chosen in ("ensemble", "tfidf")
    assert chosen.encoder_weight < 1 and chosen.tfidf is not None and "highest validation" in chosen.reason
    right = np.eye(2)[val_labels]  # a perfect encoder: it ships (first among equals)
    best = select(["finetuned", "ensemble", "tfidf"], "weighted_f1", right, val_labels, texts, labels, val_texts, 2, 0)
    assert best.chosen == "finetuned" and best.encoder_weight == 1.0 and best.tfidf is None
    only = select(["finetuned"], "macro_f1", wrong, val_labels, texts, labels, val_texts, 2, 0)
    assert only.chosen == "finetuned" and list(only.scores) == ["finetuned"]
    assert select(["tfidf"], "weighted_f1", None, [], [], [], [], 2, 0).chosen == "finetuned"  # no validation


def test_blend():
    a, b = np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])
    assert np.allclose(blend(a, b, 0.25), [[0.25, 0.75]])
    assert blend(a, None, 0.5) is a and blend(None, b, 0.0) is b


def test_recipe_keys_validate():
    base = {"name": "x", "task": "classify", "data": {"path": "x.csv", "text_columns": ["t"], "label_column": "y"}}
    recipe = recipe_from_dict(base)
    assert recipe.data.max_tokens == "auto" and recipe.train.epochs == "auto"
    assert recipe.select.candidates == ["finetuned", "ensemble", "tfidf"] and recipe.data.truncation == "head_tail"
    with pytest.raises(RecipeError, match="candidates"):
        recipe_from_dict({**base, "select": {"candidates": ["finetuned", "finetuned"]}})
    with pytest.raises(RecipeError):
        recipe_from_dict({**base, "select": {"candidates": ["svm"]}})


def test_prepare_settles_max_tokens_auto_and_counts_truncation(classify_dict):
    classify_dict["data"]["max_tokens"] = "auto"
    prepared = prepare(recipe_from_dict(classify_dict))
    report = prepared.report
    limit = report["max_tokens"]
    assert isinstance(limit, int) and 64 <= limit <= 128 and report["truncation"] == "head_tail"
    rows = [r for s in ("train", "val", "test") for r in read_jsonl(prepared.run.data / f"{s}.jsonl")]
    assert all(r["tokens"] <= limit for r in rows)
    assert report["truncated"] == sum(r["truncated"] for r in rows)


def test_a_run_records_the_selection_and_predict_uses_what_ships(tmp_path, classify_dict):
    from adapterlab.stages.evaluate import evaluate
    from adapterlab.stages.train import train
    from adapterlab.tasks.classify.infer import Classifier

    classify_dict["train"]["epochs"] = 1
    classify_dict["select"] = {"candidates": ["tfidf", "finetuned"]}  # tfidf first: it wins ties
    result = train(recipe_from_dict(classify_dict))
    selection = result.summary["selection"]
    assert set(selection["candidates"]) == {"tfidf", "finetuned"} and selection["chosen"] in ("tfidf", "finetuned")
    info = AdapterInfo.read(result.run.root).task_info
    assert info["shipped"] == selection["chosen"] and isinstance(info["max_tokens"], int)
    classifier = Classifier.load(result.run.root)
    texts = [r["text"] for r in read_jsonl(result.run.data / "test.jsonl")]
    if selection["chosen"] == "tfidf":
        assert info["tfidf"] and (result.run.adapter / "tfidf.safetensors").is_file()
        assert np.allclose(classifier.predict_proba(texts), classifier.tfidf.predict_proba(texts))
    else:
        assert not info["tfidf"] and classifier.tfidf is None
    report = evaluate(result.run.root).report
    assert report["shipped"] == selection["chosen"] and report["selection"]["chosen"] == selection["chosen"]
    assert (report["finetuned_alone"] is None) == (selection["chosen"] == "finetuned")
    assert read_json(result.run.summary)["selection"] == selection
