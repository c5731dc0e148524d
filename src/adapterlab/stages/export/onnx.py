"""``--format onnx``: a classifier as an ONNX graph that onnxruntime runs without PyTorch.

The task merges the classifier into fp32 weights loaded from safetensors (``Task.merged_model``; nothing is
unpickled), and ``torch.onnx.export`` (the dynamo exporter) writes its logits as ``model.onnx``: inputs
``input_ids`` and ``attention_mask`` (int64, batch x sequence, both axes dynamic), output ``logits`` (batch x
labels). They are the two inputs our PyTorch classifier feeds, so the graph computes what prediction computes
(``token_type_ids`` are left to the model's default of zeros, which is what tokenising one text gives). The
tokenizer files, the label map and the cleaning steps (``adapterlab-export.json``) lie beside it, so a service
can clean, tokenise and classify exactly as training did.

``--quant int8``: onnxruntime's dynamic quantisation (int8 weights per output channel, activations quantised on
the fly) into ``model.int8.onnx``, kept only when the test split's weighted F1 drops by at most
:data:`INT8_MAX_F1_DROP` against the fp32 ONNX model; otherwise it is not written, and parity.json and the
console say why.

Parity (onnxruntime): the fp32 graph and the PyTorch classifier (the adapter, fp32) label every test text alike
and their class probabilities differ by at most ``PROBABILITY_TOLERANCE["fp32"]``.

When the run ships other parts, alone or averaged with the encoder (chosen on validation, ``shipped`` and
``weights`` in the metadata), the graph is still the fine-tuned encoder; a TF-IDF model (``tfidf.json``,
``tfidf.safetensors``) is copied beside it, an embedding model (``embedding.json``, ``embedding.safetensors``)
too with its encoder (tuned on pairs, or the frozen base) as a second graph (``embedder.onnx``, checked for parity
like the first), and ``adapterlab predict --onnx`` mixes them as ``predict`` does. The graph alone then computes
the encoder's part only (README.md says so).
"""

from __future__ import annotations

import logging
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from adapterlab.console import console
from adapterlab.metrics.classification import classification_metrics
from adapterlab.models import adapter_base
from adapterlab.runs import read_jsonl, write_json
from adapterlab.stages.export import ExportError, ExportJob
from adapterlab.stages.export.merged import probability_parity
from adapterlab.tasks.classify.embedding import EmbeddingModel
from adapterlab.tasks.classify.infer import (
    EXPORT_EXTRA,
    EXPORT_META,
    ONNX_EMBEDDER,
    ONNX_INT8_MODEL,
    ONNX_MODEL,
    Classifier,
    ONNXClassifier,
    weights_digest,
)
from adapterlab.tasks.classify.tfidf import TfidfModel

# Largest fall of the test split's weighted F1 (int8 against fp32 ONNX) for which model.int8.onnx is kept.
INT8_MAX_F1_DROP = 0.01
# One protobuf file holds at most 2 GB; larger models keep their weights in model.onnx.data beside it.
SINGLE_FILE_BYTES = 1_800_000_000


