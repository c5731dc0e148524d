"""The review classifier (embedded MiniLM, 11 classes) exported to ONNX: onnxruntime agrees with PyTorch on the
test split, int8 is gated on its test F1, and predict --onnx labels the sample file as predict does."""

import csv
import json

import pytest

from adapterlab.stages.export import export

pytestmark = pytest.mark.integration


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
