"""adapterlab cv: stratified, group-aware, leak-free folds; one ordinary run per fold; the fold models averaged and
evaluated against the single model; an interrupted cross-validation goes on where it stopped."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from adapterlab.data.split import SplitKey, split_into_folds
from adapterlab.errors import AdapterlabError, RecipeError
from adapterlab.registry import recipe_from_dict
from adapterlab.runs import AdapterInfo, read_json, read_jsonl


def test_folds_are_stratified_group_aware_and_cover_every_row_once():
    keys = [SplitKey(id=str(i), group=f"g{i // 3}" if i < 30 else None, stratum="a" if i % 4 else "b")
            for i in range(60)]  # fmt: skip
    folds = split_into_folds(keys, 5, seed=7)
    assert sorted(Counter(folds)) == [0, 1, 2, 3, 4] and len(folds) == 60
    for group in {k.group for k in keys if k.group}:  # a group never straddles folds
        assert len({f for k, f in zip(keys, folds, strict=True) if k.group == group}) == 1
    sizes = Counter(folds)
    assert max(sizes.values()) - min(sizes.values()) <= 3  # groups of 3 make the sizes approximate
    b_per_fold = Counter(f for k, f in zip(keys, folds, strict=True) if k.stratum == "b")
    assert len(b_per_fold) == 5  # every stratum spread over every fold
    assert split_into_folds(keys, 5, seed=7) == folds and split_into_folds(keys, 5, seed=8) != folds


def test_cross_validation_trains_folds_averages_them_and_resumes(classify_dict, tmp_path):
    from adapterlab.predict import predict
    from adapterlab.registry import as_recipe
    from adapterlab.runs import RunDir
    from adapterlab.stages.crossval import cross_validate, evaluated_with
    from adapterlab.stages.export import export
    from adapterlab.tasks.classify.infer import Classifier, ClassifierEnsemble

    classify_dict["train"]["epochs"] = 1
    classify_dict["select"] = {"candidates": ["finetuned", "tfidf"]}
    recipe = recipe_from_dict(classify_dict)
    report = cross_validate(recipe, folds=3)
    data = report.data
    runs = tmp_path / "runs"
    single = runs / "reviews"
    assert [s["run"] for s in data["per_fold"]] == [str(runs / f"reviews-fold{k}") for k in (1, 2, 3)]
    values = [s["value"] for s in data["per_fold"]]
    assert data["metric"] == "weighted_f1" and data["mean"] == pytest.approx(np.mean(values))
    assert data["stdev"] == pytest.approx(np.std(values, ddof=1)) and data["folds"] == 3

    # Leak-free: the folds' validation rows partition the single run's training + validation rows, each fold
    # trains on the rest, and every fold is tested on the single run's own test split.
    pooled = {r["id"] for s in ("train", "val") for r in read_jsonl(single / "data" / f"{s}.jsonl")}
    test_ids = {r["id"] for r in read_jsonl(single / "data" / "test.jsonl")}
    held = []
    for k in (1, 2, 3):
        fold = runs / f"reviews-fold{k}" / "data"
        val, train = ({r["id"] for r in read_jsonl(fold / f"{s}.jsonl")} for s in ("val", "train"))
        assert {r["id"] for r in read_jsonl(fold / "test.jsonl")} == test_ids
        assert val | train == pooled and not val & train and not (val | train) & test_ids
        held.append(val)
    assert set().union(*held) == pooled and sum(map(len, held)) == len(pooled)

    # The ensemble: what predict and the server load, the members' probabilities averaged, evaluated against the
    # single model with an interval.
    cv = runs / "reviews-cv"
    ensemble = Classifier.load(cv)
    assert isinstance(ensemble, ClassifierEnsemble) and len(ensemble.members) == 3
    texts = [r["text"] for r in read_jsonl(cv / "data" / "test.jsonl")]
    members = [Classifier.load(runs / f"reviews-fold{k}") for k in (1, 2, 3)]
    assert np.allclose(ensemble.predict_proba(texts), np.mean([m.predict_proba(texts) for m in members], axis=0),
                       atol=1e-6)  # fmt: skip
    evaluation = read_json(cv / "eval" / "report.json")
    versus = evaluation["ensemble_vs_single"]["weighted_f1"]
    assert versus["single"] == pytest.approx(read_json(single / "eval" / "report.json")["systems"]["adapter"]
                                             ["weighted_f1"])  # fmt: skip
    assert "single model" in evaluation["ensemble_vs_single"]["line"] and data["ensemble"]["ensemble_vs_single"]
    assert json.loads((cv / "report.json").read_text())["per_fold"] == data["per_fold"]
    out = predict(cv, classify_dict["data"]["path"], tmp_path / "labels.csv")
    assert out.report["predicted"] > 0
    with pytest.raises(AdapterlabError, match="no single model to export"):
        export(cv, "onnx")

    # Run again: the single run and the folds already evaluated on the same ids are kept, not retrained.
    stamps = {k: (runs / f"reviews-fold{k}" / "adapter" / "adapterlab.json").stat().st_mtime_ns for k in (1, 2, 3)}
    again = cross_validate(recipe, folds=3).data
    assert again["per_fold"] == data["per_fold"]
    assert stamps == {k: (runs / f"reviews-fold{k}" / "adapter" / "adapterlab.json").stat().st_mtime_ns
                      for k in (1, 2, 3)}  # fmt: skip
    # ... but not when the recipe changed: a fold trained from another recipe counts as not done.
    ids_file = (runs / "reviews-cv" / "folds" / "fold-1.splits.json").resolve()
    fold_recipe = as_recipe(recipe, ["name=reviews-fold1", f"split.from_ids={ids_file}", "export=[]"])
    assert evaluated_with(RunDir(runs / "reviews-fold1"), fold_recipe)
    assert not evaluated_with(RunDir(runs / "reviews-fold1"), as_recipe(fold_recipe, ["train.learning_rate=0.004"]))
    assert AdapterInfo.read(cv).task_info["members"] == ["../../reviews-fold1/adapter", "../../reviews-fold2/adapter",
                                                         "../../reviews-fold3/adapter"]  # fmt: skip


def test_too_many_folds_for_the_rows_is_one_line(classify_dict):
    from adapterlab.stages.crossval import cross_validate

    with pytest.raises(RecipeError, match="--folds 1"):
        cross_validate(recipe_from_dict(classify_dict), folds=1)
