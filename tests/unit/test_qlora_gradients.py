"""QLoRA on the CPU: a validation pass must not change the gradients of the next training step."""

import pytest
import torch

from adapterlab.config import ModelConfig
from adapterlab.models import load_causal_lm


def lora_grads(model_dir, validate_first: bool) -> dict[str, torch.Tensor]:
    from peft import LoraConfig, get_peft_model

    model = load_causal_lm(str(model_dir), ModelConfig(quantization="4bit"), "bf16", training=True)
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=2, target_modules="all-linear", init_lora_weights=False))
    ids = torch.arange(3, 35).reshape(2, 16)
    if validate_first:  # what the trainer does before training (base loss) and at every eval step
        model.eval()
        with torch.no_grad():
            model(input_ids=ids)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(input_ids=ids, labels=ids).loss.backward()
    return {n: p.grad.float().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_validation_pass_keeps_4bit_layers_differentiable(tmp_path):
    pytest.importorskip("bitsandbytes")
    from tiny import build_model_dir

    model_dir = build_model_dir(tmp_path / "m", hidden=64)
    fresh, after_eval = lora_grads(model_dir, False), lora_grads(model_dir, True)
    assert fresh.keys() == after_eval.keys()
    first_layer = [k for k in fresh if "layers.0." in k and "lora_A" in k]
    assert first_layer and all(fresh[k].abs().max() > 0 for k in first_layer)
    for name in fresh:
        assert torch.allclose(fresh[name], after_eval[name], atol=1e-6), name
