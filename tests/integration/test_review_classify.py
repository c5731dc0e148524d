"""The shipped review-classification recipe on the embedded MiniLM encoder, end to end, and predict; the same run
exported to ONNX: onnxruntime agrees with PyTorch on the test split, int8 is gated on its test F1, and predict --onnx
labels the sample file as predict does. (One file: under pytest-xdist's --dist loadfile the shared run trains once.)"""

import csv
import json

import pytest

from adapterlab.stages.export import export

pytestmark = pytest.mark.integration


def test_review_classifier_beats_the_majority_baseline_and_writes_a_submission(review_run, tmp_path):
    from adapterlab.predict import predict

    root, result = review_run
    report = result["eval"]
    adapter, majority = report["systems"]["adapter"], report["systems"]["majority"]
    assert adapter["weighted_f1"] > majority["weighted_f1"] + 0.2
    data = json.loads((root / "data_report.json").read_text())
    assert data["imbalance_ratio"] >= 10 or max(data["classes"]["train"].values()) >= 10 * min(
        data["classes"]["train"].values()
    )
    assert "no_product" in report["labels"] and len(report["labels"]) == 11
    assert isinstance(data["max_tokens"], int) and 64 <= data["max_tokens"] <= 128  # data.max_tokens: auto

    # What ships was chosen on validation among the candidates, each one's score recorded (issue 17).
    summary = json.loads((root / "summary.json").read_text())
    selection = summary["selection"]
    assert set(selection["candidates"]) == {
        "finetuned", "embedding", "tfidf", "ensemble finetuned+embedding+tfidf", "ensemble finetuned+embedding",
        "ensemble finetuned+tfidf", "ensemble embedding+tfidf",
    }  # fmt: skip
    scores = selection["candidates"]
    # The encoder's validation score is the trainer's own validation of the restored best checkpoint.
    assert scores["finetuned"] == pytest.approx(summary["val"]["weighted_f1"], abs=0.03)
    assert report["shipped"] == selection["chosen"]
    weights = selection["weights"]
    shipped = selection["chosen"] if selection["chosen"] != "ensemble" else "ensemble " + "+".join(weights)
    assert scores[shipped] >= max(scores.values()) - 0.02  # select.tolerance
    for part in ("tfidf", "embedding"):
        assert (root / "adapter" / f"{part}.safetensors").is_file() == (part in weights)

    out = predict(root, "examples/data/reviews_unlabeled.csv", tmp_path / "submission.csv")
    with out.output.open() as handle:
        rows = list(csv.DictReader(handle))
    with open("examples/data/reviews_unlabeled.csv", newline="") as handle:
        expected = [r["id"] for r in csv.DictReader(handle)]
    assert [r["id"] for r in rows] == expected  # one line per input row, in order
    assert out.report["empty_text"] >= 1  # the file carries deliberately empty rows
    assert sum(1 for r in rows if r["label"]) == out.report["predicted"]


def test_review_classifier_exports_to_onnx_with_parity_and_an_int8_gate(review_run, tmp_path):
    pytest.importorskip("onnxruntime")
    from adapterlab.predict import predict

    run, _ = review_run
    result = export(run, "onnx", quant=["int8"])

    parity = result.parity
    assert parity["passed"] and parity["texts"] >= 90 and parity["labels_equal"] == parity["texts"]
    assert parity["max_abs_probability_diff"] <= 1e-4
    gate = parity["int8"]
    assert (result.folder / "model.int8.onnx").is_file() is gate["kept"] is (gate["f1_drop"] <= 0.01)
    assert gate["label_agreement_with_fp32"] >= 0.8  # int8 per channel stays close to fp32 on MiniLM
    written = json.loads((result.folder / "parity.json").read_text())
    assert written["int8"]["weighted_f1_fp32"] == pytest.approx(written["weighted_f1"]["onnx_fp32"])

    sample = "examples/data/reviews_unlabeled.csv"
    ours = predict(run, sample, tmp_path / "torch.csv", precision="fp32")
    onnx = predict(run, sample, tmp_path / "onnx.csv", onnx=True)
    rows = [list(csv.DictReader(path.open())) for path in (ours.output, onnx.output)]
    assert rows[0] == rows[1]  # same ids, same labels, same empty rows
    assert onnx.report["empty_text"] == ours.report["empty_text"] >= 1
