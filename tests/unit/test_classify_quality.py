"""What makes a small-data classifier win: the length rule, the schedule, TF-IDF saved without pickle, and the
choice of what ships on the validation split (tiny models; the real figures are in docs/benchmarks.md)."""

from pathlib import Path

import numpy as np
import pytest

from adapterlab.errors import RecipeError
from adapterlab.registry import recipe_from_dict
from adapterlab.runs import AdapterInfo, read_json, read_jsonl
from adapterlab.stages.prepare import prepare
from adapterlab.tasks.classify.embedding import Embedder, EmbeddingModel
from adapterlab.tasks.classify.format import auto_max_tokens, cut, encode_text, special_tokens
from adapterlab.tasks.classify.select import mix, needed_parts, options, select
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


def test_ensemble_options_are_equal_weight_averages_of_two_or_three_parts():
    names = [name for name, _ in options(["finetuned", "ensemble", "tfidf"])]
    assert names == ["finetuned", "ensemble finetuned+embedding+tfidf", "ensemble finetuned+embedding",
                     "ensemble finetuned+tfidf", "ensemble embedding+tfidf", "tfidf"]  # fmt: skip
    assert dict(options(["ensemble"]))["ensemble finetuned+embedding+tfidf"] == pytest.approx(
        {"finetuned": 1 / 3, "embedding": 1 / 3, "tfidf": 1 / 3}
    )
    assert needed_parts(["finetuned", "tfidf"]) == {"finetuned", "tfidf"}
    assert needed_parts(["finetuned", "ensemble"]) == {"finetuned", "embedding", "tfidf"}


def test_select_ships_the_best_on_validation_and_records_every_candidate():
    val_labels = [0, 1, 0, 1]
    right, wrong = np.eye(2)[val_labels], np.eye(2)[[1, 0, 1, 0]]
    half = np.array([[0.9, 0.1], [0.9, 0.1], [0.9, 0.1], [0.1, 0.9]])  # right on 3 of 4
    probs = {"finetuned": wrong, "embedding": half, "tfidf": right}
    models = {"embedding": "E", "tfidf": "T"}
    chosen = select(["finetuned", "ensemble", "embedding", "tfidf"], "weighted_f1", probs, val_labels, 2, models)
    assert set(chosen.scores) == {name for name, _ in options(["finetuned", "ensemble", "embedding", "tfidf"])}
    assert chosen.scores["finetuned"] == 0.0 and chosen.scores["tfidf"] == 1.0
    # embedding+tfidf is also perfect on these four texts and comes earlier in the order: first of equals wins
    assert chosen.chosen == "ensemble" and chosen.weights == {"embedding": 0.5, "tfidf": 0.5}
    assert chosen.models == models and chosen.encoder_weight == 0.0 and "highest validation" in chosen.reason
    probs["finetuned"] = right  # a perfect encoder: it ships (first among equals), nothing else travels with it
    best = select(["finetuned", "ensemble", "tfidf"], "weighted_f1", probs, val_labels, 2, models)
    assert best.chosen == "finetuned" and best.weights == {"finetuned": 1.0} and best.models == {}
    only = select(["finetuned"], "macro_f1", {"finetuned": wrong}, val_labels, 2)
    assert only.chosen == "finetuned" and list(only.scores) == ["finetuned"]
    assert select(["tfidf"], "weighted_f1", {}, [], 2).chosen == "finetuned"  # no validation split


def test_an_option_within_the_tolerance_of_the_best_ships_when_it_comes_first():
    val_labels = [0, 1, 0, 1]
    right, wrong = np.eye(2)[val_labels], np.eye(2)[[1, 0, 1, 0]]
    half = np.array([[0.9, 0.1], [0.9, 0.1], [0.9, 0.1], [0.1, 0.9]])
    probs = {"finetuned": wrong, "embedding": half, "tfidf": right}
    order = ["ensemble", "finetuned", "embedding", "tfidf"]
    strict = select(order, "accuracy", probs, val_labels, 2)
    assert strict.weights == {"embedding": 0.5, "tfidf": 0.5}  # the first of the perfect options
    assert strict.scores["ensemble finetuned+embedding+tfidf"] == 0.75
    near = select(order, "accuracy", probs, val_labels, 2, tolerance=0.25)
    assert near.weights == pytest.approx({"finetuned": 1 / 3, "embedding": 1 / 3, "tfidf": 1 / 3})
    assert "within select.tolerance 0.25" in near.reason
    assert select(order, "accuracy", probs, val_labels, 2, tolerance=0.2).weights == strict.weights