class ONNXExporter:
    name = "onnx"

    def __init__(self) -> None:
        self.int8: dict[str, Any] | None = None  # the int8 gate's figures, when --quant int8 asked for it

    def write(self, job: ExportJob) -> list[Path]:
        want_int8 = check_options(job)
        model, tokenizer = job.task.merged_model(job.info, "fp32")
        external = export_graph(model, tokenizer, job.folder / ONNX_MODEL)
        del model
        tokenizer.save_pretrained(str(job.folder))
        write_json(job.folder / EXPORT_META, export_meta(job))
        if job.info.task_info.get("tfidf"):  # what ships averages the graph with TF-IDF: it travels along
            for name in TfidfModel.files():
                shutil.copy2(job.info.path / name, job.folder / name)
        if job.info.task_info.get("embedding"):  # ... or with the embedding part's encoder: a second graph
            encoder = EmbeddingModel.open(
                job.info.path, adapter_base(job.info), job.info.model, tokenizer
            ).embedder.model
            export_graph(encoder, tokenizer, job.folder / ONNX_EMBEDDER, output="last_hidden_state")
            del encoder
            for name in EmbeddingModel.files():
                shutil.copy2(job.info.path / name, job.folder / name)
        if want_int8:
            self.int8 = quantize_gated(job, external)
        return sorted(p for p in job.folder.iterdir() if p.is_file())

    def check(self, job: ExportJob) -> dict[str, Any]:
        texts, truth = test_split(job)
        torch_side, onnx_side = Classifier.load(job.info, "fp32", merge=False), ONNXClassifier.load(job.folder)
        # Parity of the graph itself (the encoder); the F1s are of what ships (with its TF-IDF part, if any).
        result = probability_parity(torch_side.encoder_proba(texts), onnx_side.encoder_proba(texts), "fp32",
                                    "onnxruntime")  # fmt: skip
        if torch_side.embedding is not None:  # the embedding part's graph, checked the same way
            embedding = probability_parity(torch_side.part_proba("embedding", texts),
                                           onnx_side.part_proba("embedding", texts), "fp32", "onnxruntime")  # fmt: skip
            result["embedding_part"] = embedding
            result["passed"] = bool(result["passed"] and embedding["passed"])
            result["summary"] += f"; embedding part: {embedding['summary']}"
        if truth:
            reference, exported = torch_side.predict_proba(texts), onnx_side.predict_proba(texts)
            labels = len(reference[0])
            result["weighted_f1"] = {"pytorch_fp32": weighted_f1(truth, reference[: len(truth)], labels),
                                     "onnx_fp32": weighted_f1(truth, exported[: len(truth)], labels)}  # fmt: skip
            result["shipped"] = job.info.task_info.get("shipped", "finetuned")
        result["versions"] = runtime_versions()
        if self.int8 is not None:
            result["int8"] = self.int8
            result["summary"] += f"; {self.int8['summary']}"
        return result

    def readme(self, job: ExportJob) -> str:
        return README.format(run=job.run.root.name, adapter=job.info.path, base=job.info.base_model.spec,
                             int8=INT8_NOTE if self.int8 and self.int8["kept"] else "")  # fmt: skip


def check_options(job: ExportJob) -> bool:
    """``--dtype`` / ``--quant`` checked and the exporter's packages found before any model loads; True for int8."""
    dtype, quant = job.options.get("dtype") or "auto", list(job.options.get("quant") or [])
    if dtype not in ("auto", "fp32"):
        raise ExportError(f"--dtype {dtype}: an ONNX export is fp32 (add --quant int8 for an int8 model too)")
    if unknown := [q for q in quant if q != "int8"]:
        raise ExportError(f"--quant {unknown[0]}: int8 only for an ONNX export (--quant int8)")
    missing = [name for name in ("onnx", "onnxscript", "onnxruntime") if not _importable(name)]
    if missing:
        raise ExportError(f"--format onnx needs {', '.join(missing)}; {EXPORT_EXTRA}")
    job.options["dtype"] = "fp32"
    return "int8" in quant


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def export_graph(model, tokenizer, path: Path, output: str = "logits") -> bool:
    """Write the model's ``output`` (``logits``, or ``last_hidden_state`` of a bare base) as an ONNX graph with
    dynamic batch and sequence axes; True when its weights went to an external data file (models over ~2 GB)."""
    import torch

    class Logits(torch.nn.Module):  # one named output, whatever else the model returns
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            return getattr(self.inner(input_ids=input_ids, attention_mask=attention_mask), output)

    # Two rows of different lengths, so the traced graph pads and masks like a real batch.
    example = tokenizer(["a text", "a longer text to trace the classifier with"], padding=True, return_tensors="pt")
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    external = sum(p.numel() * p.element_size() for p in model.parameters()) > SINGLE_FILE_BYTES
    with quiet_logs():
        torch.onnx.export(
            Logits(model).eval(), (example["input_ids"], example["attention_mask"]), str(path), dynamo=True,
            input_names=["input_ids", "attention_mask"], output_names=[output], external_data=external,
            dynamic_shapes=({0: batch, 1: sequence}, {0: batch, 1: sequence}), verbose=False,
        )  # fmt: skip
    return external


