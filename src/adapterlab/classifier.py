"""A trained classifier, ready to predict: the base with the adapter merged in, the saved cleaning and labels.

Used by evaluation, ``adapterlab predict`` and the latency benchmark, so all three see the same model, the same
cleaning and the same batching. LoRA weights are merged into the base for inference (one matmul per layer
instead of three); batches are grouped by length so that short texts do not pay for long ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from adapterlab.data.clean import clean_text
from adapterlab.data.tasks import join_text
from adapterlab.errors import ModelError


@dataclass
class Classifier:
    model: Any
    tokenizer: Any
    meta: dict[str, Any]
    labels: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.labels = list(self.meta["labels"])

    @classmethod
    def load(cls, run_or_adapter: str | Path, precision: str = "fp32", merge: bool = True) -> Classifier:
        from transformers import AutoTokenizer

        from adapterlab.config import ModelConfig
        from adapterlab.models import load_sequence_classifier, resolve_base, torch_dtype

        path = Path(run_or_adapter)
        adapter = path / "adapter" if (path / "adapter").is_dir() else path
        meta_file = adapter / "adapterlab.json"
        if not meta_file.is_file():
            raise ModelError(f"{path}: no trained classifier here (expected {meta_file}); train first")
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        if meta.get("task") != "classify":
            raise ModelError(f"{path}: this adapter was trained for task '{meta.get('task')}', not classify")
        tokenizer = AutoTokenizer.from_pretrained(adapter)
        cfg = ModelConfig(**meta["model"])
        if meta.get("full_finetune"):
            model = load_sequence_classifier(str(adapter), cfg, meta["labels"], tokenizer.pad_token_id)
        else:
            from peft import PeftModel

            base = resolve_base(meta["base_model"]["spec"])
            model = load_sequence_classifier(base, cfg, meta["labels"], tokenizer.pad_token_id)
            model = PeftModel.from_pretrained(model, adapter)
            if merge and cfg.quantization == "none":
                model = model.merge_and_unload()
        if precision != "fp32" and cfg.quantization == "none":
            model = model.to(torch_dtype(precision))
        model.eval()
        return cls(model, tokenizer, meta)

    def text_of(self, row: dict[str, str | None], columns: list[str] | None = None) -> str:
        """The cleaned text of a row ('' when there is nothing left), exactly as in training."""
        raw = join_text(row, columns or self.meta["text_columns"]) or ""
        return clean_text(raw, self.meta["clean"])

    def encode(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, truncation=True, max_length=self.meta["max_tokens"])["input_ids"]

    def predict_proba(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Class probabilities (n, num_labels) for cleaned texts, in input order."""
        import torch

        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        encoded = self.encode(texts)
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        probs = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id or 0
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                width = max(len(encoded[i]) for i in chunk)
                ids = torch.tensor([encoded[i] + [pad] * (width - len(encoded[i])) for i in chunk], device=device)
                mask = torch.tensor([[1] * len(encoded[i]) + [0] * (width - len(encoded[i])) for i in chunk],
                                    device=device)  # fmt: skip
                logits = self.model(input_ids=ids, attention_mask=mask).logits.float()
                probs[chunk] = torch.softmax(logits, dim=-1).cpu().numpy()
        return probs

    def predict(self, texts: list[str], batch_size: int = 64) -> list[str]:
        return [self.labels[i] for i in self.predict_proba(texts, batch_size).argmax(axis=1)]
