"""A trained classifier, ready to predict: the base with the adapter merged in, the saved cleaning and labels.

Used by evaluation, ``adapterlab predict`` and the latency benchmark, so all three see the same model, the same
cleaning and the same batching. LoRA weights are merged into the base for inference (one matmul per layer
instead of three); batches are grouped by length so that short texts do not pay for long ones. ``compiled=True``
runs the model (and the embedding part's encoder) through ``torch.compile`` (inductor, weights frozen):
20-50 s once, then ~1.2-1.3x the examples/s on a CPU (docs/benchmarks.md), worth it for large files; if compiling
fails (no C++ compiler, an unsupported model) the classifier warns and stays eager.

:class:`ONNXClassifier` runs a run's ONNX export (``adapterlab predict --onnx``) with onnxruntime; it shares the
cleaning, tokenisation and batching with :class:`Classifier` (:class:`TextClassifier`), so only the forward pass
differs between the two.

What ships may be the fine-tuned encoder, logistic regression on the embedding part's encoder, TF-IDF + logistic
regression, or an average of them (chosen on validation at training, :mod:`adapterlab.tasks.classify.select`):
``predict_proba`` returns the shipped mix, ``part_proba`` one part alone (``encoder_proba`` the fine-tuned
encoder's). The TF-IDF and embedding parts are saved beside the adapter (and copied into an ONNX export, with the
embedding part's encoder as a second graph).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adapterlab.data.clean import row_text
from adapterlab.embeddings import length_batches
from adapterlab.errors import ModelError
from adapterlab.runs import AdapterInfo, RunDir, read_json
from adapterlab.task import Skipped
from adapterlab.tasks.classify.compiled import back_to_eager, compile_frozen
from adapterlab.tasks.classify.embedding import EmbeddingModel, ONNXEmbedder
from adapterlab.tasks.classify.format import encode_text
from adapterlab.tasks.classify.select import mix
from adapterlab.tasks.classify.tfidf import TfidfModel


class TextClassifier:
    """What every runtime of a trained classifier shares: the training cleaning, the tokenisation and the
    length-grouped batching. A runtime supplies :meth:`_probabilities` for one padded batch."""

    meta: dict[str, Any]
    tokenizer: Any
    labels: list[str]
    tfidf: TfidfModel | None = None
    embedding: EmbeddingModel | None = None
    default_batch_size: int = 16

    def text_of(self, row: dict[str, str | None], columns: list[str] | None = None) -> str:
        """The cleaned text of a row ('' when there is nothing left), exactly as in training."""
        return row_text(row, columns or self.meta["text_columns"], self.meta["clean"])

    def clean(self, text: str) -> str:
        """A raw text (an API request's input) cleaned exactly as in training."""
        return row_text({"text": text}, ["text"], self.meta["clean"])

    def encode(self, texts: list[str]) -> list[list[int]]:
        return encode_text(self.tokenizer, texts, self.meta["max_tokens"], self.meta.get("truncation", "head"))

    @property
    def weights(self) -> dict[str, float]:
        """Each shipped part's share of the probabilities: ``finetuned``, ``embedding``, ``tfidf``."""
        if "weights" in self.meta:
            return {part: float(w) for part, w in self.meta["weights"].items()}
        # adapters saved before the embedding part: encoder_weight x the encoder + the rest x TF-IDF
        encoder = float(self.meta.get("encoder_weight", 1.0)) if self.tfidf is not None else 1.0
        return {"finetuned": encoder} | ({"tfidf": 1.0 - encoder} if encoder < 1.0 else {})

    @property
    def encoder_weight(self) -> float:
        """The fine-tuned encoder's share of the shipped probabilities (1.0 when it alone ships)."""
        return self.weights.get("finetuned", 0.0)

    def predict_proba(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        """Class probabilities (n, num_labels) of what ships, for cleaned texts, in input order."""
        weights = {part: w for part, w in self.weights.items() if w > 0}
        return mix({part: self.part_proba(part, texts, batch_size) for part in weights}, weights)

    def part_proba(self, part: str, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        """One part's probabilities alone: ``finetuned`` (the encoder), ``embedding`` or ``tfidf``."""
        if part == "finetuned":
            return self.encoder_proba(texts, batch_size)
        model = {"embedding": self.embedding, "tfidf": self.tfidf}[part]
        if model is None:
            raise ModelError(f"this classifier has no {part} part (its adapter folder lacks the {part} files)")
        return model.predict_proba(texts)

    def encoder_proba(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        """The encoder's class probabilities alone (n, num_labels)."""
        batch_size = batch_size or self.default_batch_size
        probs = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        encoded = self.encode(texts) if texts else []
        pad = self.tokenizer.pad_token_id or 0
        for chunk, ids, mask in length_batches(encoded, batch_size, pad):
            probs[chunk] = self._probabilities(ids, mask)
        return probs

    def predict(self, texts: list[str], batch_size: int | None = None) -> list[str]:
        return [self.labels[i] for i in self.predict_proba(texts, batch_size).argmax(axis=1)]

    def _probabilities(self, ids: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        raise NotImplementedError


@dataclass
class Classifier(TextClassifier):
    _model: Any  # the fine-tuned encoder; None until first used when what ships does not use it (see load)
    tokenizer: Any
    meta: dict[str, Any]
    labels: list[str] = field(init=False)
    eager: Any = None  # the uncompiled model, kept when ``compiled=True`` to fall back on
    _attention: str | None = None  # its attention implementation before compiling
    tfidf: TfidfModel | None = None  # the TF-IDF part of what ships, if any
    embedding: EmbeddingModel | None = None  # the embedding part of what ships, if any
    _loader: Any = None  # builds the fine-tuned encoder on first use
    _compile_on_load: bool = False

    def __post_init__(self) -> None:
        self.labels = list(self.meta["labels"])

    @property
    def model(self):
        """The fine-tuned encoder, loaded (and compiled, when asked) the first time it is needed."""
        if self._model is None and self._loader is not None:
            loader, self._loader = self._loader, None
            self._model = loader()
            if self._compile_on_load:
                self._compile_encoder()
        return self._model

    @model.setter
    def model(self, value) -> None:
        self._model = value

    @property
    def device(self):
        embedder = getattr(self.embedding, "embedder", None)
        for module in (self.eager, self._model, getattr(embedder, "eager", None), getattr(embedder, "model", None)):
            if isinstance(module, torch.nn.Module):
                return next(module.parameters()).device
        return next(self.model.parameters()).device

    @property
    def default_batch_size(self) -> int:
        """16 on a CPU (fastest per example for MiniLM-sized models on 2-16 cores), 64 on a GPU."""
        return 16 if self.device.type == "cpu" else 64

    @classmethod
    def load(
        cls, run_or_adapter: str | Path | AdapterInfo, precision: str = "fp32", merge: bool = True,
        compiled: bool = False, dequantized: bool = False,
    ) -> Classifier:  # fmt: skip
        from transformers import AutoTokenizer

        from adapterlab.models import (
            adapter_base,
            dequantize_4bit,
            load_sequence_classifier,
            require_safetensors,
            torch_dtype,
        )

        info = run_or_adapter if isinstance(run_or_adapter, AdapterInfo) else AdapterInfo.read(run_or_adapter)
        if "labels" not in info.task_info:
            raise ModelError(f"{info.path}: this adapter was trained for task '{info.task}', not a classifier")
        if "members" in info.task_info:  # the fold models of `adapterlab cv`, averaged
            return ClassifierEnsemble.load(info, precision, compiled=compiled)
        meta = {**info.task_info, "task": info.task, "base_model": info.base_model.model_dump()}
        tokenizer = AutoTokenizer.from_pretrained(info.path)
        if not meta.get("full_finetune"):
            require_safetensors(info.path)

        def fine_tuned_encoder():
            cfg = info.model
            if meta.get("full_finetune"):
                model = load_sequence_classifier(str(info.path), cfg, meta["labels"], tokenizer.pad_token_id)
            else:
                from peft import PeftModel

                model = load_sequence_classifier(adapter_base(info), cfg, meta["labels"], tokenizer.pad_token_id)
                if dequantized and cfg.quantization == "4bit":  # the exact trained-against weights, mergeable
                    model = dequantize_4bit(model, torch.float32)
                    cfg = cfg.model_copy(update={"quantization": "none"})
                model = PeftModel.from_pretrained(model, info.path)
                if merge and cfg.quantization == "none":
                    model = model.merge_and_unload()
            if precision != "fp32" and cfg.quantization == "none":
                model = model.to(torch_dtype(precision))
            return model.eval()

        tfidf = TfidfModel.load(info.path) if meta.get("tfidf") else None
        embedding = None
        if meta.get("embedding"):  # its tuned encoder (or the frozen base, loaded again) beside the fine-tuned one
            embedding = EmbeddingModel.open(info.path, adapter_base(info), info.model, tokenizer, precision)
        classifier = cls(None, tokenizer, meta, tfidf=tfidf, embedding=embedding, _loader=fine_tuned_encoder)
        # What ships without the fine-tuned encoder (embedding + TF-IDF, often) never loads it unless a caller
        # asks for it (part_proba, export): the server and predict keep one encoder in memory, not two.
        if classifier.encoder_weight > 0 or not (tfidf or embedding):
            _ = classifier.model
        if compiled:
            classifier.compile_model()
        return classifier

    def compile_model(self) -> None:
        """Compile the model (and the embedding part's encoder, when one ships) with inductor and frozen
        weights, lazily on the first batch; see :mod:`adapterlab.tasks.classify.compiled`."""
        if self._model is None:  # not loaded yet: compiled when it is
            self._compile_on_load = True
        else:
            self._compile_encoder()
        if self.embedding is not None and self.embedding.embedder is not None:
            self.embedding.embedder.compile()

    def _compile_encoder(self) -> None:
        self.eager = self._model
        self._model, self._attention = compile_frozen(self._model)

    def _forward(self, ids, mask):
        try:
            return self.model(input_ids=ids, attention_mask=mask).logits
        except Exception as error:  # any compiler failure (no C++ compiler, unsupported op): stay eager
            if self.eager is None:
                raise
            self.model, self.eager = back_to_eager(self.eager, self._attention, error), None
            return self.model(input_ids=ids, attention_mask=mask).logits

    def _probabilities(self, ids: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        device = self.device
        with torch.inference_mode():
            logits = self._forward(
                torch.from_numpy(ids).to(device), None if mask is None else torch.from_numpy(mask).to(device)
            ).float()
            return torch.softmax(logits, dim=-1).cpu().numpy()


# An export's files, written by ``adapterlab export --format onnx`` (stages/export/onnx.py) and read back here.
ONNX_MODEL, ONNX_INT8_MODEL, EXPORT_META = "model.onnx", "model.int8.onnx", "adapterlab-export.json"
ONNX_EMBEDDER = "embedder.onnx"  # the encoder of an embedding part, when one ships
EXPORT_EXTRA = "pip install 'adapterlab[export]'"


@dataclass
class ONNXClassifier(TextClassifier):
    """A classifier exported to ONNX, run by onnxruntime: the export's own tokenizer, labels and cleaning steps,
    and the same batching as :class:`Classifier`, so both label a file alike."""

    session: Any
    tokenizer: Any
    meta: dict[str, Any]
    labels: list[str] = field(init=False)
    tfidf: TfidfModel | None = None
    embedding: EmbeddingModel | None = None

    def __post_init__(self) -> None:
        self.labels = list(self.meta["labels"])

    @classmethod
    def load(cls, folder: str | Path, model_file: str = ONNX_MODEL, threads: int | None = None) -> ONNXClassifier:
        """The ONNX model ``model_file`` of an export folder; ``threads``: onnxruntime's intra-op threads."""
        try:
            import onnxruntime as ort
        except ImportError:
            raise ModelError(f"onnxruntime is not installed; {EXPORT_EXTRA}") from None
        from transformers import AutoTokenizer

        folder = Path(folder)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        available = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        session = ort.InferenceSession(str(folder / model_file), options, providers=providers)
        meta = read_json(folder / EXPORT_META)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        tfidf = TfidfModel.load(folder) if meta.get("tfidf") else None
        embedding = None
        if meta.get("embedding"):
            embedder = ONNXEmbedder(ort.InferenceSession(str(folder / ONNX_EMBEDDER), options, providers=providers),
                                    tokenizer)  # fmt: skip
            embedding = EmbeddingModel.load(folder).attach(embedder)
        return cls(session, tokenizer, meta, tfidf=tfidf, embedding=embedding)

    @classmethod
    def for_run(cls, info: AdapterInfo, threads: int | None = None) -> ONNXClassifier:
        """The run's ONNX export, refused when missing, failed or made from an earlier version of the adapter."""
        run = info.path.parent
        folder = RunDir(run).export_dir("onnx")
        again = f"`adapterlab export {run} --format onnx`"
        if not (folder / ONNX_MODEL).is_file() or not (folder / EXPORT_META).is_file():
            raise ModelError(f"{folder}: no ONNX export of this classifier yet; run {again} first")
        parity = read_json(folder / "parity.json") if (folder / "parity.json").is_file() else {}
        if not parity.get("passed"):
            raise ModelError(f"{folder}: this ONNX export did not pass its parity check (parity.json); run {again}")
        if read_json(folder / EXPORT_META).get("adapter_weights") != weights_digest(info.path):
            raise ModelError(f"{folder}: exported from an earlier version of this adapter; run {again} again")
        return cls.load(folder, threads=threads)

    def _probabilities(self, ids: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        # The graph always takes a mask: all ones where the batch has no padding, as the PyTorch path implies.
        mask = np.ones_like(ids) if mask is None else mask
        (logits,) = self.session.run(["logits"], {"input_ids": ids, "attention_mask": mask})
        return softmax(logits.astype(np.float32))


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def weights_digest(adapter_dir: Path) -> str:
    """SHA-256 of an adapter's safetensors files: an export records it, so a retrained run's stale export is
    refused rather than used."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(adapter_dir.glob("*.safetensors")):
        with path.open("rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()


class ClassifyPredictor:
    """``adapterlab predict`` for a classifier: a label per row (and a probability per label with ``proba``).

    A row whose text is empty (or empty after cleaning) gets no label and is counted. When the file also has the
    label column, rows with labels the classifier does not know are counted and accuracy is reported on the rest.
    """

    def __init__(self, info: AdapterInfo, precision: str, *, proba: bool = False, text_columns: list[str] | None = None,
                 batch_size: int | None = None, compiled: bool = False, onnx: bool = False,
                 **_options: Any):  # fmt: skip
        if onnx and compiled:
            raise ModelError("--compile compiles the PyTorch model; leave it out with --onnx")
        self.classifier: TextClassifier = (
            ONNXClassifier.for_run(info) if onnx else Classifier.load(info, precision, compiled=compiled)
        )
        self.columns = list(text_columns or self.classifier.meta["text_columns"])
        self.proba, self.batch_size = proba, batch_size
        labels = self.classifier.labels
        self.output_columns = ["label", *([f"p_{label}" for label in labels] if proba else [])]

    def predict(self, rows) -> list[dict[str, str] | Skipped]:
        texts = [self.classifier.text_of(row, self.columns) for row in rows]
        usable = [i for i, text in enumerate(texts) if text.strip()]
        probs = self.classifier.predict_proba([texts[i] for i in usable], self.batch_size)
        outputs: list[dict[str, str] | Skipped] = [Skipped("empty_text") for _ in rows]
        labels = self.classifier.labels
        for i, p in zip(usable, probs, strict=True):
            out = {"label": labels[int(p.argmax())]}
            if self.proba:
                out.update({f"p_{label}": f"{x:.6f}" for label, x in zip(labels, p, strict=True)})
            outputs[i] = out
        return outputs

    def describe(self, rows, outputs) -> dict[str, Any]:
        """Label counts, and accuracy when the file carries the training label column (``notes`` are shown)."""
        from collections import Counter

        labels = self.classifier.labels
        predicted = {i: o["label"] for i, o in enumerate(outputs) if isinstance(o, dict)}
        report: dict[str, Any] = {"label_counts": dict(sorted(Counter(predicted.values()).items()))}
        label_column = self.classifier.meta.get("label_column")
        if not label_column or not any(label_column in row for row in rows):
            return report
        truth = {i: (row.get(label_column) or "").strip() for i, row in enumerate(rows)}
        unknown = Counter(v for v in truth.values() if v and v not in labels)
        scored = [i for i in predicted if truth[i] in labels]
        report["labelled"] = {
            "unknown_labels": dict(unknown),
            "unknown_label_rows": sum(unknown.values()),
            "missing_label_rows": sum(1 for v in truth.values() if not v),
            "scored_rows": len(scored),
            "accuracy": sum(predicted[i] == truth[i] for i in scored) / len(scored) if scored else None,
        }
        report["notes"] = self.notes(report["labelled"])
        return report

    @staticmethod
    def notes(labelled: dict[str, Any]) -> list[str]:
        notes = []
        if labelled["unknown_label_rows"]:
            known = ", ".join(f"{k} ({v})" for k, v in labelled["unknown_labels"].items())
            notes.append(f"[yellow]{labelled['unknown_label_rows']} rows carry labels the classifier does not know: "
                         f"{known}[/yellow]")  # fmt: skip
        if labelled["accuracy"] is not None:
            accuracy = labelled["accuracy"]
            notes.append(f"Accuracy on the {labelled['scored_rows']} rows with a known label: {accuracy:.4f}")
        return notes


def merged_model(info: AdapterInfo, precision: str):
    """The classifier with its LoRA merged (a QLoRA base de-quantised first) in ``precision``, and its tokenizer;
    the label map is in the model's config."""
    from adapterlab.models import torch_dtype

    if "members" in info.task_info:
        raise ModelError(f"{info.path}: an ensemble of {len(info.task_info['members'])} fold runs (adapterlab cv) has "
                         "no single model to export; export each fold run, or the single run")  # fmt: skip

    classifier = Classifier.load(info, "fp32", merge=True, dequantized=True)
    return classifier.model.to(torch_dtype(precision)), classifier.tokenizer


# ------------------------------------------------------------------------------------------- fold ensembles


@dataclass
class ClassifierEnsemble(TextClassifier):
    """The fold classifiers of ``adapterlab cv``: each member's shipped probabilities, averaged. The members share
    the recipe (cleaning, columns); a label one member never saw counts as probability 0 in its vote."""

    members: list[Classifier]
    meta: dict[str, Any]
    labels: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.labels = list(self.meta["labels"])
        self.tokenizer = self.members[0].tokenizer

    @classmethod
    def load(cls, info: AdapterInfo, precision: str = "fp32", compiled: bool = False) -> ClassifierEnsemble:
        members = []
        for member in info.task_info["members"]:
            path = (info.path / member).resolve()
            member_info = AdapterInfo.read(path)
            if "members" in member_info.task_info:
                raise ModelError(f"{info.path}: member {path} is an ensemble itself; members are fold runs")
            members.append(Classifier.load(member_info, precision, compiled=compiled))
        meta = {**info.task_info, "task": info.task, "base_model": info.base_model.model_dump()}
        return cls(members, meta)

    @property
    def weights(self) -> dict[str, float]:
        return {"finetuned": 1.0}  # the members' own mixes are inside their predict_proba

    def predict_proba(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        return self._average([m.predict_proba(texts, batch_size) for m in self.members])

    def encoder_proba(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        """The members' fine-tuned encoders alone, averaged."""
        return self._average([m.encoder_proba(texts, batch_size) for m in self.members])

    def part_proba(self, part: str, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        if part != "finetuned":
            raise ModelError(f"a fold ensemble has no single {part} part; each member mixes its own")
        return self.encoder_proba(texts, batch_size)

    def _average(self, probs: list[np.ndarray]) -> np.ndarray:
        total = np.zeros((len(probs[0]), len(self.labels)), dtype=np.float64)
        for member, p in zip(self.members, probs, strict=True):
            columns = [self.labels.index(label) for label in member.labels if label in self.labels]
            kept = [i for i, label in enumerate(member.labels) if label in self.labels]
            total[:, columns] += p[:, kept]
        return (total / len(self.members)).astype(np.float32)


def write_ensemble(members: list[AdapterInfo], single: AdapterInfo, adapter_dir: Path) -> None:
    """``adapter_dir/adapterlab.json`` of a fold ensemble: the members' (and the single run's) adapter folders as
    paths relative to it, the labels of every member, the cleaning and columns of the recipe."""
    import os

    adapter_dir.mkdir(parents=True, exist_ok=True)
    labels = list(single.task_info["labels"])
    for member in members:
        labels += [label for label in member.task_info["labels"] if label not in labels]
    keep = ("text_columns", "label_column", "id_column", "clean", "max_tokens", "truncation", "full_finetune")
    task_info = {k: single.task_info[k] for k in keep if k in single.task_info}
    task_info |= {
        "labels": labels, "shipped": "folds", "members": [os.path.relpath(m.path, adapter_dir) for m in members],
        "single": os.path.relpath(single.path, adapter_dir),
    }  # fmt: skip
    info = single.model_copy(update={"task_info": task_info, "data_fingerprint": single.data_fingerprint})
    info.save(adapter_dir)
