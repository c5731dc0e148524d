"""Padding-free training: per-sequence attention over a packed row gives the padded batch's loss and gradients."""

import pytest
import torch
from transformers import AutoModelForCausalLM, GemmaConfig, LlamaConfig, MistralConfig
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from adapterlab.generative.train import use_padding_free
from adapterlab.registry import recipe_from_dict
from adapterlab.training import packed_attention
from adapterlab.training.losses import completion_loss

LENGTHS = (23, 9, 31)


def examples(vocab: int) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    rows = []
    for length in LENGTHS:
        ids = torch.randint(5, vocab, (length,), generator=generator).tolist()
        prompt = length // 2  # loss on the second half of each row only
        rows.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return rows


def loss_and_grads(model, batch) -> tuple[float, list[torch.Tensor]]:
    model.zero_grad()
    loss, scored = completion_loss(model, batch)
    loss.backward()
    assert scored == sum(length - length // 2 for length in LENGTHS)
    return loss.item(), [p.grad.clone() for p in model.parameters()]


@pytest.fixture
def model_pair(tiny_model_dir):
    """The tiny Llama (grouped-query attention: 4 heads, 2 key/value heads) twice: SDPA and packed attention."""
    padded = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa", dtype=torch.float32)
    packed = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa", dtype=torch.float32)
    packed.set_attn_implementation(packed_attention.register())
    assert packed.config._attn_implementation == packed_attention.NAME
    return padded, packed


@pytest.mark.parametrize(
    ("cpu_explicit_max", "block_rows"),
    [(packed_attention.CPU_EXPLICIT_MAX, 128), (packed_attention.CPU_EXPLICIT_MAX, 8), (0, 128)],
    ids=["matmuls", "matmuls-in-blocks", "sdpa"],  # blocks of 8 queries: the rows split into 3, 1 and 4 blocks
)
def test_packed_row_matches_the_padded_batch(model_pair, monkeypatch, cpu_explicit_max, block_rows):
    monkeypatch.setattr(packed_attention, "CPU_EXPLICIT_MAX", cpu_explicit_max)
    monkeypatch.setattr(packed_attention, "CPU_BLOCK_ROWS", block_rows)
    padded_model, packed_model = model_pair
    rows = examples(padded_model.config.vocab_size)
    padded = DataCollatorForLanguageModeling(pad_token_id=0)(rows)
    packed = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(rows)
    assert "attention_mask" in padded and packed["input_ids"].shape == (1, sum(LENGTHS))
    assert packed["cu_seq_lens_q"].tolist() == [0, 23, 32, 63]

    padded_loss, padded_grads = loss_and_grads(padded_model, padded)
    packed_loss, packed_grads = loss_and_grads(packed_model, packed)
    assert packed_loss == pytest.approx(padded_loss, rel=1e-5)
    for a, b in zip(padded_grads, packed_grads, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("length", [300, 97])
def test_blocked_matmul_attention_is_sdpa_causal_attention(length):
    """The CPU path at real lengths (several blocks of queries; one block) against SDPA, output and gradients."""
    generator = torch.Generator().manual_seed(1)
    shapes = {"query": (1, 6, length, 16), "key": (1, 2, length, 16), "value": (1, 2, length, 16)}
    inputs = {name: torch.randn(shape, generator=generator, requires_grad=True) for name, shape in shapes.items()}
    module = torch.nn.Module()
    expected = torch.nn.functional.scaled_dot_product_attention(**inputs, is_causal=True, enable_gqa=True)
    got = packed_attention._explicit_causal(module, *inputs.values(), dropout=0.0, scaling=None)
    torch.testing.assert_close(got, expected.transpose(1, 2), rtol=1e-5, atol=1e-5)
    weights = torch.randn(got.shape, generator=generator)
    grads = [
        torch.autograd.grad((out * w).sum(), list(inputs.values()))
        for out, w in ((got, weights), (expected.transpose(1, 2), weights))
    ]
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_a_packed_row_without_boundaries_would_mix_sequences(model_pair):
    """The check above can fail: attending across the packed rows changes the loss."""
    padded_model, packed_model = model_pair
    rows = examples(padded_model.config.vocab_size)
    _, padded_grads = loss_and_grads(padded_model, DataCollatorForLanguageModeling(pad_token_id=0)(rows))
    packed = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(rows)
    for key in ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "seq_idx", "position_ids"):
        packed.pop(key)
    _, mixed_grads = loss_and_grads(packed_model, packed)
    differences = [float((b - a).norm() / a.norm()) for a, b in zip(padded_grads, mixed_grads, strict=True)]
    assert max(differences) > 0.05


def test_unpacked_inputs_take_sdpa_with_its_masks(model_pair):
    """Generation and padded evaluation through a model switched to packed attention are unchanged."""
    padded_model, packed_model = model_pair
    ids = torch.tensor([[0, 0, 7, 8, 9, 10], [5, 6, 7, 8, 9, 10]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        expected = padded_model(input_ids=ids, attention_mask=mask).logits
        got = packed_model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got[mask.bool()], expected[mask.bool()])
    generated = packed_model.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False)
    reference = padded_model.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False)
    assert torch.equal(generated, reference)


@pytest.mark.parametrize(
    ("config", "packable"),
    [
        (LlamaConfig(), True),
        (MistralConfig(sliding_window=None), True),
        (MistralConfig(sliding_window=4096), False),
        (GemmaConfig(), True),
        (LlamaConfig(layer_types=["full_attention", "sliding_attention"], num_hidden_layers=2), False),
    ],
)
def test_only_plain_causal_attention_is_packed(config, packable):
    assert packed_attention.supports_packed_attention(config) is packable


def test_padding_free_auto_switches_sdpa_models_and_leaves_eager_padded(recipe_dict, tiny_model_dir, capsys):
    recipe = recipe_from_dict(recipe_dict)
    assert recipe.train.padding_free == "auto"
    sdpa = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    assert use_padding_free(recipe, sdpa) is True
    assert sdpa.config._attn_implementation == packed_attention.NAME

    eager = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="eager")
    assert use_padding_free(recipe, eager) is False
    assert use_padding_free(recipe_from_dict(recipe_dict, ["train.padding_free=false"]), sdpa) is False
    forced = recipe_from_dict(recipe_dict, ["train.padding_free=true"])
    assert use_padding_free(forced, eager) is True and eager.config._attn_implementation == "eager"
    assert "builds a mask over the whole packed batch" in capsys.readouterr().out
