"""The prepare hooks that run the user's own models: paraphrasing, back-translation and NLI weak labels.

Every model here is tiny and built in-process (tests/tiny.py): a random seq2seq model whose output depends on its
input, seq2seq models whose weights are set to give one canned answer, and a random NLI-shaped pair classifier.
"""

from collections import Counter

import pytest

from adapterlab.registry import recipe_from_dict
from adapterlab.runs import read_jsonl
from adapterlab.stages.prepare import prepare
from adapterlab.tasks.classify.augment import backtranslate, rewrite
from adapterlab.tasks.classify.config import WeakLabelConfig
from adapterlab.tasks.classify.weak_label import label_prompts, weak_labels

from samples import review_rows, write_csv
from tiny import build_nli_dir, build_seq2seq_dir

SPLITS = ("train", "val", "test")
LABELS = ["books", "clothing", "electronics", "no_product"]
NO_EDA = {"p_swap": 0.0, "p_delete": 0.0, "p_insert": 0.0}  # EDA copies equal their source and are skipped


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Models this small run fastest on one thread, and far faster than on several when the CPUs are busy."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("hook-models")
    return {
        "random": str(build_seq2seq_dir(root / "random")),
        "random2": str(build_seq2seq_dir(root / "random2", seed=1)),
        "german": str(build_seq2seq_dir(root / "german", reply="Das ist gut.")),
        "english": str(build_seq2seq_dir(root / "english", reply="It is good.")),
        "silent": str(build_seq2seq_dir(root / "silent", reply="")),
        "noisy": str(build_seq2seq_dir(root / "noisy", reply="Love it 😍 https://shop.example/x")),
        "wordy": str(build_seq2seq_dir(root / "wordy", reply="very " * 40 + "long")),
    }


@pytest.fixture(scope="module")
def nli_dir(tmp_path_factory):
    return str(build_nli_dir(tmp_path_factory.mktemp("hook-models") / "nli"))


def texts_of_reviews() -> list[str]:
    return [r["text"] for r in review_rows()][::2]  # 26 different texts: two generation batches of 16


def rows_of(run, split):
    return read_jsonl(run.data / f"{split}.jsonl")


# ------------------------------------------------------------------------------------------ rewrite, backtranslate


def test_rewrite_returns_one_string_per_input_in_order(models):
    texts = texts_of_reviews()
    out = rewrite(texts, models["random"])
    assert len(out) == len(texts) and all(isinstance(t, str) and t for t in out)
    assert len(set(out)) == len(texts)  # the model reads its input, so the order checks below mean something
    assert rewrite(texts[::-1], models["random"]) == out[::-1]
    for i in (0, 15, 16, 25):  # first, last of the first batch of 16, first and last of the second
        assert rewrite([texts[i]], models["random"]) == [out[i]], i
    assert rewrite([], models["random"]) == []


def test_rewrite_returns_the_models_words_and_keeps_empty_answers(models):
    texts = ["phone battery", "x", "книга сюжет " * 20]
    assert rewrite(texts, models["german"]) == ["Das ist gut."] * 3
    assert rewrite(texts, models["silent"]) == ["", "", ""]  # still one string per input


def test_backtranslate_chains_the_two_models_one_string_per_input_in_order(models):
    texts = texts_of_reviews()
    assert backtranslate(texts, models["german"], models["english"]) == ["It is good."] * len(texts)
    # The back model sees the pivot text only: a canned pivot makes every result the same.
    via_pivot = backtranslate(texts[:3], models["german"], models["random"])
    assert via_pivot == rewrite(["Das ist gut."], models["random"]) * 3
    out = backtranslate(texts, models["random"], models["random2"])
    assert len(out) == len(texts) and len(set(out)) == len(texts)
    assert backtranslate(texts[::-1], models["random"], models["random2"]) == out[::-1]


# --------------------------------------------------------------------------------------- augmentation in prepare


def augment_recipe(classify_dict, **augment):
    classify_dict["split"]["group_by"] = "thread"
    classify_dict["augment"] = {"below_count": 10, **augment}
    return recipe_from_dict(classify_dict)


