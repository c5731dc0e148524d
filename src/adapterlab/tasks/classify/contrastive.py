"""The embedding part's contrastive stage (the SetFit recipe): tune a copy of the base encoder on pairs of training
texts before the logistic regression reads its embeddings.

For each training text, ``pairs`` other texts of its label and as many of another label are drawn (seeded); the
cosine of the two texts' mean-pooled, normalised embeddings is pulled towards 1 for a same-label pair and 0 for the
others (mean squared error, SetFit's CosineSimilarityLoss), one pass, AdamW. A pair budget caps the whole stage: a
larger training split gets fewer pairs per text, so the time stays bounded. On the four corpora probed it lifted
the embedding part's test weighted F1 by 0.03-0.08 (docs/benchmarks.md, "SetFit probe"); two pairs of each kind
per text gave nothing, four did.

Written here rather than through the ``setfit`` package: that package trains a ``sentence-transformers`` model with
its own trainer and pooling, while this part reads long texts in pieces (:class:`~.embedding.Embedder`) and ships
the tuned encoder as a plain transformers model in the adapter; the stage itself is the loop below.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

TOKENS = 128  # each text's first 128 tokens in the pairs (the stage's cost grows with it; the probe's setting)
LEARNING_RATE = 2e-5
BATCH = 16


@dataclass
class ContrastiveStats:
    pairs: int
    pairs_per_text: float
    seconds: float
    first_loss: float
    last_loss: float

    def as_dict(self) -> dict:
        return {"pairs": self.pairs, "pairs_per_text": round(self.pairs_per_text, 2),
                "seconds": round(self.seconds, 1), "first_loss": round(self.first_loss, 4),
                "last_loss": round(self.last_loss, 4)}  # fmt: skip


def draw_pairs(labels: list[int], per_text: int, budget: int, seed: int) -> list[tuple[int, int, float]]:
    """(anchor, other, target) triples: ``per_text`` same-label (target 1) and as many other-label (target 0) pairs
    for every text, or, when that would exceed ``budget`` pairs, fewer per text: every text is an anchor
    ``budget // (2 n)`` times, and the remainder goes to a seeded sample of texts. A text alone in its label is
    paired with itself (which teaches nothing and costs little); with a single label there are no negative pairs."""
    rng = random.Random(seed)
    n = len(labels)
    if n == 0 or per_text <= 0 or budget < 2:
        return []
    by_label: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_label.setdefault(label, []).append(i)
    rounds = min(per_text, budget // (2 * n))
    anchors = list(range(n)) * rounds
    if rounds < per_text:  # the budget's remainder: a sample of texts once more
        anchors += rng.sample(range(n), min(n, (budget - 2 * n * rounds) // 2))
    pairs = []
    for i in anchors:
        same = by_label[labels[i]]
        pairs.append((i, rng.choice(same), 1.0))
        if len(by_label) > 1:
            while True:  # rejection sampling: other labels are most of the split unless one label dominates it
                j = rng.randrange(n)
                if labels[j] != labels[i]:
                    break
            pairs.append((i, j, 0.0))
    rng.shuffle(pairs)
    return pairs


def tune(model, tokenizer, texts: list[str], pairs: list[tuple[int, int, float]], precision: str = "fp32",
         seed: int = 0, learning_rate: float = LEARNING_RATE, batch_size: int = BATCH,
         tokens: int = TOKENS) -> ContrastiveStats:  # fmt: skip
    """One pass over ``pairs`` (from :func:`draw_pairs`) that tunes ``model`` (a transformers encoder) in place;
    ``precision``: bf16 runs the forward passes under autocast, the weights stay as they are. Shows a progress
    bar."""
    import torch

    from adapterlab.generation import progress_bar
    from adapterlab.models import device_name, torch_dtype

    torch.manual_seed(seed)
    device = next(model.parameters()).device
    limit = min(tokens, getattr(tokenizer, "model_max_length", tokens) or tokens)

    def pooled(batch_texts: list[str]):
        batch = tokenizer(batch_texts, truncation=True, max_length=limit, padding=True, return_tensors="pt")
        batch = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        states = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
        return torch.nn.functional.normalize((states * mask).sum(1) / mask.sum(1), dim=-1).float()

    autocast = precision in ("bf16", "fp16")
    dtype = torch_dtype(precision) if autocast else torch.float32
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=learning_rate)
    was_training, losses = model.training, []
    model.train()
    began = time.perf_counter()
    with progress_bar("Contrastive pairs (embedding part)", len(pairs)) as advance:
        for start in range(0, len(pairs), batch_size):
            batch = pairs[start : start + batch_size]
            with torch.autocast(device_name(), dtype=dtype, enabled=autocast):
                left = pooled([texts[i] for i, _, _ in batch])
                right = pooled([texts[j] for _, j, _ in batch])
            target = torch.tensor([t for _, _, t in batch], device=left.device)
            loss = torch.nn.functional.mse_loss((left * right).sum(-1), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            advance(len(batch))
    model.train(was_training)
    model.zero_grad(set_to_none=True)
    window = max(1, len(losses) // 10)  # the first and last tenth of the pass
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    return ContrastiveStats(len(pairs), len(pairs) / max(len(texts), 1) / 2, time.perf_counter() - began,
                            mean(losses[:window]), mean(losses[-window:]))  # fmt: skip
