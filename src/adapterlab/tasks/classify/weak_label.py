"""Zero-shot weak labels for unlabeled rows: a label when the model is confident, a report when it is not.

``embedding`` (default): cosine similarity between the row and each label's description with a sentence encoder
(the embedded all-MiniLM-L6-v2 unless the recipe names another), turned into probabilities with a softmax at a
low temperature. ``nli``: a natural-language-inference model the user provides, through transformers'
zero-shot-classification pipeline. Rows at or above ``threshold`` are kept (training split only, marked weak);
rows within ``grey_zone`` below it are reported with examples for a human to look at; the rest are not used.
"""

from __future__ import annotations

from dataclasses import dataclass

from adapterlab.tasks.classify.config import WeakLabelConfig


@dataclass
class WeakLabel:
    label: str
    confidence: float
    runner_up: str | None


def label_prompts(labels: list[str], descriptions: dict[str, str]) -> list[str]:
    """What each label is compared with: 'label: description', or the label's words alone."""
    return [f"{label.replace('_', ' ')}: {descriptions[label]}" if label in descriptions
            else label.replace("_", " ") for label in labels]  # fmt: skip


def weak_labels(
    texts: list[str], labels: list[str], descriptions: dict[str, str], cfg: WeakLabelConfig
) -> list[WeakLabel]:
    if not texts:
        return []
    if cfg.method == "nli":
        return _nli(texts, labels, descriptions, cfg)
    import torch

    from adapterlab.embeddings import embed

    rows = embed(texts, cfg.model)
    classes = embed(label_prompts(labels, descriptions), cfg.model)
    probs = torch.softmax(rows @ classes.T / cfg.temperature, dim=-1)
    top = probs.topk(min(2, len(labels)), dim=-1)
    return [
        WeakLabel(labels[int(i[0])], float(p[0]), labels[int(i[1])] if len(i) > 1 else None)
        for p, i in zip(top.values, top.indices, strict=True)
    ]


def _nli(texts: list[str], labels: list[str], descriptions: dict[str, str], cfg: WeakLabelConfig) -> list[WeakLabel]:
    from transformers import pipeline

    from adapterlab.models import resolve_base

    classify = pipeline("zero-shot-classification", model=resolve_base(cfg.model), device=-1)
    names = label_prompts(labels, descriptions)
    by_name = dict(zip(names, labels, strict=True))
    results = classify(texts, candidate_labels=names, hypothesis_template=cfg.hypothesis, multi_label=False)
    results = results if isinstance(results, list) else [results]
    return [
        WeakLabel(by_name[r["labels"][0]], float(r["scores"][0]), by_name[r["labels"][1]] if len(names) > 1 else None)
        for r in results
    ]
