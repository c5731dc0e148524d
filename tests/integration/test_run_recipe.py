"""The shipped support-ticket recipe end to end on the embedded model, a few steps; QLoRA on the CPU; and the same
run exported as GGUF and run by llama.cpp itself: the f16 and q8_0 files and the LoRA GGUF on the base GGUF pass the
parity check, and llama.cpp tokenises the prompts as training did. (One file: under pytest-xdist's --dist loadfile
the shared run trains once.)"""

import json

import pytest

from adapterlab.registry import load_recipe
from adapterlab.runs import AdapterInfo
from adapterlab.stages.export import export, llamacpp
from adapterlab.stages.pipeline import run

pytestmark = pytest.mark.integration

SMALL = ["train.max_steps=2", "train.batch_size=4", "train.eval_every=2", "train.save_every=2", "train.log_every=1"]
SMALL += ["data.max_tokens=256", "train.golden_prompts=1"]
SMALL += ["split.train=0.85", "split.val=0.05"]  # CI time: validation loss on 16 rows, not 32


def test_support_recipe_prepare_train_eval_run_dir_complete(support_run):
    root, result = support_run
    summary, report = result["summary"], result["eval"]
    for name in ("recipe.resolved.yaml", "env.json", "data_report.json", "metrics.jsonl", "loss.png", "summary.json"):
        assert (root / name).is_file(), name
    assert (root / "adapter" / "adapter_model.safetensors").is_file()
    data = json.loads((root / "data_report.json").read_text())
    assert data["input_rows"] == 320
    assert data["kept"] + data["dropped_total"] == 320
    assert set(data["strata"]["test"]) == {"en", "de", "fr", "es", "ru"}
    assert summary["steps"] == 3
    assert summary["val_loss"] < summary["base_val_loss"]
    meta = AdapterInfo.read(root)
    assert meta.base_model.spec == "default" and meta.task_info["golden"][0]["greedy_32"]

    for name in ("predictions.jsonl", "report.json", "report.md", "report.html", "comparison.png"):
        assert (root / "eval" / name).is_file(), name
    expected = {"perplexity", "rouge1", "rouge2", "rougeL", "rougeLsum", "bleu", "chrf", "bertscore", "language"}
    expected |= {"clarify", "length"}
    assert set(report["metrics"]) == expected, report["not_computed"]
    assert report["not_computed"] == {}
    for name, entry in report["metrics"].items():
        assert entry["base"] is not None and entry["adapter"] is not None, name
        low, high = entry["ci95"]
        assert low <= entry["delta"] <= high, name
    assert report["n_examples"] == 10 and report["decoding"]["max_new_tokens"] == 48
    assert report["versions"]["sacrebleu"] and report["versions"]["transformers"]
    predictions = [json.loads(line) for line in (root / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 10
    assert all(p["base"]["text"] != p["adapter"]["text"] for p in predictions[:3])
    assert set(predictions[0]["scores"]) >= {"rougeL", "bleu", "bertscore", "perplexity"}
    html = (root / "eval" / "report.html").read_text()
    assert "data:image/png;base64," in html and "ROUGE-L F1" in html


def test_qlora_trains_on_cpu_in_4bit(tmp_path):
    import bitsandbytes as bnb
    import torch

    from adapterlab.models import load_causal_lm, resolve_base

    recipe = load_recipe(
        "recipes/support-tickets.yaml",
        [*SMALL, f"output_dir={tmp_path}", "model.quantization=4bit", "train.max_steps=2"],
    )
    model = load_causal_lm(resolve_base("default"), recipe.model, "bf16")
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 30 * 7  # every attention and MLP projection
    assert layers[0].weight.quant_type == "nf4" and layers[0].weight.quant_state.nested  # double quantisation
    assert layers[0].weight.device == torch.device("cpu")
    del model

    summary = run(recipe, evaluate_after=False)["summary"]
    assert summary["method"] == "qlora" and summary["steps"] == 2
    assert summary["val_loss"] is not None and summary["val_loss"] < summary["base_val_loss"] + 0.05
    config = json.loads((tmp_path / "support-tickets" / "adapter" / "adapterlab.json").read_text())
    assert config["model"]["quantization"] == "4bit"


def test_smollm2_adapter_as_gguf_matches_the_adapter_in_llama_cpp(support_run):
    import gguf

    if llamacpp.missing():
        pytest.skip(llamacpp.missing())
    root, _ = support_run
    result = export(root, "gguf", dtype="fp16", quant=["q8_0"], cases=1)

    files = result.parity["files"]
    pair = "base-f16.gguf + adapter-lora-f16.gguf"
    assert set(files) == {"model-f16.gguf", "model-q8_0.gguf", pair}
    for name, figures in files.items():
        assert figures["passed"], (name, figures)
        assert figures["prompt_tokens_equal"] == figures["cases"] == 2, name  # 1 golden + 1 test prompt
        assert figures["clear_margin_tokens"] >= 20 and figures["top1_agreement_clear"] == 1.0, name
    assert files["model-f16.gguf"]["mean_abs_logprob_diff"] < 0.01 and files[pair]["mean_abs_logprob_diff"] < 0.01
    # A few steps move the model less than 8-bit weights do: parity.json says so rather than hiding it.
    assert result.parity["adapter_effect"]["mean_abs_logprob_diff"] > files["model-f16.gguf"]["mean_abs_logprob_diff"]
    assert all(text.strip() for case in result.parity["cases"] for text in case["llama_cpp_greedy"].values())

    reader = gguf.GGUFReader(result.folder / "model-q8_0.gguf")
    assert reader.fields["tokenizer.ggml.pre"].contents() == "smollm"  # llama.cpp knows SmolLM2's tokenizer
    assert "<|im_start|>" in reader.fields["tokenizer.chat_template"].contents()
    modelfile = (result.folder / "Modelfile").read_text()
    system_prompt = load_recipe("recipes/support-tickets.yaml").data.system_prompt
    assert f'SYSTEM """{system_prompt}"""' in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile
    assert json.loads((result.folder / "parity.json").read_text())["passed"] is True
