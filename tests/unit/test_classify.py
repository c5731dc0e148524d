"""Classification on a tiny in-process encoder: preparation, weak labels, augmentation, training, eval, predict."""

import csv
import json
from collections import Counter

import numpy as np
import pytest

from adapterlab.errors import DataError, RecipeError
from adapterlab.registry import recipe_from_dict
from adapterlab.runs import AdapterInfo, read_jsonl
from adapterlab.stages.prepare import prepare

from samples import REVIEW_SIZES, review_rows, write_csv


def rows_of(run, split):
    return read_jsonl(run.data / f"{split}.jsonl")


def test_prepare_cleans_accounts_and_stratifies(tmp_path, classify_dict):
    rows = review_rows()
    rows += [
        {"id": "X1", "text": "   ", "category": "books", "thread": "x"},
        {"id": "X2", "text": "😍 https://only.links/here", "category": "books", "thread": "x"},
        {"id": "X3", "text": "dress fits number 100", "category": "", "thread": "x"},
        {"id": "X4", "text": rows[0]["text"], "category": "books", "thread": "x"},  # same text, other label
        {"id": "X5", "text": rows[1]["text"], "category": rows[1]["category"], "thread": "x"},  # exact duplicate
    ]
    classify_dict["data"]["path"] = str(write_csv(tmp_path / "messy.csv", rows))
    prepared = prepare(recipe_from_dict(classify_dict))
    report = prepared.report
    assert report["input_rows"] == 57
    assert report["dropped"] == {
        "conflicting_label": 1, "duplicate": 1, "empty_after_cleaning": 1, "empty_field": 1, "missing_label": 1
    }  # fmt: skip
    assert report["kept"] == 52 and report["kept"] + report["dropped_total"] == 57
    assert report["labels"] == ["books", "clothing", "electronics", "no_product"]
    for label, size in REVIEW_SIZES.items():  # 60/20/20 of every class
        split_counts = [report["classes"][s].get(label, 0) for s in ("train", "val", "test")]
        assert sum(split_counts) == size and split_counts[0] >= 0.5 * size, label
    texts = {r["text"] for s in ("train", "val", "test") for r in rows_of(prepared.run, s)}
    assert not any("http" in t or "😍" in t or "&amp;" in t or "<br>" in t for t in texts)
    label_map = json.loads((prepared.run.data / "label_map.json").read_text())
    assert label_map["label2id"]["books"] == 0


def test_group_aware_split_and_augmented_rows_stay_with_their_source(classify_dict):
    classify_dict["split"]["group_by"] = "thread"
    classify_dict["augment"] = {"copies": 2, "below_count": 10}
    prepared = prepare(recipe_from_dict(classify_dict))
    where = {}
    for split in ("train", "val", "test"):
        for row in rows_of(prepared.run, split):
            if not row["augmented"]:
                where.setdefault(row["source"]["thread"], set()).add(split)
    assert all(len(s) == 1 for s in where.values())
    train = rows_of(prepared.run, "train")
    augmented = [r for r in train if r["augmented"]]
    originals = {r["id"] for r in train if not r["augmented"]}
    small = {label for label, n in Counter(r["label"] for r in train if not r["augmented"]).items() if n < 10}
    assert augmented and {r["label"] for r in augmented} <= small
    assert all(r["source_id"] in originals for r in augmented)
    assert all(not r["augmented"] for s in ("val", "test") for r in rows_of(prepared.run, s))
    assert prepared.report["augment"]["added"] == len(augmented)


def test_rebalance_quotas(classify_dict):
    classify_dict["rebalance"] = {"min_per_class": 6, "max_per_class": 10}
    prepared = prepare(recipe_from_dict(classify_dict))
    counts = prepared.report["classes"]["train"]
    assert all(6 <= n <= 10 for n in counts.values()), counts
    assert prepared.report["rebalance"]["removed"]["electronics"] > 0


