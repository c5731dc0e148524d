"""A trained classifier, ready to predict: the base with the adapter merged in, the saved cleaning and labels.

Used by evaluation, ``adapterlab predict`` and the latency benchmark, so all three see the same model, the same
cleaning and the same batching. LoRA weights are merged into the base for inference (one matmul per layer
instead of three); batches are grouped by length so that short texts do not pay for long ones. ``compiled=True``
runs the model through ``torch.compile`` (inductor, weights frozen): about 20-30 s once, then ~1.3x the examples/s
on a CPU (docs/benchmarks.md), worth it for large files; if compiling fails (no C++ compiler, an unsupported
model) the classifier warns and stays eager.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from adapterlab.console import console
from adapterlab.data.clean import clean_text
from adapterlab.data.tasks import join_text
from adapterlab.errors import ModelError


@dataclass
class Classifier:
    model: Any
    tokenizer: Any
    meta: dict[str, Any]
    labels: list[str] = field(init=False)
    eager: Any = None  # the uncompiled model, kept when ``compiled=True`` to fall back on
    _attention: str | None = None  # its attention implementation before compiling

    def __post_init__(self) -> None:
        self.labels = list(self.meta["labels"])

    @property
    def device(self):
        return next((self.eager or self.model).parameters()).device

    @property
    def default_batch_size(self) -> int:
        """16 on a CPU (fastest per example for MiniLM-sized models on 2-16 cores), 64 on a GPU."""
        return 16 if self.device.type == "cpu" else 64

    @classmethod
    def load(
        cls, run_or_adapter: str | Path, precision: str = "fp32", merge: bool = True, compiled: bool = False
    ) -> Classifier:
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
        classifier = cls(model, tokenizer, meta)
        if compiled:
            classifier.compile_model()
        return classifier

    def compile_model(self) -> None:
        """Compile the model with inductor and frozen weights (compiled lazily, on the first batch)."""
        import torch
        import torch._inductor.config as inductor

        inductor.freezing = True  # weights become constants: pre-packed for oneDNN on a CPU
        self.eager = self.model
        self._attention = getattr(self.model.config, "_attn_implementation", None)
        if self._attention == "sdpa" and hasattr(self.model, "set_attn_implementation"):
            # Inductor fuses plain matmul + softmax attention; the CPU SDPA kernel stays an opaque call that is
            # slow at these lengths (compiled: 410 vs 341 examples/s on the review classifier).
            self.model.set_attn_implementation("eager")
        self.model = torch.compile(self.model, dynamic=True)

    def _forward(self, ids, mask):
        try:
            return self.model(input_ids=ids, attention_mask=mask).logits
        except Exception as error:  # any compiler failure (no C++ compiler, unsupported op): stay eager
            if self.eager is None:
                raise
            console.print(f"[yellow]warning:[/] torch.compile failed ({type(error).__name__}); predicting eagerly")
            self.model, self.eager = self.eager, None
            if self._attention == "sdpa" and hasattr(self.model, "set_attn_implementation"):
                self.model.set_attn_implementation("sdpa")
            return self.model(input_ids=ids, attention_mask=mask).logits

    def text_of(self, row: dict[str, str | None], columns: list[str] | None = None) -> str:
        """The cleaned text of a row ('' when there is nothing left), exactly as in training."""
        raw = join_text(row, columns or self.meta["text_columns"]) or ""
        return clean_text(raw, self.meta["clean"])

    def encode(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, truncation=True, max_length=self.meta["max_tokens"])["input_ids"]

    def predict_proba(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        """Class probabilities (n, num_labels) for cleaned texts, in input order."""
        import torch

        batch_size = batch_size or self.default_batch_size
        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        encoded = self.encode(texts)
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        probs = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        device = self.device
        pad = self.tokenizer.pad_token_id or 0
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                width = max(len(encoded[i]) for i in chunk)
                ids = torch.tensor([encoded[i] + [pad] * (width - len(encoded[i])) for i in chunk], device=device)
                mask = None  # no padding in the batch (always so at batch 1): no mask to build or apply
                if any(len(encoded[i]) < width for i in chunk):
                    mask = torch.tensor([[1] * len(encoded[i]) + [0] * (width - len(encoded[i])) for i in chunk],
                                        device=device)  # fmt: skip
                logits = self._forward(ids, mask).float()
                probs[chunk] = torch.softmax(logits, dim=-1).cpu().numpy()
        return probs

    def predict(self, texts: list[str], batch_size: int | None = None) -> list[str]:
        return [self.labels[i] for i in self.predict_proba(texts, batch_size).argmax(axis=1)]