def check_augmented(prepared, kind: str, expected_texts) -> list[dict]:
    """Rows written by ``kind`` are marked, in train beside their source, one per selected row, and counted."""
    report, run = prepared.report, prepared.run
    train = rows_of(run, "train")
    originals = [r for r in train if not r["augmented"]]
    augmented = [r for r in train if r["augmented"]]
    by_id = {r["id"]: r for r in originals}
    counts = Counter(r["label"] for r in originals)
    selected = [r for r in originals if counts[r["label"]] < 10]
    assert selected and {r["label"] for r in selected} < set(LABELS)

    written = [r for r in augmented if r["augmented"] == kind]
    assert [r["source_id"] for r in written] == [r["id"] for r in selected]  # one per selected row, in order
    assert [r["text"] for r in written] == expected_texts([r["text"] for r in selected])
    for row in augmented:
        source = by_id[row["source_id"]]
        assert row["label"] == source["label"] and row["source"] == source["source"] and row["row"] == source["row"]
        assert row["text"] != source["text"] and not row["weak"]
    ids = [r["id"] for split in SPLITS for r in rows_of(run, split)]
    assert len(ids) == len(set(ids))

    # Only the training split is augmented; a thread (the split group) never crosses splits.
    threads = {split: {r["source"]["thread"] for r in rows_of(run, split)} for split in SPLITS}
    assert not any(r["augmented"] for split in ("val", "test") for r in rows_of(run, split))
    assert {r["source"]["thread"] for r in augmented} <= threads["train"]
    assert not threads["train"] & (threads["val"] | threads["test"])

    # The data report counts them as added training rows, never as input rows.
    skipped = report["augment"]["skipped"]  # e.g. EDA copies that came out equal to their source
    assert all(isinstance(n, int) and n > 0 for n in skipped.values())
    assert {k: v for k, v in report["augment"].items() if k != "skipped"} == {
        "selected_rows": len(selected),
        "added": len(augmented),
        "by_label": dict(Counter(r["label"] for r in augmented)),
    }
    assert report["splits"]["train"] == len(train) == len(originals) + len(augmented)
    assert report["classes"]["train"] == dict(sorted(Counter(r["label"] for r in train).items()))
    assert report["input_rows"] == 52 and report["kept"] + report["dropped_total"] == 52
    assert report["kept"] == len(originals) + report["splits"]["val"] + report["splits"]["test"]

    from datasets import load_from_disk

    tokenized = load_from_disk(str(run.tokenized))
    assert {split: len(tokenized[split]) for split in SPLITS} == report["splits"]
    return augmented


def test_prepare_with_a_paraphraser(classify_dict, models):
    prepared = prepare(augment_recipe(classify_dict, paraphrase_model=models["random"], **NO_EDA))
    augmented = check_augmented(prepared, "paraphrase", lambda texts: rewrite(texts, models["random"]))
    assert {r["augmented"] for r in augmented} == {"paraphrase"}


def test_prepare_with_backtranslation_and_eda(classify_dict, models):
    recipe = augment_recipe(classify_dict, copies=2, backtranslate=[models["random"], models["random2"]])
    prepared = prepare(recipe)
    augmented = check_augmented(
        prepared, "backtranslate", lambda texts: backtranslate(texts, models["random"], models["random2"])
    )
    kinds = Counter(r["augmented"] for r in augmented)
    assert set(kinds) == {"eda", "backtranslate"}
    assert 0 < kinds["eda"] <= 2 * prepared.report["augment"]["selected_rows"]


def test_a_paraphraser_that_answers_nothing_adds_no_rows(classify_dict, models):
    report = prepare(augment_recipe(classify_dict, paraphrase_model=models["silent"], **NO_EDA)).report
    assert report["augment"]["selected_rows"] > 0 and report["augment"]["added"] == 0


def test_model_written_rows_are_cleaned_like_every_other_row(classify_dict, models):
    from adapterlab.data.clean import clean_text

    recipe = augment_recipe(classify_dict, paraphrase_model=models["noisy"], classes=["books"], **NO_EDA)
    prepared = prepare(recipe)
    augmented = [r for r in rows_of(prepared.run, "train") if r["augmented"] == "paraphrase"]
    assert augmented
    steps = recipe.data.clean.steps()
    assert all(r["text"] == clean_text(r["text"], steps) for r in augmented), augmented[0]["text"]


def test_model_written_rows_over_the_token_limit_are_marked_truncated(classify_dict, models, tiny_encoder_dir):
    from transformers import AutoTokenizer

    recipe = augment_recipe(classify_dict, paraphrase_model=models["wordy"], classes=["books"], **NO_EDA)
    prepared = prepare(recipe)
    augmented = [r for r in rows_of(prepared.run, "train") if r["augmented"] == "paraphrase"]
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_encoder_dir))
    assert augmented and len(tokenizer(augmented[0]["text"])["input_ids"]) > recipe.data.max_tokens
    assert all(r["tokens"] == recipe.data.max_tokens for r in augmented)
    assert all(r["truncated"] for r in augmented)


def test_model_written_rows_over_the_token_limit_are_dropped_and_counted_under_on_too_long_drop(classify_dict, models):
    classify_dict["data"]["on_too_long"] = "drop"
    recipe = augment_recipe(classify_dict, paraphrase_model=models["wordy"], classes=["books"], **NO_EDA)
    report = prepare(recipe).report
    assert report["augment"]["added"] == 0
    assert report["augment"]["skipped"]["over_token_limit"] == report["augment"]["selected_rows"]