def export_meta(job: ExportJob) -> dict[str, Any]:
    """``adapterlab-export.json``: what a service needs beside the graph, and which adapter it came from."""
    keys = ("labels", "clean", "text_columns", "max_tokens", "truncation", "label_column", "id_column", "shipped",
            "weights", "encoder_weight", "tfidf", "embedding")  # fmt: skip
    return {
        "format": "onnx", "dtype": "fp32", "task": job.info.task, "base_model": job.info.base_model.spec,
        "adapter": str(job.info.path), "adapter_weights": weights_digest(job.info.path),
        "data_fingerprint": job.info.data_fingerprint, "inputs": ["input_ids", "attention_mask"],
        "outputs": ["logits"], **{k: job.info.task_info[k] for k in keys if k in job.info.task_info},
    }  # fmt: skip


def quantize_gated(job: ExportJob, external: bool) -> dict[str, Any]:
    """Quantise to int8 and keep ``model.int8.onnx`` only if the test split's weighted F1 holds."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    texts, truth = test_split(job)
    method = {"method": "onnxruntime quantize_dynamic", "per_channel": True, "weight_type": "int8"}
    if not truth:
        summary = "int8 refused: no labelled test split to measure its F1 on; model.int8.onnx not written"
        console.print(f"[yellow]{summary}[/yellow]")
        return {"requested": True, "kept": False, "quantization": method, "summary": summary}
    target = job.folder / ONNX_INT8_MODEL
    with quiet_logs():
        quantize_dynamic(job.folder / ONNX_MODEL, target, per_channel=True, weight_type=QuantType.QInt8,
                         use_external_data_format=external)  # fmt: skip
    fp32 = ONNXClassifier.load(job.folder).predict_proba(texts[: len(truth)])
    int8 = ONNXClassifier.load(job.folder, ONNX_INT8_MODEL).predict_proba(texts[: len(truth)])
    result = int8_gate(truth, fp32, int8) | {"quantization": method}
    if not result["kept"]:
        for path in job.folder.glob(f"{ONNX_INT8_MODEL}*"):
            path.unlink()
    if not result["kept"]:  # the export goes on with model.onnx; this line says plainly what was not written
        console.print(f"[yellow]{result['summary']}[/yellow]", soft_wrap=True)
    return result


def int8_gate(truth: list[int], fp32, int8) -> dict[str, Any]:
    """The int8 model against the fp32 one on labelled texts: weighted F1 of each, and label agreement."""
    labels = fp32.shape[1]
    f1_fp32, f1_int8 = weighted_f1(truth, fp32, labels), weighted_f1(truth, int8, labels)
    drop = f1_fp32 - f1_int8
    agreement = float((fp32.argmax(axis=1) == int8.argmax(axis=1)).mean())
    kept = drop <= INT8_MAX_F1_DROP
    figures = (
        f"test weighted F1 {f1_int8:.4f} vs fp32 {f1_fp32:.4f} ({f1_int8 - f1_fp32:+.4f}; kept if it falls by at most "
        f"{INT8_MAX_F1_DROP}), labels agree with fp32 on {agreement:.1%} of {len(truth)} texts"
    )
    summary = f"int8 kept: {figures}" if kept else f"int8 refused, model.int8.onnx not written: {figures}"
    return {
        "requested": True, "kept": kept, "texts": len(truth), "weighted_f1_fp32": f1_fp32,
        "weighted_f1_int8": f1_int8, "f1_drop": drop, "max_f1_drop": INT8_MAX_F1_DROP,
        "label_agreement_with_fp32": agreement, "summary": summary,
    }  # fmt: skip


def weighted_f1(truth: list[int], probs, labels: int) -> float:
    return classification_metrics(truth, probs.argmax(axis=1).tolist(), labels)["weighted_f1"]


def test_split(job: ExportJob) -> tuple[list[str], list[int]]:
    """The test split's cleaned texts, those with a known label first, and those labels (as label ids)."""
    test = job.run.split_file("test")
    rows = [r for r in read_jsonl(test) if r.get("text")] if test.is_file() else []
    names = list(job.info.task_info["labels"])
    labelled = [r for r in rows if r.get("label") in names]
    texts = [r["text"] for r in labelled] + [r["text"] for r in rows if r.get("label") not in names]
    return texts or ["a short text to classify"], [names.index(r["label"]) for r in labelled]


