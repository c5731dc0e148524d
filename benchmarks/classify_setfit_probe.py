"""Probe for issue 17: a SetFit-style contrastive stage on the frozen encoder before the embedding part's logistic
regression, against the embedding part as it ships (the frozen encoder + logistic regression), one run.

    python benchmarks/classify_setfit_probe.py RUN [--pairs 4] [--max-tokens 128] [--bf16]

RUN: a finished classify run (e.g. one of ``benchmarks/classify_quality.py``'s ``bench-<name>`` runs); its
prepared splits are used as they are. The contrastive stage: for every training text ``--pairs`` positive pairs
(another text of its label) and as many negative ones, the cosine of the two mean-pooled, normalised embeddings
pulled towards 1 or 0 (mean squared error), one pass, AdamW at 2e-5, batches of 16. Then the same logistic
regression (C=1, balanced) as the embedding part, on the tuned encoder's embeddings (pieces as in
:class:`adapterlab.tasks.classify.embedding.Embedder`). Prints weighted F1 on validation and test for both, and the
stage's time. Exploratory: not part of what a run ships (see docs/benchmarks.md, "SetFit probe").
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--pairs", type=int, default=4, help="positive (and negative) pairs per training text")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast in the contrastive stage")
    args = parser.parse_args()

    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from transformers import AutoModel, AutoTokenizer

    from adapterlab.models import resolve_base
    from adapterlab.runs import AdapterInfo, RunDir, read_jsonl
    from adapterlab.tasks.classify.embedding import C, Embedder

    torch.manual_seed(0)
    rng = random.Random(0)
    run = RunDir(args.run)
    splits = {name: read_jsonl(run.split_file(name)) for name in ("train", "val", "test")}
    train = splits["train"]
    base = resolve_base(AdapterInfo.read(run.adapter).base_model.spec)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModel.from_pretrained(base, use_safetensors=True).eval()

    def scores(name: str) -> dict[str, float]:
        embedder = Embedder(model, tokenizer)
        vectors = {split: embedder.embed([r["text"] for r in rows]) for split, rows in splits.items()}
        regression = LogisticRegression(C=C, max_iter=3000, class_weight="balanced", random_state=0)
        regression.fit(vectors["train"], [r["label_id"] for r in train])
        out = {split: f1_score([r["label_id"] for r in splits[split]], regression.predict(vectors[split]),
                               average="weighted") for split in ("val", "test")}  # fmt: skip
        print(f"{name}: weighted F1 val {out['val']:.4f} test {out['test']:.4f}", flush=True)
        return out

    frozen = scores("frozen encoder + LR (the embedding part)")
    by_label: dict[int, list[int]] = {}
    for i, row in enumerate(train):
        by_label.setdefault(row["label_id"], []).append(i)
    pairs = []
    for i, row in enumerate(train):
        others = [j for j in range(len(train)) if train[j]["label_id"] != row["label_id"]]
        for _ in range(args.pairs):
            pairs.append((i, rng.choice(by_label[row["label_id"]]), 1.0))
            if others:
                pairs.append((i, rng.choice(others), 0.0))
    rng.shuffle(pairs)

    def pooled(texts: list[str]):
        batch = tokenizer(texts, truncation=True, max_length=args.max_tokens, padding=True, return_tensors="pt")
        states = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
        return torch.nn.functional.normalize((states * mask).sum(1) / mask.sum(1), dim=-1).float()

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5)
    began = time.perf_counter()
    for start in range(0, len(pairs), 16):
        batch = pairs[start : start + 16]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            left = pooled([train[i]["text"] for i, _, _ in batch])
            right = pooled([train[j]["text"] for _, j, _ in batch])
        target = torch.tensor([label for _, _, label in batch])
        loss = torch.nn.functional.mse_loss((left * right).sum(-1), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    seconds = time.perf_counter() - began
    print(f"contrastive stage: {len(pairs)} pairs in {seconds:.0f} s", flush=True)
    model.eval()
    tuned = scores(f"contrastive stage ({args.pairs}+{args.pairs} pairs per text) + LR")
    print(json.dumps({"run": str(args.run), "pairs": len(pairs), "seconds": round(seconds, 1), "frozen": frozen,
                      "contrastive": tuned, "bf16": args.bf16, "max_tokens": args.max_tokens}))  # fmt: skip


if __name__ == "__main__":
    main()
