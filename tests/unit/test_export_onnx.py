"""adapterlab export --format onnx and predict --onnx on the tiny classifier: onnxruntime agrees with PyTorch, the
axes are dynamic, int8 is kept or refused by its F1 gate, predict --onnx writes what predict writes, and the
one-line errors."""

from __future__ import annotations

import csv
import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from adapterlab.cli import app
from adapterlab.errors import AdapterlabError, ModelError
from adapterlab.predict import predict
from adapterlab.stages.export import ExportError, export
from adapterlab.stages.export import onnx as onnx_export
from adapterlab.tasks.classify.infer import Classifier, ONNXClassifier

pytest.importorskip("onnxruntime")

TEXTS = ["books", "phone charger broke after a week, number 3", "ok", "a jacket", "novel about the sea number 12 " * 4]


@pytest.fixture(scope="module")
def exported(trained_classifier, tmp_path_factory) -> Path:
    """A copy of the tiny classifier run with an ONNX export (fp32 and int8), written where nothing unpickles."""
    import torch

    run = tmp_path_factory.mktemp("onnx") / "run"
    shutil.copytree(trained_classifier, run, ignore=shutil.ignore_patterns("export", "checkpoints"))
    with pytest.MonkeyPatch.context() as patch:
        for owner, name in ((torch, "load"), (pickle, "load"), (pickle, "loads")):
            patch.setattr(owner, name, lambda *a, **k: pytest.fail("the ONNX export unpickled something"))
        export(run, "onnx", quant=["int8"])
    return run


def test_onnxruntime_labels_the_test_texts_like_the_classifier(exported):
    import onnx

    folder = exported / "export" / "onnx"
    parity = json.loads((folder / "parity.json").read_text())
    assert parity["passed"] and parity["runtime"] == "onnxruntime" and parity["texts"] >= 5
    assert parity["labels_equal"] == parity["texts"]
    assert parity["max_abs_probability_diff"] <= parity["tolerance"]["max_abs_probability_diff"] == 1e-4
    assert parity["weighted_f1"]["onnx_fp32"] == parity["weighted_f1"]["pytorch_fp32"]
    for name in ("model.onnx", "tokenizer.json", "adapterlab-export.json", "README.md"):
        assert (folder / name).is_file(), name
    graph = onnx.load(str(folder / "model.onnx")).graph
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in graph.input}
    assert dims == {"input_ids": ["batch", "sequence"], "attention_mask": ["batch", "sequence"]}
    assert [o.name for o in graph.output] == ["logits"]
    meta = json.loads((folder / "adapterlab-export.json").read_text())
    assert meta["labels"] == Classifier.load(exported).labels and meta["clean"]["emoji"] is True
    assert meta["truncation"] == "head_tail" and meta["shipped"] in ("finetuned", "ensemble", "embedding", "tfidf")
    for part in ("tfidf", "embedding"):  # a part's files travel exactly when it is in what ships
        assert (folder / f"{part}.safetensors").is_file() == bool(meta[part]) == (part in meta["weights"])
    assert (folder / "embedder.onnx").is_file() == bool(meta["embedding"])


def test_dynamic_axes_take_batch_1_and_a_padded_batch_of_5(exported):
    torch_model = Classifier.load(exported, "fp32")
    onnx_model = ONNXClassifier.load(exported / "export" / "onnx")
    assert len({len(ids) for ids in onnx_model.encode(TEXTS)}) >= 4  # lengths differ: the batch of 5 is padded
    reference = torch_model.predict_proba(TEXTS)
    for batch_size in (1, 5):
        probs = onnx_model.predict_proba(TEXTS, batch_size=batch_size)
        assert np.abs(probs - reference).max() <= 1e-4
        assert (probs.argmax(axis=1) == reference.argmax(axis=1)).all()


def test_int8_is_kept_when_the_test_f1_holds(exported):
    folder = exported / "export" / "onnx"
    gate = json.loads((folder / "parity.json").read_text())["int8"]
    assert gate["kept"] and gate["f1_drop"] <= gate["max_f1_drop"] == 0.01
    assert 0 <= gate["label_agreement_with_fp32"] <= 1 and gate["texts"] >= 5
    assert (folder / "model.int8.onnx").stat().st_size < (folder / "model.onnx").stat().st_size
    probs = ONNXClassifier.load(folder, "model.int8.onnx").predict_proba(TEXTS)
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-5)