def test_a_named_mix_keeps_its_place_in_the_order_and_is_not_scored_twice():
    # Default order: the one-encoder-pass mix first, then every mix, then the parts alone.
    names = [name for name, _ in options(["embedding+tfidf", "ensemble", "finetuned", "embedding", "tfidf"])]
    assert names == [
        "ensemble embedding+tfidf", "ensemble finetuned+embedding+tfidf", "ensemble finetuned+embedding",
        "ensemble finetuned+tfidf", "finetuned", "embedding", "tfidf",
    ]  # fmt: skip
    # A mix is named by its parts whatever their order in the recipe; it needs only its parts trained.
    assert options(["tfidf+finetuned"]) == [("ensemble finetuned+tfidf", {"finetuned": 0.5, "tfidf": 0.5})]
    assert needed_parts(["embedding+tfidf"]) == {"embedding", "tfidf"}
    val_labels = [0, 1, 0, 1]
    right, wrong = np.eye(2)[val_labels], np.eye(2)[[1, 0, 1, 0]]
    half = np.array([[0.9, 0.1], [0.9, 0.1], [0.9, 0.1], [0.1, 0.9]])  # 3 of 4 right
    probs = {"finetuned": right, "embedding": half, "tfidf": half}
    order = ["embedding+tfidf", "ensemble", "finetuned"]
    strict = select(order, "accuracy", probs, val_labels, 2)  # a perfect mix with the encoder beats it ...
    assert strict.option == "ensemble finetuned+embedding" and strict.scores["ensemble embedding+tfidf"] == 0.75
    near = select(order, "accuracy", probs, val_labels, 2, tolerance=0.25)  # ... unless the mix is near enough
    assert near.chosen == "ensemble" and near.option == "ensemble embedding+tfidf"
    assert near.weights == {"embedding": 0.5, "tfidf": 0.5} and near.encoder_weight == 0.0
    probs["finetuned"] = wrong
    assert select(order, "accuracy", probs, val_labels, 2).option == "ensemble embedding+tfidf"


def test_mix_is_the_weighted_sum_of_the_parts():
    a, b, c = np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]]), np.array([[0.5, 0.5]])
    halves = mix({"finetuned": a, "tfidf": b, "embedding": None}, {"finetuned": 0.5, "tfidf": 0.5})
    assert np.allclose(halves, [[0.5, 0.5]]) and mix({"finetuned": a}, {"finetuned": 1.0}) is a
    assert np.allclose(mix({"x": a, "y": b, "z": c}, {"x": 1 / 3, "y": 1 / 3, "z": 1 / 3}), [[0.5, 0.5]])


def test_the_embedder_reads_long_texts_in_pieces_and_the_embedding_model_round_trips(tmp_path, tiny_encoder_dir):
    from transformers import AutoTokenizer

    from adapterlab.config import ModelConfig
    from adapterlab.tasks.classify.format import special_tokens

    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder_dir)
    cfg = ModelConfig(base=str(tiny_encoder_dir))
    embedder = Embedder.load(str(tiny_encoder_dir), cfg, tokenizer, chunk=16, max_chunks=4)
    long_text = " ".join(["phone battery charger screen"] * 20)
    pieces, owner = embedder.pieces(["short text", long_text])
    front, back = special_tokens(tokenizer)
    assert owner.count(0) == 1 and owner.count(1) == 4 and all(len(p) == 16 for p in pieces[1:])
    content = tokenizer(long_text, add_special_tokens=False)["input_ids"]  # more than 4 pieces: the first 4 are read
    read = [t for p, o in zip(pieces, owner, strict=True) if o == 1 for t in p[front : len(p) - back]]
    assert len(content) > 4 * (16 - front - back) and read == content[: 4 * (16 - front - back)]
    vectors = embedder.embed(TEXTS)
    assert vectors.shape[0] == len(TEXTS) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.allclose(embedder.embed([TEXTS[3]]), vectors[3], atol=1e-5)  # padding in a batch changes nothing
    labels = [0, 1, 2, 1, 0, 1, 2, 1, 0]
    model = EmbeddingModel.fit(vectors, labels, 4, embedder=embedder)  # label 3 has no training example: probability 0
    model.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["embedding.json", "embedding.safetensors"]
    loaded = EmbeddingModel.load(tmp_path).attach(embedder)
    got = loaded.predict_proba(TEXTS)
    assert got.shape == (len(TEXTS), 4) and np.allclose(got, model.proba_of(vectors), atol=1e-6)
    assert np.allclose(got.sum(axis=1), 1.0, atol=1e-5) and np.allclose(got[:, 3], 0)
    assert loaded.predict_proba([]).shape == (0, 4)


