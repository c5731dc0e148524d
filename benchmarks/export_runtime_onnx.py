"""ONNX Runtime (fp32, int8) against our PyTorch classifier (fp32, bf16, eager) on the review classifier, one run.

    python benchmarks/export_runtime_onnx.py [--run runs/review-classify] [--single 200]

The run's ONNX export (``adapterlab export RUN --format onnx --quant int8``; made here if missing) and the run's
classifier, on the same cleaned review texts, with the same tokenisation and length-grouped batches (16 texts):

- ``torch_fp32`` / ``torch_bf16``: ``adapterlab.tasks.classify.infer.Classifier`` (LoRA merged), eager;
- ``onnx_fp32`` / ``onnx_int8``: ``ONNXClassifier`` on ``model.onnx`` / ``model.int8.onnx``, onnxruntime's CPU
  provider with as many intra-op threads as torch uses.

Latency at batch 1 (p50/p95 over ``--single`` texts) and batched throughput over every text (best of 3), the
predictors taking turns (``classify_latency.timed_single`` / ``timed_batch``: this VM's speed drifts), and each
one's weighted F1 on the test split (batches of 16; int8's dynamic activation scales depend on the batch).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from classify_latency import timed_batch, timed_single


def predictors(run: Path, threads: int) -> dict:
    """The four classifiers by name; the export is made first when the run has none with an int8 model."""
    from adapterlab.runs import RunDir
    from adapterlab.stages.export import export
    from adapterlab.tasks.classify.infer import Classifier, ONNXClassifier

    folder = RunDir(run).export_dir("onnx")
    if not (folder / "model.onnx").is_file() or not (folder / "model.int8.onnx").is_file():
        export(run, "onnx", quant=["int8"])
    found = {
        "torch_fp32": Classifier.load(run, "fp32"),
        "torch_bf16": Classifier.load(run, "bf16"),
        "onnx_fp32": ONNXClassifier.load(folder, threads=threads),
    }
    if (folder / "model.int8.onnx").is_file():  # absent when the F1 gate refused it
        found["onnx_int8"] = ONNXClassifier.load(folder, "model.int8.onnx", threads=threads)
    return found


def split_f1(classifier, rows: list[dict]) -> float:
    from adapterlab.metrics.classification import classification_metrics

    labels = classifier.labels
    rows = [r for r in rows if r.get("text") and r.get("label") in labels]
    predicted = classifier.predict_proba([r["text"] for r in rows]).argmax(axis=1).tolist()
    return classification_metrics([labels.index(r["label"]) for r in rows], predicted, len(labels))["weighted_f1"]


def model_mb(run: Path, name: str) -> float:
    from adapterlab.runs import RunDir

    if name.startswith("onnx"):
        files = [RunDir(run).export_dir("onnx") / ("model.int8.onnx" if name == "onnx_int8" else "model.onnx")]
    else:
        files = list((run / "adapter").glob("*.safetensors"))
    size = sum(f.stat().st_size for f in files) / 2**20
    return size / 2 if name == "torch_bf16" else size  # bf16 halves the fp32 weights in memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/review-classify")
    parser.add_argument("--single", type=int, default=200)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()

    import onnxruntime
    import torch

    from adapterlab.runs import RunDir, read_jsonl

    run = Path(args.run)
    threads = torch.get_num_threads()
    models = predictors(run, threads)
    splits = {s: read_jsonl(RunDir(run).split_file(s)) for s in ("train", "val", "test")}
    texts = [r["text"] for rows in splits.values() for r in rows if r["text"]]
    single = texts[: args.single]
    results: dict = {"texts": len(texts), "single": len(single), "threads": threads,
                     "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__}}  # fmt: skip
    print("batch 1, the predictors taking turns ...", flush=True)
    latencies = timed_single({n: (lambda b, c=c: c.predict_proba(b, batch_size=1)) for n, c in models.items()}, single)
    print("batched, the predictors taking turns ...", flush=True)
    rates = timed_batch({n: (lambda b, c=c: c.predict_proba(b)) for n, c in models.items()}, texts)
    for name, classifier in models.items():
        results[name] = {**latencies[name], "examples_per_s": rates[name], "test_weighted_f1": split_f1(
            classifier, splits["test"]), "model_mb": model_mb(run, name)}  # fmt: skip
        print(name, results[name], flush=True)
    base = results["torch_fp32"]
    for name in models:
        results[name]["p50_speedup_vs_torch_fp32"] = base["p50_ms"] / results[name]["p50_ms"]
        results[name]["throughput_vs_torch_fp32"] = results[name]["examples_per_s"] / base["examples_per_s"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "export_onnx.json").write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results.items() if isinstance(v, dict) and "p50_ms" in v}, indent=2))


if __name__ == "__main__":
    main()