def test_int8_is_refused_when_the_test_f1_falls(exported, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    shutil.copytree(exported, run, ignore=shutil.ignore_patterns("export"))
    monkeypatch.setattr(onnx_export, "INT8_MAX_F1_DROP", -1.0)  # no int8 model can pass: F1 would have to rise by 1
    result = export(run, "onnx", quant=["int8"])
    gate = result.parity["int8"]
    assert result.parity["passed"] and not gate["kept"]  # the fp32 export stands
    assert not list(result.folder.glob("model.int8.onnx*")) and (result.folder / "model.onnx").is_file()
    assert {"weighted_f1_fp32", "weighted_f1_int8", "f1_drop", "label_agreement_with_fp32"} <= gate.keys()
    assert "int8 refused, model.int8.onnx not written" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize(
    ("fp32", "int8", "kept"),
    [([0, 1, 2, 3] * 25, [0, 1, 2, 3] * 25, True), ([0, 1, 2, 3] * 25, [0, 1, 2, 3] * 24 + [1, 1, 1, 1], False)],
)
def test_the_int8_gate_compares_weighted_f1(fp32, int8, kept):
    truth = [0, 1, 2, 3] * 25
    gate = onnx_export.int8_gate(truth, np.eye(4)[fp32], np.eye(4)[int8])
    assert gate["kept"] is kept and gate["weighted_f1_fp32"] == 1.0
    assert gate["label_agreement_with_fp32"] == (1.0 if kept else 0.97)


def test_predict_onnx_writes_what_torch_predict_writes(exported, tmp_path):
    texts = ["phone charger number 2 https://x.example/1", "", "😍 😍", TEXTS[4], "books &amp; <br>"]
    rows = [{"id": key, "text": text} for key, text in zip("abcde", texts, strict=True)]
    source = tmp_path / "in.csv"
    with source.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "text"])
        writer.writeheader()
        writer.writerows(rows)
    torch_run = predict(exported, source, tmp_path / "torch.csv", precision="fp32", proba=True)
    result = CliRunner().invoke(app, ["predict", str(exported), str(source), "-o", str(tmp_path / "onnx.csv"),
                                      "--onnx", "--proba"])  # fmt: skip
    assert result.exit_code == 0, result.output
    torch_rows, onnx_rows = (list(csv.DictReader((tmp_path / f).open())) for f in ("torch.csv", "onnx.csv"))
    assert [r["id"] for r in onnx_rows] == ["a", "b", "c", "d", "e"]
    assert [r["label"] for r in onnx_rows] == [r["label"] for r in torch_rows]
    assert onnx_rows[1]["label"] == onnx_rows[2]["label"] == ""  # empty, and empty after cleaning
    for ours, theirs in zip(onnx_rows, torch_rows, strict=True):
        diffs = [abs(float(ours[k] or 0) - float(theirs[k] or 0)) for k in ours if k.startswith("p_")]
        assert max(diffs) <= 1e-4
    onnx_report = json.loads((tmp_path / "onnx.report.json").read_text())
    assert onnx_report["skipped"] == torch_run.report["skipped"] == {"empty_text": 2}