def test_weak_labels_from_a_file_only_reach_the_training_split(tmp_path, classify_dict, tiny_encoder_dir):
    pool = [{"id": f"U{i}", "text": t} for i, t in enumerate(["phone battery new", "dress fits well", "", "courier"])]
    classify_dict["weak_label"] = {"path": str(write_csv(tmp_path / "pool.csv", pool)), "model": str(tiny_encoder_dir)}
    classify_dict["weak_label"]["threshold"] = 0.3
    prepared = prepare(recipe_from_dict(classify_dict))
    weak = prepared.report["weak_label"]
    assert prepared.report["weak_label_source"]["unusable"] == {"empty_field": 1}
    assert weak["pool"] == 3 and weak["kept"] + weak["grey_zone"] + weak["below"] == 3
    kept = [r for r in rows_of(prepared.run, "train") if r["weak"]]
    assert len(kept) == weak["kept"] and all(r["confidence"] >= 0.3 for r in kept)
    assert not any(r["weak"] for s in ("val", "test") for r in rows_of(prepared.run, s))


def test_weak_labels_for_unlabeled_rows_keep_the_ledger_balanced(tmp_path, classify_dict, tiny_encoder_dir):
    rows = review_rows() + [
        {"id": f"U{i}", "text": f"mystery item {i}", "category": "", "thread": "u"} for i in range(6)
    ]
    classify_dict["data"]["path"] = str(write_csv(tmp_path / "mixed.csv", rows))
    classify_dict["weak_label"] = {"model": str(tiny_encoder_dir), "threshold": 0.99, "grey_zone": 0.98}
    report = prepare(recipe_from_dict(classify_dict)).report
    assert report["weak_label"]["pool"] == 6 and report["weak_label"]["kept"] == 0
    assert report["dropped"].get("weak_label_grey_zone", 0) + report["dropped"].get("weak_label_low_confidence", 0) == 6
    assert report["kept"] + report["dropped_total"] == report["input_rows"] == 58
    assert report["weak_label"]["grey_zone_examples"]


def test_train_eval_predict(tmp_path, classify_dict):
    from adapterlab.predict import predict
    from adapterlab.stages.evaluate import evaluate
    from adapterlab.stages.train import train

    classify_dict["train"]["class_weights"] = "balanced"
    recipe = recipe_from_dict(classify_dict)
    result = train(recipe)
    summary = result.summary
    assert summary["task"] == "classify" and summary["method"] == "lora" and summary["best_checkpoint"]
    assert "weighted_f1" in summary["val"] and 0 <= summary["majority_val_weighted_f1"] <= 1
    meta = AdapterInfo.read(result.run.root).task_info
    assert meta["labels"] == ["books", "clothing", "electronics", "no_product"] and meta["clean"]["urls"] is True

    report = evaluate(result.run.root).report
    assert set(report["systems"]) == {"adapter", "tfidf", "majority"}
    assert set(report["systems"]["adapter"]) >= {"accuracy", "weighted_f1", "macro_f1", "weighted_precision"}
    assert report["latency"]["batch1_ms_p50"] > 0 and report["latency"]["batched_examples_per_s"] > 0
    assert sum(map(sum, report["confusion"]["adapter"])) == report["n_examples"]
    for name in ("report.json", "report.md", "report.html", "confusion_matrix.png", "predictions.jsonl"):
        assert (result.run.eval / name).is_file(), name

    rows = [
        {"id": "A", "text": "phone battery number 3 😍", "category": "electronics"},
        {"id": "B", "text": "", "category": "books"},
        {"id": "C", "text": "https://only.link 😍", "category": ""},
        {"id": "D", "text": "dress fits", "category": "hats"},
    ]
    source = write_csv(tmp_path / "new.csv", rows)
    out = predict(result.run.root, source, tmp_path / "sub" / "submission.csv", proba=True)
    with out.output.open() as handle:
        written = list(csv.DictReader(handle))
    assert [r["id"] for r in written] == ["A", "B", "C", "D"]
    assert written[1]["label"] == "" and written[2]["label"] == "" and written[0]["label"] in meta["labels"]
    assert abs(sum(float(written[0][f"p_{label}"]) for label in meta["labels"]) - 1) < 1e-4
    assert out.report["empty_text"] == 2 and out.report["predicted"] == 2
    assert out.report["labelled"]["unknown_labels"] == {"hats": 1}


