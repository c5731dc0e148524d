"""Logistic regression on a sentence encoder's text embeddings: a shippable classifier part (the SetFit approach).

On a few hundred labelled texts, a linear model on a pretrained sentence encoder's embeddings is a strong
classifier: it trains in seconds, cannot wear out the encoder's pretraining on a small training split, and reads the
whole text: a long text is cut into pieces of up to ``CHUNK_TOKENS`` tokens (at most ``MAX_CHUNKS``), each piece
mean-pooled and L2-normalised, and the pieces averaged. The encoder is the base model, by default first tuned on
pairs of training texts (``select.contrastive_pairs``, :mod:`adapterlab.tasks.classify.contrastive`); with
``select.contrastive_pairs: 0`` it is the frozen base. The run chooses on validation whether the part ships, alone
or averaged with the other parts (:mod:`adapterlab.tasks.classify.select`).

Saved without pickle, like the TF-IDF part: the coefficients as safetensors, the rest as JSON; a tuned encoder as a
transformers model (safetensors) in the adapter's ``embedding-encoder/`` folder. A frozen encoder is the run's base
model, loaded again from the adapter's base (the embedded encoder, a local directory or a hub id). Both are loaded
with ``use_safetensors`` and the recipe's ``trust_remote_code``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from adapterlab.embeddings import length_batches
from adapterlab.tasks.classify.format import encoder_limit
from adapterlab.tasks.classify.tfidf import logistic_proba

EMBEDDING_JSON, EMBEDDING_WEIGHTS = "embedding.json", "embedding.safetensors"
TUNED_ENCODER = "embedding-encoder"  # the contrastively tuned encoder's folder in the adapter
CHUNK_TOKENS = 256  # all-MiniLM-L6-v2 was trained on inputs of up to 256 word pieces
MAX_CHUNKS = 8  # at most 2048 tokens of a text are read
C = 1.0  # inverse L2 strength: 1.0 beat 10.0 on both dev corpora (docs/benchmarks.md)


@dataclass
class Embedder:
    """An encoder (a tuned copy or the frozen base) as a text embedder: each piece mean-pooled, pieces averaged."""

    model: Any
    tokenizer: Any
    chunk: int = CHUNK_TOKENS
    max_chunks: int = MAX_CHUNKS
    batch_size: int = 16
    eager: Any = None  # the uncompiled model, kept after :meth:`compile` to fall back on
    _attention: str | None = None

    @classmethod
    def load(cls, base: str, cfg, tokenizer, precision: str = "fp32", **sizes: int) -> Embedder:
        """``base``: what ``from_pretrained`` accepts; ``cfg``: the run's model section (revision, remote code)."""
        from transformers import AutoModel

        from adapterlab.errors import ModelError
        from adapterlab.models import _first_line, device_name, torch_dtype

        try:
            model = AutoModel.from_pretrained(
                base, dtype=torch_dtype(precision), trust_remote_code=cfg.trust_remote_code, revision=cfg.revision,
                use_safetensors=True,
            )  # fmt: skip
        except (OSError, ValueError) as exc:
            raise ModelError(f"the embedding part reads texts with the base model '{base}', which cannot be loaded: "
                             f"{_first_line(exc)}; put it back, or train again with select.candidates "
                             "without embedding or ensemble") from exc  # fmt: skip
        model.to(device_name()).eval()
        return cls(model, tokenizer, **sizes)

    def pieces(self, texts: list[str]) -> tuple[list[list[int]], list[int]]:
        """Token ids of every piece (special tokens added as the tokenizer does) and the text each belongs to."""
        from adapterlab.tasks.classify.format import special_tokens

        front, back = special_tokens(self.tokenizer)
        probe = list(self.tokenizer("a b c")["input_ids"])
        prefix, suffix = probe[:front], probe[len(probe) - back :]  # [CLS] and [SEP] for BERT, none for decoders
        room = max(min(self.chunk, encoder_limit(self.tokenizer)) - front - back, 1)
        filler = self.tokenizer.unk_token_id or self.tokenizer.eos_token_id or 0
        pieces, owner = [], []
        for i, ids in enumerate(
            self.tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
        ):
            for start in range(0, max(len(ids), 1), room)[: self.max_chunks]:
                content = list(ids[start : start + room]) or [filler]
                pieces.append(prefix + content + suffix)
                owner.append(i)
        return pieces, owner

    def embed(self, texts: list[str]) -> np.ndarray:
        """(n, hidden) float32: each text's pieces mean-pooled, normalised and averaged, normalised again."""
        pieces, owner = self.pieces(texts)
        pad = self.tokenizer.pad_token_id or 0
        sums = None
        for rows, ids, mask in length_batches(pieces, self.batch_size, pad):
            states = self.hidden_states(ids, mask).astype(np.float64)  # no mask: a batch without padding
            weight = np.ones_like(ids) if mask is None else mask
            pooled = (states * weight[..., None]).sum(axis=1) / weight.sum(axis=1, keepdims=True)
            pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
            if sums is None:
                sums = np.zeros((len(texts), pooled.shape[1]))
            np.add.at(sums, [owner[row] for row in rows], pooled)
        if sums is None:
            return np.zeros((0, 0), dtype=np.float32)
        return (sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)).astype(np.float32)

    def compile(self) -> None:
        """Run the encoder through ``torch.compile`` (:mod:`adapterlab.tasks.classify.compiled`)."""
        from adapterlab.tasks.classify.compiled import compile_frozen

        self.eager = self.model
        self.model, self._attention = compile_frozen(self.model)

    def hidden_states(self, ids: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        """The last hidden states (batch, length, hidden) of one batch (``mask``: None when nothing is padding)."""
        import torch

        device = next((self.model if self.eager is None else self.eager).parameters()).device
        inputs = {"input_ids": torch.from_numpy(ids).to(device),
                  "attention_mask": None if mask is None else torch.from_numpy(mask).to(device)}  # fmt: skip
        with torch.inference_mode():
            try:
                out = self.model(**inputs)
            except Exception as error:  # a compiler failure: eager from now on
                if self.eager is None:
                    raise
                from adapterlab.tasks.classify.compiled import back_to_eager

                self.model, self.eager = back_to_eager(self.eager, self._attention, error), None
                out = self.model(**inputs)
            return out.last_hidden_state.float().cpu().numpy()


@dataclass
class ONNXEmbedder(Embedder):
    """The same embedder with its encoder exported to ONNX (``embedder.onnx``, see stages/export/onnx.py)."""

    def hidden_states(self, ids: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        mask = np.ones_like(ids) if mask is None else mask  # the graph takes a mask always
        (states,) = self.model.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": mask})
        return states.astype(np.float32)


@dataclass
class EmbeddingModel:
    coef: np.ndarray  # (classes or 1, hidden)
    intercept: np.ndarray
    columns: list[int]  # label id of each of the regression's classes
    num_labels: int
    chunk: int = CHUNK_TOKENS
    max_chunks: int = MAX_CHUNKS
    encoder: str | None = None  # the tuned encoder's folder in the adapter (None: the frozen base)
    contrastive: dict | None = None  # the contrastive stage's figures (pairs, seconds, losses)
    embedder: Embedder | None = field(default=None, repr=False)  # set by :meth:`attach` before predicting

    @classmethod
    def fit(cls, embeddings: np.ndarray, labels: list[int], num_labels: int, seed: int = 0,
            embedder: Embedder | None = None) -> EmbeddingModel:  # fmt: skip
        """``embedder``: the one that embedded the training texts (its piece sizes are recorded; a tuned one is
        attached by the caller, to be saved with the part)."""
        from sklearn.linear_model import LogisticRegression

        regression = LogisticRegression(C=C, max_iter=3000, class_weight="balanced", random_state=seed)
        regression.fit(embeddings, labels)
        sizes = (embedder.chunk, embedder.max_chunks) if embedder is not None else (CHUNK_TOKENS, MAX_CHUNKS)
        return cls(np.asarray(regression.coef_, dtype=np.float64), np.asarray(regression.intercept_, np.float64),
                   [int(c) for c in regression.classes_], num_labels, *sizes)  # fmt: skip

    def source(self, adapter: Path, base: str) -> str:
        """What the embedder loads: the tuned encoder in ``adapter``, or ``base`` (the run's base) when frozen."""
        return str(Path(adapter) / self.encoder) if self.encoder else base

    @classmethod
    def open(cls, adapter: Path, base: str, cfg, tokenizer, precision: str = "fp32") -> EmbeddingModel:
        """The saved part with its embedder attached: the tuned encoder in ``adapter``, or the frozen ``base``."""
        model = cls.load(adapter)
        return model.attach(Embedder.load(model.source(adapter, base), cfg, tokenizer, precision))

    def attach(self, embedder: Embedder) -> EmbeddingModel:
        embedder.chunk, embedder.max_chunks = self.chunk, self.max_chunks
        self.embedder = embedder
        return self

    def proba_of(self, embeddings: np.ndarray) -> np.ndarray:
        return logistic_proba(embeddings @ self.coef.T + self.intercept, self.columns, self.num_labels)

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        if self.embedder is None:
            raise RuntimeError("EmbeddingModel.attach(embedder) first")
        if not texts:
            return np.zeros((0, self.num_labels), dtype=np.float32)
        return self.proba_of(self.embedder.embed(texts))

    def save(self, folder: Path) -> None:
        from safetensors.numpy import save_file

        folder = Path(folder)
        meta = {"columns": self.columns, "num_labels": self.num_labels, "chunk": self.chunk,
                "max_chunks": self.max_chunks, "pooling": "mean per piece, normalised, pieces averaged",
                "encoder": self.encoder, "contrastive": self.contrastive}  # fmt: skip
        (folder / EMBEDDING_JSON).write_text(json.dumps(meta))
        arrays = {"coef": np.ascontiguousarray(self.coef), "intercept": np.ascontiguousarray(self.intercept)}
        save_file(arrays, str(folder / EMBEDDING_WEIGHTS))
        if self.encoder:  # the tuned encoder (the frozen base is not copied: it is the adapter's base)
            if self.embedder is None:
                raise RuntimeError("EmbeddingModel.attach(the tuned embedder) before saving")
            model = self.embedder.eager if self.embedder.eager is not None else self.embedder.model
            model.save_pretrained(folder / self.encoder, safe_serialization=True)

    @classmethod
    def load(cls, folder: Path) -> EmbeddingModel:
        from safetensors.numpy import load_file

        folder = Path(folder)
        meta = json.loads((folder / EMBEDDING_JSON).read_text())
        arrays = load_file(str(folder / EMBEDDING_WEIGHTS))
        return cls(arrays["coef"], arrays["intercept"], meta["columns"], meta["num_labels"], meta["chunk"],
                   meta["max_chunks"], meta.get("encoder"), meta.get("contrastive"))  # fmt: skip

    @staticmethod
    def files() -> tuple[str, str]:
        return EMBEDDING_JSON, EMBEDDING_WEIGHTS