def test_the_readme_recipe_classifies_without_pytorch(exported):
    folder = exported / "export" / "onnx"
    readme = (folder / "README.md").read_text()
    code = readme.split("```python\n")[1].split("```")[0]
    code += "import sys\nassert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
    # Texts past max_tokens (64 here) are cut as in training: head and tail, the special tokens kept.
    long_texts = [f"{n} stars: " + "a jacket, novel about the sea, charger broke " * 12 + "books" for n in range(4)]
    code += f"print(token_ids({long_texts[0]!r}))\nfor text in {long_texts!r}:\n    print(label(text))\n"
    done = subprocess.run([sys.executable, "-c", code], cwd=folder, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    onnx_model = ONNXClassifier.load(folder)
    texts = [onnx_model.clean(t) for t in ["Great phone, the battery lasts two days", *long_texts]]
    printed = done.stdout.strip().splitlines()
    assert printed[1] == str(onnx_model.encode(texts[1:2])[0]) and len(onnx_model.encode(texts[1:2])[0]) == 64
    # The README runs the graph alone: the encoder's part of what ships (TF-IDF may be mixed in, see the meta).
    expected = [onnx_model.labels[int(p.argmax())] for p in onnx_model.encoder_proba(texts)]
    assert [printed[0], *printed[2:]] == expected


def test_predict_onnx_without_an_export_or_onnxruntime_is_one_line(exported, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(exported, run)
    shutil.rmtree(run / "export")
    source = tmp_path / "in.csv"
    source.write_text("id,text\n1,books\n")
    result = CliRunner().invoke(app, ["predict", str(run), str(source), "-o", str(tmp_path / "o.csv"), "--onnx"])
    assert result.exit_code == ModelError.exit_code
    assert f"no ONNX export of this classifier yet; run `adapterlab export {run} --format onnx` first" in " ".join(
        result.output.split()
    )
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    with pytest.raises(ModelError, match=r"onnxruntime is not installed; pip install 'adapterlab\[export\]'"):
        ONNXClassifier.load(exported / "export" / "onnx")


def test_predict_onnx_refuses_a_stale_or_failed_export(exported, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(exported, run)
    meta_file = run / "export" / "onnx" / "adapterlab-export.json"
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps(meta | {"adapter_weights": "0" * 64}))  # as if the run was trained again since
    with pytest.raises(ModelError, match="exported from an earlier version of this adapter"):
        predict(run, "unused.csv", tmp_path / "o.csv", onnx=True)
    parity_file = run / "export" / "onnx" / "parity.json"
    parity_file.write_text(json.dumps(json.loads(parity_file.read_text()) | {"passed": False}))
    with pytest.raises(ModelError, match="did not pass its parity check"):
        predict(run, "unused.csv", tmp_path / "o.csv", onnx=True)


def test_a_wrong_graph_fails_the_onnxruntime_parity_check(exported, tmp_path, monkeypatch):
    import torch

    from adapterlab.tasks.classify import ClassifyTask
    from adapterlab.tasks.classify.infer import merged_model

    def broken(self, info, precision):
        model, tokenizer = merged_model(info, precision)
        with torch.no_grad():
            model.classifier.bias.add_(torch.linspace(-3, 3, len(model.classifier.bias)))  # an export gone wrong
        return model, tokenizer

    run = tmp_path / "run"
    shutil.copytree(exported, run, ignore=shutil.ignore_patterns("export"))
    monkeypatch.setattr(ClassifyTask, "merged_model", broken)
    result = CliRunner().invoke(app, ["export", str(run), "--format", "onnx"])
    assert result.exit_code == ExportError.exit_code
    assert "onnx export failed its parity check: labels equal on" in " ".join(result.output.split())
    assert json.loads((run / "export" / "onnx" / "parity.json").read_text())["passed"] is False


@pytest.mark.parametrize(
    ("options", "message"),
    [({"dtype": "bf16"}, "--dtype bf16: an ONNX export is fp32"), ({"quant": ["q8_0"]}, "--quant q8_0: int8 only")],
)
def test_onnx_options_that_do_not_apply_are_one_line_errors(exported, options, message):
    with pytest.raises(ExportError, match=message) as err:
        export(exported, "onnx", **options)
    assert "\n" not in str(err.value)


def test_onnx_options_a_chat_adapter_or_compile_cannot_take(exported, trained_run, monkeypatch):
    with pytest.raises(AdapterlabError, match="--onnx: a 'chat' adapter has no ONNX export"):
        predict(trained_run, "unused.csv", onnx=True)
    with pytest.raises(ModelError, match="--compile compiles the PyTorch model; leave it out with --onnx"):
        predict(exported, "unused.csv", onnx=True, compiled=True)
    monkeypatch.setattr(onnx_export, "_importable", lambda name: name != "onnxscript")
    with pytest.raises(ExportError, match=r"--format onnx needs onnxscript; pip install 'adapterlab\[export\]'"):
        export(exported, "onnx")


def test_a_classifier_that_ships_the_embedding_part_exports_its_tuned_encoder_too(classify_dict, tmp_path):
    """The embedding part's encoder, tuned on pairs of training texts and saved in the adapter, travels as a second
    graph; predict --onnx mixes the same parts as predict."""
    import onnx
    import torch
    from safetensors.torch import load_file

    from adapterlab.registry import recipe_from_dict
    from adapterlab.stages.train import train

    classify_dict["train"]["epochs"] = 1
    classify_dict["select"] = {"candidates": ["embedding"]}
    result = train(recipe_from_dict(classify_dict))
    run = result.run.root
    tuned = load_file(str(run / "adapter" / "embedding-encoder" / "model.safetensors"))
    base = load_file(str(Path(classify_dict["model"]["base"]) / "model.safetensors"))
    assert set(tuned) == set(base) and any(not torch.equal(tuned[k], base[k]) for k in base)  # tuned, a copy
    stage = result.summary["selection"]["contrastive"]
    assert stage["pairs"] == 2 * 4 * result.summary["train_examples"] and stage["seconds"] > 0
    assert json.loads((run / "adapter" / "embedding.json").read_text())["encoder"] == "embedding-encoder"
    export(run, "onnx")
    folder = run / "export" / "onnx"
    parity = json.loads((folder / "parity.json").read_text())
    assert parity["passed"] and parity["embedding_part"]["passed"] and parity["shipped"] == "embedding"
    assert parity["weighted_f1"]["onnx_fp32"] == parity["weighted_f1"]["pytorch_fp32"]
    assert [o.name for o in onnx.load(str(folder / "embedder.onnx")).graph.output] == ["last_hidden_state"]
    meta = json.loads((folder / "adapterlab-export.json").read_text())
    assert meta["embedding"] and meta["weights"] == {"embedding": 1.0}
    texts = ["a phone charger that broke", TEXTS[4] * 8, "ok"]  # the second is read in several pieces
    from adapterlab.runs import AdapterInfo

    torch_side, onnx_side = Classifier.load(run, "fp32"), ONNXClassifier.for_run(AdapterInfo.read(run))
    assert np.allclose(torch_side.predict_proba(texts), onnx_side.predict_proba(texts), atol=1e-4)