def test_predict_bad_input(tmp_path, classify_dict):
    from adapterlab.predict import predict
    from adapterlab.stages.train import train

    classify_dict["train"]["epochs"] = 1
    run = train(recipe_from_dict(classify_dict)).run.root
    with pytest.raises(DataError, match="column 'text' .* not found"):
        predict(run, write_csv(tmp_path / "wrong.csv", [{"id": "1", "body": "hello"}]), tmp_path / "s.csv")
    with pytest.raises(DataError, match="no row has any text"):
        predict(run, write_csv(tmp_path / "empty.csv", [{"id": "1", "text": " "}]), tmp_path / "s.csv")


def test_decoder_base_and_full_finetune(tmp_path, classify_dict, tiny_model_dir):
    from adapterlab.stages.train import train
    from adapterlab.tasks.classify.infer import Classifier

    classify_dict["model"]["base"] = str(tiny_model_dir)  # a Llama with a classification head
    classify_dict["train"]["epochs"] = 1
    run = train(recipe_from_dict(classify_dict)).run.root
    assert Classifier.load(run).predict(["phone battery"])[0] in ("books", "clothing", "electronics", "no_product")

    classify_dict["model"]["base"] = classify_dict["model"]["base"]
    classify_dict["name"] = "full"
    classify_dict["lora"]["full_finetune"] = True
    result = train(recipe_from_dict(classify_dict))
    assert result.summary["method"] == "full"
    assert (result.run.adapter / "model.safetensors").is_file()
    assert len(Classifier.load(result.run.root).predict(["dress fits", "courier late"])) == 2


def test_class_weight_for_an_unknown_label(classify_dict):
    from adapterlab.stages.train import train

    classify_dict["train"]["class_weights"] = {"hats": 2.0}
    with pytest.raises(RecipeError, match="label 'hats' is not one of the labels"):
        train(recipe_from_dict(classify_dict))


def test_classify_recipe_needs_its_columns(classify_dict):
    del classify_dict["data"]["label_column"]
    with pytest.raises(RecipeError, match="task 'classify' needs data.label_column"):
        recipe_from_dict(classify_dict)


def test_resume_after_a_crash_matches_the_uninterrupted_run(classify_dict):
    import torch
    from safetensors.torch import load_file
    from transformers import TrainerCallback

    from adapterlab.stages.train import train

    class CrashAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 6:  # mid-way through the second epoch, after the first epoch's checkpoint
                raise RuntimeError("simulated crash")

    classify_dict["train"]["epochs"] = 3
    straight = train(recipe_from_dict({**classify_dict, "name": "straight"}))
    crashed = recipe_from_dict({**classify_dict, "name": "crashed"})
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(crashed, callbacks=[CrashAt()])
    resumed = train(crashed, resume=True)

    steps_per_epoch = straight.summary["steps"] // 3
    assert resumed.summary["resumed_from"].endswith(f"checkpoint-{steps_per_epoch}")
    assert resumed.summary["steps"] == straight.summary["steps"]
    assert resumed.summary["val"]["weighted_f1"] == pytest.approx(straight.summary["val"]["weighted_f1"])
    a = load_file(str(straight.run.adapter / "adapter_model.safetensors"))
    b = load_file(str(resumed.run.adapter / "adapter_model.safetensors"))
    assert a.keys() == b.keys()  # the LoRA weights and the fully trained head
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6, rtol=1e-5), name