# ------------------------------------------------------------------------------------------------ NLI weak labels


@pytest.mark.parametrize(
    "names", [("entailment", "neutral", "contradiction"), ("CONTRADICTION", "NEUTRAL", "ENTAILMENT")]
)
def test_nli_weak_labels_follow_the_entailment_logit(tmp_path, names):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model_dir = str(build_nli_dir(tmp_path / "nli", labels=names))
    descriptions = {"books": "novels, poems and paperbacks"}
    cfg = WeakLabelConfig(method="nli", model=model_dir)
    texts = ["phone battery dies", "dress fits well", "книга сюжет", "courier late again"]
    guesses = weak_labels(texts, LABELS, descriptions, cfg)
    assert len(guesses) == len(texts)

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    entailment = [n.lower() for n in names].index("entailment")
    hypotheses = [cfg.hypothesis.format(p) for p in label_prompts(LABELS, descriptions)]
    assert hypotheses[0] == "This text is about books: novels, poems and paperbacks."
    for text, guess in zip(texts, guesses, strict=True):
        with torch.no_grad():
            logits = torch.cat([model(**tokenizer(text, h, return_tensors="pt")).logits for h in hypotheses])
        probs = logits[:, entailment].softmax(-1)
        top = probs.topk(2)
        assert guess.label == LABELS[int(top.indices[0])] and guess.runner_up == LABELS[int(top.indices[1])]
        assert guess.confidence == pytest.approx(float(top.values[0]), abs=1e-4)

    assert weak_labels(texts[1:2], LABELS, descriptions, cfg) == guesses[1:2]  # one text: a dict from the pipeline
    assert weak_labels([], LABELS, descriptions, cfg) == []


def between(values: list[float], rank: int) -> float:
    """A cut with exactly ``rank`` values at or above it, halfway between two neighbours."""
    ordered = sorted(values, reverse=True)
    assert ordered[rank - 1] - ordered[rank] > 1e-3, ordered  # a clear gap: no float ties at the cut
    return (ordered[rank - 1] + ordered[rank]) / 2


@pytest.mark.parametrize(("n_kept", "n_grey"), [(3, 5), (2, 3)])
def test_prepare_with_nli_weak_labels(tmp_path, classify_dict, nli_dir, n_kept, n_grey):
    unlabeled = ["phone cable broke", "warm jacket", "poems edition", "courier late", "книга", "headphones bass",
                 "restock when", "jeans waist"]  # fmt: skip
    rows = review_rows() + [{"id": f"U{i}", "text": t, "category": "", "thread": "u"} for i, t in enumerate(unlabeled)]
    guesses = weak_labels(unlabeled, LABELS, {}, WeakLabelConfig(method="nli", model=nli_dir))
    confidences = [g.confidence for g in guesses]
    threshold = between(confidences, n_kept)
    n_below = len(unlabeled) - n_kept - n_grey
    floor = between(confidences, n_kept + n_grey) if n_below else min(confidences) / 2
    classify_dict["data"]["path"] = str(write_csv(tmp_path / "mixed.csv", rows))
    classify_dict["weak_label"] = {"method": "nli", "model": nli_dir, "threshold": threshold,
                                   "grey_zone": threshold - floor}  # fmt: skip
    prepared = prepare(recipe_from_dict(classify_dict))
    report, weak = prepared.report, prepared.report["weak_label"]

    assert (weak["method"], weak["pool"], weak["kept"], weak["grey_zone"], weak["below"]) == (
        "nli", 8, n_kept, n_grey, n_below
    )  # fmt: skip
    if not n_below:
        assert weak["kept"] + weak["grey_zone"] == len(unlabeled)
    expected = {f"U{i}": g for i, g in enumerate(guesses)}
    kept = [r for r in rows_of(prepared.run, "train") if r["weak"]]
    assert {r["id"] for r in kept} == {i for i, g in expected.items() if g.confidence >= threshold}
    assert all(r["label"] == expected[r["id"]].label and r["confidence"] >= threshold for r in kept)
    assert weak["kept_by_label"] == dict(sorted(Counter(r["label"] for r in kept).items()))
    grey_ids = {g["id"] for g in weak["grey_zone_examples"]}
    assert grey_ids == {i for i, g in expected.items() if floor <= g.confidence < threshold}
    assert not any(r["weak"] for split in ("val", "test") for r in rows_of(prepared.run, split))

    # Every unlabeled row is settled in the row accounting: kept with its weak label, or dropped with a reason.
    assert report["dropped"].get("weak_label_grey_zone", 0) == n_grey
    assert report["dropped"].get("weak_label_low_confidence", 0) == n_below
    assert report["input_rows"] == 60 and report["kept"] + report["dropped_total"] == 60
    assert report["kept"] == sum(report["splits"].values()) == 52 + n_kept
