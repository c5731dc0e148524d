"""The shipped support-ticket recipe end to end on the embedded model, a few steps; and QLoRA on the CPU."""

import json

import pytest

from adapterlab.config import load_recipe
from adapterlab.pipeline import run

pytestmark = pytest.mark.integration

SMALL = ["train.max_steps=3", "train.batch_size=4", "train.eval_every=3", "train.save_every=3", "train.log_every=1"]
SMALL += ["data.max_tokens=256", "train.golden_prompts=1"]


def test_support_recipe_prepare_train_run_dir_complete(tmp_path):
    recipe = load_recipe("recipes/support-tickets.yaml", [*SMALL, f"output_dir={tmp_path}"])
    summary = run(recipe)
    root = tmp_path / "support-tickets"
    for name in ("recipe.resolved.yaml", "env.json", "data_report.json", "metrics.jsonl", "loss.png", "summary.json"):
        assert (root / name).is_file(), name
    assert (root / "adapter" / "adapter_model.safetensors").is_file()
    report = json.loads((root / "data_report.json").read_text())
    assert report["input_rows"] == 320
    assert report["kept"] + report["dropped_total"] == 320
    assert set(report["strata"]["test"]) == {"en", "de", "fr", "es", "ru"}
    assert summary["steps"] == 3
    assert summary["val_loss"] < summary["base_val_loss"]
    meta = json.loads((root / "adapter" / "adapterlab.json").read_text())
    assert meta["base_model"]["spec"] == "default" and meta["golden"][0]["greedy_32"]


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

    summary = run(recipe)
    assert summary["method"] == "qlora" and summary["steps"] == 2
    assert summary["val_loss"] is not None and summary["val_loss"] < summary["base_val_loss"] + 0.05
    config = json.loads((tmp_path / "support-tickets" / "adapter" / "adapterlab.json").read_text())
    assert config["model"]["quantization"] == "4bit"