def test_compiled_classifier_predicts_like_the_eager_one(trained_classifier):
    from adapterlab.tasks.classify.infer import Classifier

    texts = ["phone battery number 3", "warm jacket", "courier late", "novel story " * 20]
    eager = Classifier.load(trained_classifier)
    compiled = Classifier.load(trained_classifier, compiled=True)
    assert compiled.weights["embedding"] > 0  # the embedding part ships: its frozen base is compiled too
    assert compiled.embedding.embedder.eager is not None
    assert compiled.predict_proba(texts, batch_size=2) == pytest.approx(eager.predict_proba(texts), abs=1e-4)
    # the fine-tuned encoder too (loaded on first use where what ships does not use it)
    assert compiled.encoder_proba(texts, batch_size=2) == pytest.approx(eager.encoder_proba(texts), abs=1e-4)
    assert compiled.model is not eager.model
    # both really ran compiled, no fallback
    assert compiled.eager is not None and compiled.embedding.embedder.eager is not None


def test_the_fine_tuned_encoder_is_loaded_only_when_what_ships_uses_it(trained_classifier):
    from adapterlab.runs import AdapterInfo
    from adapterlab.tasks.classify.infer import Classifier

    texts = ["phone battery number 3", "warm jacket", "courier late"]
    info = AdapterInfo.read(trained_classifier)
    for weights in ({"embedding": 0.5, "tfidf": 0.5}, {"finetuned": 0.5, "tfidf": 0.5}):
        info.task_info["weights"] = weights
        classifier = Classifier.load(info)
        loaded_at_start = classifier._model is not None
        assert loaded_at_start == ("finetuned" in weights)
        probabilities = classifier.predict_proba(texts)
        assert (classifier._model is not None) == loaded_at_start  # predicting what ships loads nothing more
        parts = {part: classifier.part_proba(part, texts) for part in weights}
        expected = sum(w * parts[part] for part, w in weights.items())
        assert probabilities == pytest.approx(expected, abs=1e-6)
        assert classifier.encoder_proba(texts).shape == (3, len(classifier.labels))  # loads on demand
        assert classifier._model is not None


def test_a_failing_compile_falls_back_to_the_eager_model(trained_classifier, monkeypatch, capsys):
    import torch

    from adapterlab.tasks.classify.infer import Classifier

    def broken_compile(model, **kwargs):
        def run(**inputs):
            raise RuntimeError("no C++ compiler")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    texts = ["phone battery number 3", "courier late"]
    classifier, eager = Classifier.load(trained_classifier, compiled=True), Classifier.load(trained_classifier)
    assert classifier.predict(texts) == eager.predict(texts)
    # the fine-tuned encoder too, whether or not what ships uses it
    assert np.allclose(classifier.encoder_proba(texts), eager.encoder_proba(texts), atol=1e-6)
    assert classifier.eager is None  # switched back for good
    if classifier.embedding is not None:
        assert classifier.embedding.embedder.eager is None
    assert classifier.model.config._attn_implementation == "sdpa"  # compiling had switched it to eager attention
    assert "torch.compile failed (RuntimeError); predicting eagerly" in capsys.readouterr().out


def test_qlora_classifier_trains_in_4bit_and_predicts(classify_dict):
    import bitsandbytes as bnb

    from adapterlab.stages.train import train
    from adapterlab.tasks.classify.infer import Classifier
    from adapterlab.training.arguments import optimizer_name

    classify_dict["model"]["quantization"] = "4bit"
    classify_dict["train"]["epochs"] = 1
    recipe = recipe_from_dict(classify_dict)
    assert optimizer_name(recipe, cuda=True) == "paged_adamw_8bit"  # QLoRA's paged optimizer where it can page
    assert optimizer_name(recipe, cuda=False) == "adamw_torch"
    assert optimizer_name(recipe_from_dict({**classify_dict, "model": {"base": "x"}}), cuda=True) == "adamw_torch"
    named = recipe_from_dict({**classify_dict, "train": {**classify_dict["train"], "optimizer": "adamw_torch"}})
    assert named.model.quantization == "4bit" and optimizer_name(named, cuda=True) == "adamw_torch"  # as named

    result = train(recipe)
    assert result.summary["method"] == "qlora" and result.summary["best_checkpoint"]
    classifier = Classifier.load(result.run.root)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in classifier.model.modules())  # the base stays 4-bit
    heads = [m for name, m in classifier.model.named_modules() if name.endswith("classifier")]
    assert heads and not any(isinstance(m, bnb.nn.Linear4bit) for m in heads)  # the trained head is not quantised
    assert set(classifier.predict(["phone battery", "courier late"])) <= {
        "books",
        "clothing",
        "electronics",
        "no_product",
    }


