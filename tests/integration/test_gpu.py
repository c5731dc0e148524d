"""CUDA paths: the same code with another device (skipped without a GPU)."""

import pytest

from adapterlab.registry import load_recipe
from adapterlab.stages.pipeline import run

pytestmark = [pytest.mark.gpu, pytest.mark.integration]

SMALL = ["train.max_steps=4", "train.eval_every=4", "train.save_every=4", "data.max_tokens=384"]


@pytest.mark.parametrize("quantization", ["none", "4bit"])
def test_bf16_lora_and_qlora_on_cuda(tmp_path, quantization):
    import torch

    recipe = load_recipe(
        "recipes/support-tickets.yaml", [*SMALL, f"output_dir={tmp_path}", f"model.quantization={quantization}"]
    )
    summary = run(recipe, evaluate_after=False)["summary"]
    assert summary["device"] == "cuda"
    assert summary["precision"] == ("bf16" if torch.cuda.is_bf16_supported() else "fp32")
    assert summary["val_loss"] < summary["base_val_loss"]
