"""Text augmentation for rare classes: EDA-style edits without a thesaurus, and hooks for model rewrites.

EDA edits (random swap, random deletion, insertion of a word the text already contains) need no model and no
language resources, so they work for any language. Paraphrasing and back-translation run local seq2seq models the
user provides (``augment.paraphrase_model``, ``augment.backtranslate``). Augmented rows are marked and derived
from training rows only, so they stay in their source row's split.
"""

from __future__ import annotations

import random
import re

_TOKEN = re.compile(r"\S+")


def eda(text: str, rng: random.Random, p_swap: float, p_delete: float, p_insert: float) -> str:
    words = _TOKEN.findall(text)
    if len(words) < 2:
        return text
    n = len(words)
    for _ in range(max(1, round(p_swap * n)) if p_swap else 0):
        i, j = rng.randrange(n), rng.randrange(n)
        words[i], words[j] = words[j], words[i]
    if p_delete:
        kept = [w for w in words if rng.random() >= p_delete]
        words = kept or [rng.choice(words)]
    for _ in range(max(1, round(p_insert * n)) if p_insert else 0):
        words.insert(rng.randrange(len(words) + 1), rng.choice(words))
    return " ".join(words)


def rewrite(texts: list[str], model_dir: str, max_new_tokens: int = 128) -> list[str]:
    """Run a local text-to-text model (a paraphraser or a translator) over texts, greedily."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from adapterlab.models import resolve_base

    path = resolve_base(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSeq2SeqLM.from_pretrained(path, use_safetensors=True)
    model.eval()
    import torch

    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), 16):
            batch = tokenizer(texts[start : start + 16], return_tensors="pt", padding=True, truncation=True)
            ids = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
            out.extend(t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True))
    return out


def backtranslate(texts: list[str], to_pivot: str, back: str) -> list[str]:
    return rewrite(rewrite(texts, to_pivot), back)