def test_early_stopping_on_weighted_f1_keeps_the_best_epoch(classify_dict):
    from adapterlab.stages.train import train

    classify_dict["train"].update(epochs=8, early_stopping_patience=1, metric_for_best="weighted_f1")
    result = train(recipe_from_dict(classify_dict))
    per_epoch: dict[int, float] = {}  # the epoch-end evaluations (the final one, of the restored best, repeats a step)
    for r in read_jsonl(result.run.metrics):
        if "eval_weighted_f1" in r:
            per_epoch.setdefault(r["step"], r["eval_weighted_f1"])
    steps = sorted(per_epoch)
    steps_per_epoch = steps[0]
    best = max(steps, key=lambda step: per_epoch[step])  # the first of equal scores, as the Trainer keeps
    assert result.summary["best_checkpoint"].endswith(f"checkpoint-{best}")
    assert result.summary["val"]["weighted_f1"] == pytest.approx(per_epoch[best])  # the best weights restored
    # Stopped after one epoch without improvement, or ran all 8 epochs
    assert steps[-1] in (best + steps_per_epoch, 8 * steps_per_epoch)


def test_every_compiled_encoder_gets_room_for_its_graphs(monkeypatch):
    """Encoders of one architecture share dynamo's graph cache, and frozen weights make each one's graphs its own:
    at the default limit (8) a server's third compiled encoder ran its later shapes eagerly without a word."""
    import torch
    import torch._dynamo.config as dynamo
    from transformers import BertConfig, BertModel

    from adapterlab.tasks.classify import compiled

    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: model)
    monkeypatch.setattr(compiled, "_compiled_models", 0)
    config = BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8)
    before = dynamo.recompile_limit
    with dynamo.patch(recompile_limit=8):  # torch's own patching: pytest's monkeypatch deletes a config key on undo
        for count in range(1, 7):
            compiled.compile_frozen(BertModel(config))
            assert dynamo.recompile_limit >= 3 * count  # a text alone, a padded and an unpadded batch each
    assert dynamo.recompile_limit == before


def test_serve_compile_compiles_and_warms_each_classifier_before_the_first_request(trained_classifier, monkeypatch):
    import torch

    from adapterlab.serve.registry import Registry
    from adapterlab.serve.settings import settings_from

    rows: list[tuple[int, bool]] = []  # (rows, masked) of each batch the compiled encoders saw

    def counting_compile(model, **kwargs):
        def run(**inputs):
            rows.append((inputs["input_ids"].shape[0], inputs.get("attention_mask") is not None))
            return model(**inputs)

        return run

    monkeypatch.setattr(torch, "compile", counting_compile)
    assert settings_from({"compile": True}).compile and not settings_from({}).compile
    eager = Registry([f"reviews={trained_classifier}"])
    eager.load()
    assert eager.classify["reviews"].classifier.eager is None and rows == []
    compiled = Registry([f"reviews={trained_classifier}"], compile_classifiers=True)
    compiled.load()
    classifier = compiled.classify["reviews"].classifier
    assert classifier.embedding.embedder.eager is not None  # compiled, not fallen back
    assert (classifier.eager is not None) == (classifier.encoder_weight > 0)  # the fine-tuned one if it ships
    # Warmed up at load, before any request: a row alone, a padded pair and an unpadded pair (three graphs).
    assert {(1, False), (2, True), (2, False)} <= set(rows)
    texts = ["phone battery number 3", "courier late"]
    assert classifier.predict(texts) == eager.classify["reviews"].classifier.predict(texts)
