"""Classifier inference: our predictor vs the same model through a plain transformers ``pipeline``, one run.

    python benchmarks/classify_latency.py [--run runs/review-classify] [--single 200]

Same trained classifier (MiniLM, LoRA merged when the run used LoRA), same cleaned review texts. Latency
at batch 1 (p50/p95 over ``--single`` texts, after a warm-up) and batched throughput over every text (best of 3):

- ``pipeline``: ``transformers.pipeline("text-classification")`` with the same fp32 model, called per text
  for latency and on the whole list (its default batching) for throughput, as a notebook does;
- ``ours fp32`` and ``ours bf16``: ``adapterlab.tasks.classify.infer.Classifier`` (length-grouped batches, 16 on a CPU);
- ``ours bf16 compiled``: the same after ``torch.compile`` with frozen weights (``adapterlab predict --compile``);
  the one-off compile time is reported next to it;
- ``encoder_only_bf16_compiled``: when the run ships other parts averaged with the encoder (``select:``: TF-IDF,
  the frozen-embedding part), the ``ours`` rows time what ships (every part) and this row the compiled fine-tuned
  encoder alone, so the other parts' cost is visible.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def timed_single(predictors: dict, texts: list[str], block: int = 20) -> dict[str, dict[str, float]]:
    """Milliseconds per text at batch 1. The predictors take turns by blocks of texts, so drift hits all alike;
    within a block one predictor runs alone after an untimed call, as a server does (switching models on every
    text would time cold caches instead)."""
    import numpy as np

    times: dict[str, list[float]] = {name: [] for name in predictors}
    for start in range(0, len(texts), block):
        chunk = texts[start : start + block]
        for name, predict in predictors.items():
            predict(chunk[:1])
            for text in chunk:
                began = time.perf_counter()
                predict([text])
                times[name].append((time.perf_counter() - began) * 1000)
    return {
        name: {
            "p50_ms": float(np.percentile(t, 50)),
            "p95_ms": float(np.percentile(t, 95)),
            "mean_ms": statistics.fmean(t),
        }
        for name, t in times.items()
    }


def timed_batch(predictors: dict, texts: list[str], rounds: int = 3) -> dict[str, float]:
    """Examples/s over every text, best of ``rounds``; each round runs every predictor once, in turn."""
    for predict in predictors.values():
        predict(texts[:64])
    best = {name: float("inf") for name in predictors}
    for _ in range(rounds):
        for name, predict in predictors.items():
            began = time.perf_counter()
            predict(texts)
            best[name] = min(best[name], time.perf_counter() - began)
    return {name: len(texts) / seconds for name, seconds in best.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/review-classify")
    parser.add_argument("--single", type=int, default=200)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()

    import torch
    from transformers import pipeline

    from adapterlab.runs import RunDir, read_jsonl
    from adapterlab.tasks.classify.infer import Classifier

    run = Path(args.run)
    texts = [r["text"] for split in ("train", "val", "test") for r in read_jsonl(RunDir(run).split_file(split))]
    texts = [t for t in texts if t]
    single = texts[: args.single]
    results = {"texts": len(texts), "single": len(single), "torch_threads": torch.get_num_threads()}

    ours32 = Classifier.load(run, "fp32")
    pipe = pipeline("text-classification", model=ours32.model, tokenizer=ours32.tokenizer, device=-1,
                    truncation=True, max_length=ours32.meta["max_tokens"])  # fmt: skip
    bf16 = Classifier.load(run, "bf16")
    compiled = Classifier.load(run, "bf16", compiled=True)
    began = time.perf_counter()
    compiled.predict_proba(texts[:64])  # inductor compiles on the first batch
    results["compile_s"] = time.perf_counter() - began
    reference = bf16.predict(texts)
    same = sum(a == b for a, b in zip(compiled.predict(texts), reference, strict=True))
    results["compiled_labels_equal_eager"] = same

    classifiers = {"ours_fp32": ours32, "ours_bf16": bf16, "ours_bf16_compiled": compiled}
    single_calls = {"pipeline": pipe} | {
        name: (lambda batch, c=c: c.predict_proba(batch, batch_size=1)) for name, c in classifiers.items()
    }
    batch_calls = {"pipeline": pipe} | {
        name: (lambda batch, c=c: c.predict_proba(batch)) for name, c in classifiers.items()
    }
    if set(compiled.weights) != {"finetuned"}:  # what ships mixes in other parts: their cost, beside the encoder alone
        single_calls["encoder_only_bf16_compiled"] = lambda batch: compiled.encoder_proba(batch, batch_size=1)
        batch_calls["encoder_only_bf16_compiled"] = lambda batch: compiled.encoder_proba(batch)
        results["shipped"] = compiled.meta.get("shipped")
    print("batch 1, the predictors taking turns ...", flush=True)
    latencies = timed_single(single_calls, single)
    print("batched, the predictors taking turns ...", flush=True)
    rates = timed_batch(batch_calls, texts)
    for name in single_calls:
        results[name] = {**latencies[name], "examples_per_s": rates[name]}
        print(name, results[name], flush=True)
    ours = ("ours_fp32", "ours_bf16", "ours_bf16_compiled")
    pipe_rate = results["pipeline"]["examples_per_s"]
    for key in ours:
        results[key]["vs_pipeline"] = results[key]["examples_per_s"] / pipe_rate
    best = max(ours, key=lambda k: results[k]["examples_per_s"])
    results["throughput_vs_pipeline"] = results[best]["examples_per_s"] / pipe_rate
    results["throughput_vs_pipeline_without_compile"] = max(results[k]["vs_pipeline"] for k in ours[:2])
    results["batch1_p50_best_ms"] = min(results[k]["p50_ms"] for k in ours)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "classify_latency.json").write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results.items() if not isinstance(v, dict)}, indent=2))


if __name__ == "__main__":
    main()