def test_contrastive_pairs_pair_each_text_with_its_label_and_another_within_the_budget():
    from collections import Counter

    from adapterlab.tasks.classify.contrastive import draw_pairs

    labels = [0, 0, 0, 1, 1, 2, 2, 2, 2, 3]  # label 3 has one text
    pairs = draw_pairs(labels, per_text=4, budget=1000, seed=7)
    assert len(pairs) == 2 * 4 * len(labels) and pairs == draw_pairs(labels, 4, 1000, seed=7)
    assert pairs != draw_pairs(labels, 4, 1000, seed=8)
    assert all((labels[i] == labels[j]) == (target == 1.0) for i, j, target in pairs)
    assert all(n == 8 for n in Counter(i for i, _, _ in pairs).values())  # 4 positive + 4 negative per text
    assert (9, 9, 1.0) in pairs  # alone in its label: paired with itself
    capped = draw_pairs(labels, per_text=4, budget=50, seed=7)  # 2 rounds of 10 texts (40 pairs) + 5 texts more
    assert len(capped) == 50 and sorted(Counter(i for i, _, _ in capped).values()) == [4] * 5 + [6] * 5
    assert len(draw_pairs(list(range(100)) * 20, 4, 600, seed=0)) == 600  # fewer pairs than texts: a sample
    assert draw_pairs(labels, 0, 1000, 0) == [] and draw_pairs([], 4, 1000, 0) == []
    assert all(target == 1.0 for _, _, target in draw_pairs([5, 5, 5], 2, 100, 0))  # one label: no negative pairs


def test_the_contrastive_stage_pulls_same_label_texts_together(tiny_encoder_dir):
    from transformers import AutoModel, AutoTokenizer

    from adapterlab.tasks.classify.contrastive import draw_pairs, tune

    tokenizer, model = AutoTokenizer.from_pretrained(tiny_encoder_dir), AutoModel.from_pretrained(tiny_encoder_dir)
    texts = [f"{word} {n}" for n in range(6) for word in ("phone battery screen", "coffee tea taste")]
    labels = [i % 2 for i in range(len(texts))]

    def margin() -> float:  # mean cosine of same-label pairs minus that of other-label pairs
        embedder = Embedder(model.eval(), tokenizer)
        vectors = embedder.embed(texts)
        cos = vectors @ vectors.T
        same = np.equal.outer(labels, labels) & ~np.eye(len(texts), dtype=bool)
        return float(cos[same].mean() - cos[~np.equal.outer(labels, labels)].mean())

    before = margin()
    stats = tune(model, tokenizer, texts, draw_pairs(labels, 4, 1000, seed=0) * 3, learning_rate=1e-3, seed=0)
    assert stats.pairs == 3 * 2 * 4 * len(texts) and stats.last_loss < stats.first_loss and stats.seconds > 0
    assert margin() > before + 0.05 and not model.training


def test_an_embedder_whose_compiler_fails_embeds_eagerly(tiny_encoder_dir, monkeypatch, capsys):
    """``predict --compile`` compiles the embedding part's frozen base too (compared with the eager classifier in
    test_classify.py); a compiler failure leaves it eager, with the same embeddings."""
    import torch
    from transformers import AutoTokenizer

    from adapterlab.config import ModelConfig

    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder_dir)
    cfg = ModelConfig(base=str(tiny_encoder_dir))
    expected = Embedder.load(str(tiny_encoder_dir), cfg, tokenizer).embed(TEXTS)

    def broken_compile(model, **kwargs):
        def run(**inputs):
            raise RuntimeError("no C++ compiler")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    embedder = Embedder.load(str(tiny_encoder_dir), cfg, tokenizer)
    embedder.compile()
    assert np.allclose(embedder.embed(TEXTS), expected, atol=1e-5)
    assert np.allclose(embedder.embed(TEXTS[:1]), expected[:1], atol=1e-5)  # batch 1: no padding, no mask
    assert embedder.eager is None and embedder.model.config._attn_implementation == "sdpa"
    assert "torch.compile failed (RuntimeError); predicting eagerly" in capsys.readouterr().out