def runtime_versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


@contextmanager
def quiet_logs():
    """The exporter and the quantiser log progress and advice (pre-processing, torchvision ops) as warnings on
    the root logger; the export prints its own one-line outcome instead."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


INT8_NOTE = """
`model.int8.onnx` is the same classifier with int8 weights (onnxruntime dynamic quantisation, per channel): about
a quarter of the size; `parity.json` (`int8`) holds its test F1 next to the fp32 model's. Load it instead of
`model.onnx` in the code above.
"""

README = """# {run}: ONNX classifier

The classifier of `{adapter}` (base {base}) merged into fp32 weights and exported with `torch.onnx.export`.
onnxruntime runs it; PyTorch is not needed. `parity.json` holds the comparison with the PyTorch classifier.

- `model.onnx`: inputs `input_ids`, `attention_mask` (int64, batch x sequence), output `logits` (batch x labels)
- `tokenizer.json` (+ `tokenizer_config.json`): the tokenizer
- `adapterlab-export.json`: `labels` (index -> label), `clean` (the text cleaning steps used in training),
  `max_tokens` (truncation length), `truncation` (`head_tail`: the first and last halves of a longer text),
  `shipped`, `weights`, `tfidf` and `embedding` (which parts are in the classifier, with which share)
{int8}
When `shipped` is not `finetuned`, the run's classifier is the `weights`-weighted average of up to three parts'
probabilities: `finetuned` (the graph above), `tfidf` (a TF-IDF + logistic-regression model: vocabularies, IDF
weights and coefficients in the two `tfidf` files) and `embedding` (logistic regression, `embedding.safetensors`,
on the embeddings of its own encoder, tuned on pairs of training texts: `embedder.onnx` gives `last_hidden_state`,
mean-pooled over each piece of up to `chunk` tokens, normalised, averaged over the pieces and normalised again, as
`embedding.json` says). The code below runs the graph alone; `adapterlab predict RUN FILE --onnx` runs every part.

Clean each text as in training first: `adapterlab.data.clean.clean_text(text, meta["clean"])` does it (a plain
Python module: it loads neither PyTorch nor transformers).

```python
import json

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from adapterlab.data.clean import clean_text

meta = json.load(open("adapterlab-export.json"))
tokenizer = Tokenizer.from_file("tokenizer.json")
session = ort.InferenceSession("model.onnx")


def token_ids(text):
    # The text cleaned and cut as in training: a longer text keeps its head ("head") or its first and last
    # halves ("head_tail"), and the tokenizer's special tokens.
    encoding = tokenizer.encode(clean_text(text, meta["clean"]))
    ids, special = encoding.ids, encoding.special_tokens_mask
    if len(ids) <= meta["max_tokens"]:
        return ids
    front, back = special.index(0), special[::-1].index(0)
    room = meta["max_tokens"] - front - back
    tail = room // 2 if meta["truncation"] == "head_tail" else 0
    content = ids[front : len(ids) - back]
    kept = content[: room - tail] + (content[len(content) - tail :] if tail else [])
    return ids[:front] + kept + ids[len(ids) - back :]


def label(text):
    ids = np.array([token_ids(text)], dtype=np.int64)
    logits = session.run(["logits"], {{"input_ids": ids, "attention_mask": np.ones_like(ids)}})[0]
    return meta["labels"][int(logits[0].argmax())]


print(label("Great phone, the battery lasts two days"))
```

Or, with adapterlab installed: `adapterlab predict RUN FILE --onnx`.
"""
