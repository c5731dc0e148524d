"""The completion-only loss equals the model's own loss on -100 labels, with and without PEFT."""

import pytest
import torch

from adapterlab.training.losses import completion_loss, supports_compact_head


@pytest.fixture
def model_and_batch(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    torch.manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (3, 12))
    attention = torch.ones_like(ids)
    attention[1, 9:] = 0  # a padded row
    labels = ids.clone()
    labels[:, :5] = -100  # prompt
    labels[attention == 0] = -100
    return model, {"input_ids": ids, "attention_mask": attention, "labels": labels}


def test_matches_the_models_own_loss(model_and_batch):
    model, batch = model_and_batch
    expected = model(**batch).loss
    loss, scored = completion_loss(model, batch)
    assert scored == int((batch["labels"][:, 1:] != -100).sum())
    assert torch.allclose(loss, expected, atol=1e-6)


def test_sum_over_num_items_for_gradient_accumulation(model_and_batch):
    model, batch = model_and_batch
    mean, scored = completion_loss(model, batch)
    summed, _ = completion_loss(model, batch, num_items_in_batch=torch.tensor(scored * 2))
    assert torch.allclose(summed * 2, mean, atol=1e-6)


def test_gradients_match_through_lora(model_and_batch):
    from peft import LoraConfig, get_peft_model

    model, batch = model_and_batch
    peft = get_peft_model(model, LoraConfig(r=2, target_modules="all-linear", init_lora_weights=False))
    completion_loss(peft, batch)[0].backward()
    ours = {n: p.grad.clone() for n, p in peft.named_parameters() if p.requires_grad}
    peft.zero_grad()
    peft(**batch).loss.backward()
    theirs = {n: p.grad for n, p in peft.named_parameters() if p.requires_grad}
    assert ours.keys() == theirs.keys() and len(ours) > 0
    for name in ours:
        assert torch.allclose(ours[name], theirs[name], atol=1e-6), name


@pytest.mark.parametrize("chunk", [256, 4], ids=["one-chunk", "chunks-of-4"])
def test_chunked_loss_of_a_frozen_head_matches_cross_entropy(model_and_batch, chunk, monkeypatch):
    """With the head frozen (LoRA), the chunked loss gives the full-logits loss and the same LoRA gradients."""
    from peft import LoraConfig, get_peft_model

    from adapterlab.training import losses

    model, batch = model_and_batch
    peft = get_peft_model(model, LoraConfig(r=2, target_modules="all-linear", init_lora_weights=False))
    assert losses._fused_head(peft) is not None
    loss, scored = completion_loss(peft, batch, chunk=chunk)
    loss.backward()
    fused = {n: p.grad.clone() for n, p in peft.named_parameters() if p.requires_grad}
    peft.zero_grad()
    monkeypatch.setattr(losses, "_fused_head", lambda model: None)  # the full-logits path
    reference, _ = completion_loss(peft, batch)
    reference.backward()
    assert scored == int((batch["labels"][:, 1:] != -100).sum())
    assert torch.allclose(loss, reference, atol=1e-6)
    for name, param in peft.named_parameters():
        if param.requires_grad:
            assert torch.allclose(fused[name], param.grad, atol=1e-6), name


def test_chunked_loss_is_not_used_when_the_head_trains_or_without_gradients(model_and_batch):
    from adapterlab.training.losses import _fused_head

    model, _ = model_and_batch
    assert _fused_head(model) is None  # a plain model's tied head requires grad
    model.requires_grad_(False)
    assert _fused_head(model) is not None
    with torch.no_grad():
        assert _fused_head(model) is None


def test_models_with_logit_softcapping_use_their_own_head(model_and_batch):
    model, batch = model_and_batch
    assert supports_compact_head(model)
    model.config.final_logit_softcapping = 30.0
    assert not supports_compact_head(model)
    loss, _ = completion_loss(model, batch)
    assert torch.allclose(loss, model(**batch).loss, atol=1e-6)


def test_per_example_nll_adds_up_to_the_mean_loss(model_and_batch):
    from adapterlab.training.losses import completion_nll_per_example

    model, batch = model_and_batch
    sums, counts = completion_nll_per_example(model, batch)
    assert counts.tolist() == (batch["labels"][:, 1:] != -100).sum(dim=1).tolist()
    assert torch.allclose(sums.sum() / counts.sum(), model(**batch).loss, atol=1e-6)
    single = {k: v[1:2] for k, v in batch.items()}
    assert torch.allclose(sums[1] / counts[1], model(**single).loss, atol=1e-5)


# Hand-computed: softmax([2, 0, -1]) = [0.8438, 0.1142, 0.0420], softmax([0.5, 1.5, 0]) = [0.2312, 0.6285, 0.1402];
# CE = [-ln 0.8438, -ln 0.1402] = [0.16985, 1.96437].
LOGITS = [[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]]
LABELS = [0, 2]


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, (0.16985 + 1.96437) / 2),
        # weights 1, 2, 3: (1 * 0.16985 + 3 * 1.96437) / (1 + 3)
        ({"class_weights": torch.tensor([1.0, 2.0, 3.0])}, 1.51574),
        # focal gamma 2: ((1 - 0.8438)^2 * 0.16985 + (1 - 0.1402)^2 * 1.96437) / 2
        ({"focal_gamma": 2.0}, 0.72808),
        # smoothing 0.1 over 3 classes: target 0.9333 on the label, 0.0333 elsewhere
        ({"label_smoothing": 0.1}, 1.11711),
    ],
)
def test_classification_loss_against_hand_computed_values(kwargs, expected):
    from adapterlab.training.losses import classification_loss

    loss = classification_loss(torch.tensor(LOGITS), torch.tensor(LABELS), **kwargs)
    assert loss.item() == pytest.approx(expected, abs=1e-4)


def test_balanced_weights_follow_scikit_learn():
    from sklearn.utils.class_weight import compute_class_weight

    from adapterlab.training.losses import balanced_class_weights

    labels = [0, 0, 0, 0, 1, 2, 2]
    ours = balanced_class_weights(labels, 3)
    theirs = compute_class_weight("balanced", classes=torch.arange(3).numpy(), y=labels)
    assert torch.allclose(ours, torch.tensor(theirs, dtype=torch.float32))
    assert balanced_class_weights([0, 0], 3).tolist()[1:] == [1.0, 1.0]  # absent classes keep weight 1