def test_an_adapter_from_before_the_embedding_part_keeps_its_mix():
    from adapterlab.tasks.classify.infer import TextClassifier

    old = TextClassifier()
    old.meta, old.tfidf = {"encoder_weight": 0.25, "tfidf": True}, object()
    assert old.weights == {"finetuned": 0.25, "tfidf": 0.75} and old.encoder_weight == 0.25
    plain = TextClassifier()
    plain.meta = {"encoder_weight": 1.0}
    assert plain.weights == {"finetuned": 1.0}


def test_recipe_keys_validate():
    base = {"name": "x", "task": "classify", "data": {"path": "x.csv", "text_columns": ["t"], "label_column": "y"}}
    recipe = recipe_from_dict(base)
    assert recipe.data.max_tokens == "auto" and recipe.train.epochs == "auto"
    assert (
        recipe.select.candidates == ["embedding+tfidf", "ensemble", "finetuned", "embedding", "tfidf"]
        and recipe.data.truncation == "head_tail"
        and recipe.select.tolerance == 0.02
    )
    with pytest.raises(RecipeError, match="candidates"):
        recipe_from_dict({**base, "select": {"candidates": ["finetuned", "finetuned"]}})
    with pytest.raises(RecipeError):
        recipe_from_dict({**base, "select": {"candidates": ["svm"]}})
    for bad in ("tfidf+svm", "tfidf+tfidf", "tfidf+", "ensemble+tfidf"):
        with pytest.raises(RecipeError, match=r"mix of two or three different parts joined by \+"):
            recipe_from_dict({**base, "select": {"candidates": [bad]}})
    assert recipe_from_dict({**base, "select": {"candidates": ["tfidf+finetuned"]}}).select.candidates == [
        "tfidf+finetuned"
    ]


def test_prepare_settles_max_tokens_auto_and_counts_truncation(classify_dict):
    classify_dict["data"]["max_tokens"] = "auto"
    prepared = prepare(recipe_from_dict(classify_dict))
    report = prepared.report
    limit = report["max_tokens"]
    assert isinstance(limit, int) and 64 <= limit <= 128 and report["truncation"] == "head_tail"
    rows = [r for s in ("train", "val", "test") for r in read_jsonl(prepared.run.data / f"{s}.jsonl")]
    assert all(r["tokens"] <= limit for r in rows)
    assert report["truncated"] == sum(r["truncated"] for r in rows)


def test_label_values_that_look_wrong_are_warned_about_and_clean_ones_are_not():
    from adapterlab.tasks.classify.labels import label_warnings

    assert label_warnings(["pos", "neg", "neutral"] * 20, "sentiment") == []
    assert label_warnings(["1", "2", "3", "4", "5"] * 10, "stars") == []  # star ratings: numbers only, fine
    ids = label_warnings([f"R{i:04d}" for i in range(60)], "review_id")
    assert len(ids) == 1 and "label column 'review_id' has 60 different values in 60 rows" in ids[0]
    (spelt,) = label_warnings(["BEAUTY", "beauty", "Beauty ", "shoes", "shoes"] * 4, "category")
    assert "1 label(s) spelt in more than one way" in spelt and "'BEAUTY' / 'Beauty ' / 'beauty'" in spelt
    (mixed,) = label_warnings(["shoes"] * 10 + ["beauty"] * 10 + ["14", "24"], "category")
    assert "mixes numbers ('14', '24': 2 rows) with words" in mixed


def test_a_max_tokens_past_the_encoders_positions_is_refused(classify_dict):
    """An explicit limit is the user's to set, but not past what the encoder has positions for (training would
    fail on the first long text instead)."""
    from adapterlab.errors import RecipeError

    classify_dict["data"]["max_tokens"] = 100_000
    with pytest.raises(RecipeError, match=r"data\.max_tokens: 100000 is more than the encoder takes \(\d+ tokens\)"):
        prepare(recipe_from_dict(classify_dict))


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


