"""adapterlab export --format merged: merge parity for LoRA, DoRA and QLoRA, a model that needs no PEFT, a failed
parity that exits non-zero, and one-line errors for what cannot be exported."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from adapterlab.cli import app
from adapterlab.errors import AdapterlabError, ModelError
from adapterlab.registry import recipe_from_dict
from adapterlab.runs import AdapterInfo
from adapterlab.stages.export import ExportError, export
from adapterlab.stages.train import train


def test_merged_chat_adapter_matches_the_adapter_and_carries_its_stop_tokens(trained_run):
    result = export(trained_run, "merged", dtype="fp32", cases=4)
    folder = trained_run / "export" / "merged"
    assert result.folder == folder and result.parity["passed"] and result.parity["runtime"] == "transformers"
    assert result.parity["max_abs_logprob_diff"] <= 1e-3 and result.parity["tokens"] > 0
    for name in ("model.safetensors", "config.json", "tokenizer.json", "generation_config.json", "parity.json",
                 "README.md", "adapterlab-export.json"):  # fmt: skip
        assert (folder / name).is_file(), name
    stops = AdapterInfo.read(trained_run).task_info["stop"]["token_ids"]
    eos = json.loads((folder / "generation_config.json").read_text())["eos_token_id"]
    assert sorted(eos if isinstance(eos, list) else [eos]) == sorted(stops)
    assert json.loads((folder / "parity.json").read_text())["passed"] is True
    template = folder / "chat_template.jinja"
    assert template.is_file() or "chat_template" in (folder / "tokenizer_config.json").read_text()


def test_the_merged_model_loads_without_peft(trained_run):
    folder = export(trained_run, "merged", dtype="fp32", cases=2).folder
    code = (
        "import sys\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(folder)!r})\n"
        f"t = AutoTokenizer.from_pretrained({str(folder)!r})\n"
        "ids = t.apply_chat_template([{'role': 'user', 'content': 'VPN'}], add_generation_prompt=True,\n"
        "                            return_tensors='pt', return_dict=True)\n"
        "m.generate(**ids, max_new_tokens=2)\n"
        "assert 'peft' not in sys.modules, 'peft was imported'\n"
    )  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("method", ["dora", "qlora"])
def test_dora_and_qlora_merge_into_full_precision_weights(recipe_dict, method):
    overrides = ["lora.dora=true"] if method == "dora" else ["model.quantization=4bit"]
    overrides += ["train.max_steps=2", "train.golden_prompts=1"]
    recipe = recipe_from_dict({**recipe_dict, "name": method}, overrides)
    run = train(recipe).run.root
    result = export(run, "merged", dtype="fp32", cases=2)
    assert result.parity["passed"], result.parity["summary"]
    from safetensors import safe_open

    with safe_open(str(result.folder / "model.safetensors"), "pt") as weights:  # plain weights, no 4-bit state
        names = list(weights.keys())
        assert names and not [k for k in names if "lora" in k or "quant" in k or "absmax" in k]


def test_merged_classifier_keeps_its_labels_and_probabilities(trained_classifier):
    from transformers import AutoModelForSequenceClassification

    result = export(trained_classifier, "merged", dtype="fp32")
    assert result.parity["passed"] and result.parity["labels_equal"] == result.parity["texts"]
    model = AutoModelForSequenceClassification.from_pretrained(str(result.folder))
    labels = AdapterInfo.read(trained_classifier).task_info["labels"]
    assert [model.config.id2label[i] for i in range(len(labels))] == labels
    meta = json.loads((result.folder / "adapterlab-export.json").read_text())
    assert meta["clean"]["urls"] is True and meta["labels"] == labels


def test_a_wrong_export_fails_its_parity_check_with_a_non_zero_exit(trained_run, monkeypatch):
    import torch

    from adapterlab.generative.infer import merged_model
    from adapterlab.tasks.chat import ChatTask

    def broken(self, info, precision):
        model, tokenizer = merged_model(info, precision)
        with torch.no_grad():
            model.model.layers[0].mlp.down_proj.weight.mul_(1.5)  # a merge that went wrong
        return model, tokenizer

    monkeypatch.setattr(ChatTask, "merged_model", broken)
    result = CliRunner().invoke(app, ["export", str(trained_run), "--format", "merged", "--dtype", "fp32"])
    assert result.exit_code == ExportError.exit_code
    assert "failed its parity check: max |d logprob|" in " ".join(result.output.split())
    assert json.loads((trained_run / "export" / "merged" / "parity.json").read_text())["passed"] is False


@pytest.mark.parametrize(
    ("fmt", "message"),
    [("onnx", "a 'chat' adapter exports to merged, gguf"), ("tflite", "unknown export format 'tflite'")],
)
def test_formats_that_do_not_apply_are_one_line_errors(trained_run, fmt, message):
    with pytest.raises(AdapterlabError, match=message) as err:
        export(trained_run, fmt)
    assert "\n" not in str(err.value)


def test_a_classifier_has_no_gguf_and_a_folder_without_an_adapter_is_refused(trained_classifier, tmp_path):
    with pytest.raises(ExportError, match="a 'classify' adapter exports to merged, onnx"):
        export(trained_classifier, "gguf")
    with pytest.raises(ModelError, match="no trained adapter here"):
        export(tmp_path, "merged")


def test_export_refuses_a_base_that_is_not_the_one_trained_on(trained_run, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy, ignore=shutil.ignore_patterns("export", "checkpoints"))
    info_file = copy / "adapter" / "adapterlab.json"
    info = json.loads(info_file.read_text())
    info["base_model"]["weights"] = "0" * 64
    info_file.write_text(json.dumps(info))
    with pytest.raises(ModelError, match="is not the one this adapter was trained on"):
        export(copy, "merged")


def test_run_exports_the_recipes_formats_as_its_last_stage(recipe_dict):
    from adapterlab.stages.pipeline import run

    fast = ["train.max_steps=2", "eval.metrics=[perplexity,rouge]"]  # the tiny encoder cannot run BERTScore
    recipe = recipe_from_dict({**recipe_dict, "name": "shipped", "export": ["merged"]}, fast)
    done = run(recipe, evaluate_after=False)  # run --no-eval still ships: an export checks itself
    folder = recipe.run_dir / "export" / "merged"
    assert done["eval"] is None and not (recipe.run_dir / "eval" / "report.json").exists()
    assert done["exports"]["merged"]["passed"] and (folder / "model.safetensors").is_file()
    assert json.loads((folder / "parity.json").read_text())["passed"] is True


def test_run_refuses_a_format_the_task_cannot_export_before_training(recipe_dict):
    from adapterlab.stages.pipeline import run

    recipe = recipe_from_dict({**recipe_dict, "name": "unshippable", "export": ["onnx"]}, ["train.max_steps=2"])
    with pytest.raises(AdapterlabError, match="export: a 'chat' adapter exports to merged, gguf, not onnx"):
        run(recipe)
    assert not (recipe.run_dir / "adapter").exists()  # nothing was trained