def test_a_run_that_ships_an_ensemble_saves_its_parts_and_predicts_their_average(classify_dict):
    from adapterlab.stages.evaluate import evaluate
    from adapterlab.stages.train import train
    from adapterlab.tasks.classify.infer import Classifier

    classify_dict["train"]["epochs"] = 1
    classify_dict["select"] = {"candidates": ["ensemble"]}
    result = train(recipe_from_dict(classify_dict))
    selection = result.summary["selection"]
    assert selection["chosen"] == "ensemble" and len(selection["candidates"]) == 4
    weights = selection["weights"]
    assert len(weights) >= 2 and sum(weights.values()) == pytest.approx(1.0)
    info = AdapterInfo.read(result.run.root).task_info
    assert info["weights"] == weights and info["tfidf"] == ("tfidf" in weights)
    assert info["embedding"] == ("embedding" in weights)
    for part in ("tfidf", "embedding"):
        assert (result.run.adapter / f"{part}.safetensors").is_file() == (part in weights)
    classifier = Classifier.load(result.run.root)
    texts = [r["text"] for r in read_jsonl(result.run.data / "test.jsonl")]
    expected = sum(w * classifier.part_proba(part, texts) for part, w in weights.items())
    assert np.allclose(classifier.predict_proba(texts), expected, atol=1e-6)
    report = evaluate(result.run.root).report
    assert report["weights"] == weights and set(report["parts_alone"]) == {"finetuned", *weights}


def test_without_pairs_the_embedding_part_reads_the_frozen_base_and_ships_no_encoder(classify_dict):
    import torch
    from safetensors.torch import load_file

    from adapterlab.stages.train import train
    from adapterlab.tasks.classify.infer import Classifier

    classify_dict["train"]["epochs"] = 1
    classify_dict["select"] = {"candidates": ["embedding"], "contrastive_pairs": 0}
    result = train(recipe_from_dict(classify_dict))
    assert result.summary["selection"]["chosen"] == "embedding" and "contrastive" not in result.summary["selection"]
    assert not (result.run.adapter / "embedding-encoder").exists()
    assert read_json(result.run.adapter / "embedding.json")["encoder"] is None
    embedder = Classifier.load(result.run.root, "fp32").embedding.embedder
    base = load_file(str(Path(classify_dict["model"]["base"]) / "model.safetensors"))
    state = embedder.model.state_dict()
    assert set(base) <= set(state) and all(torch.equal(state[k], v) for k, v in base.items())


@pytest.mark.parametrize(
    ("delta", "ci", "says"),
    [
        (0.1, [0.05, 0.15], "beats TF-IDF"),
        (-0.1, [-0.15, -0.05], "worse than TF-IDF"),
        (0.01, [-0.02, 0.04], "no clear"),
    ],
)
def test_the_report_says_plainly_whether_what_ships_beats_tfidf(delta, ci, says):
    from adapterlab.tasks.classify.evaluate import verdict_line

    line = verdict_line({"adapter_vs_tfidf": {"weighted_f1": {"delta": delta, "ci95": ci}}})
    assert line.startswith("Verdict:") and says in line and f"[{ci[0]:g}, {ci[1]:g}]" in line


def test_a_vocabulary_that_does_not_know_the_language_is_reported():
    from transformers import AutoTokenizer

    from adapterlab.models import resolve_base
    from adapterlab.tasks.classify.labels import poor_fit_warning, vocabulary_fit

    tokenizer = AutoTokenizer.from_pretrained(resolve_base("default-encoder"))  # English WordPiece
    english = vocabulary_fit(["The charger stopped working after a week, so I returned it."] * 3, tokenizer)
    assert not english["poor"] and english["unknown_share"] == 0 and english["tokens_per_word"] < 1.6
    chinese = vocabulary_fit(["八月六号就显示我的定单就处理结束了，都半个月了我还没拿到书。"] * 3, tokenizer)
    assert chinese["poor"] and chinese["unknown_share"] > 0.05 and chinese["tokens_per_word"] is None
    slovene_text = "Že včeraj sem napisal komentar, pa ga ponovim, ker je izjava trenerjev smešna."
    slovene = vocabulary_fit([slovene_text], tokenizer)
    assert slovene["poor"] and slovene["tokens_per_word"] > 2.2
    assert "model.base" in poor_fit_warning(chinese) and "no spaces between words" in poor_fit_warning(chinese)
    assert vocabulary_fit([], tokenizer) == {"unknown_share": 0.0, "tokens_per_word": None, "poor": False}


def test_a_missing_base_for_the_embedding_part_is_one_clear_error(tmp_path):
    from adapterlab.config import ModelConfig
    from adapterlab.errors import ModelError

    missing = tmp_path / "moved-encoder"
    missing.mkdir()
    with pytest.raises(ModelError, match="embedding part reads texts with the base model") as caught:
        Embedder.load(str(missing), ModelConfig(base=str(missing)), tokenizer=None)
    assert "\n" not in str(caught.value) and "select.candidates" in str(caught.value)
