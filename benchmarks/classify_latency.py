"""Classifier inference: our predictor vs the same model through a plain transformers ``pipeline``, one run.

    python benchmarks/classify_latency.py [--run runs/review-classify] [--single 200]

Same trained classifier (LoRA merged into the MiniLM encoder), same cleaned review texts. Per-example latency
at batch 1 (p50/p95 over ``--single`` texts, after a warm-up) and batched throughput over every text:

- ``pipeline``: ``transformers.pipeline("text-classification")`` with the merged fp32 model, called per text
  for latency and on the whole list (its default batching) for throughput, as a notebook does;
- ``ours fp32`` and ``ours bf16``: ``adapterlab.classifier.Classifier`` (length-grouped batches of 64).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def timed_single(predict, texts: list[str]) -> dict[str, float]:
    import numpy as np

    for text in texts[:3]:
        predict([text])
    times = []
    for text in texts:
        began = time.perf_counter()
        predict([text])
        times.append((time.perf_counter() - began) * 1000)
    return {"p50_ms": float(np.percentile(times, 50)), "p95_ms": float(np.percentile(times, 95)),
            "mean_ms": statistics.fmean(times)}  # fmt: skip


def timed_batch(predict, texts: list[str]) -> float:
    predict(texts[:64])
    began = time.perf_counter()
    predict(texts)
    return len(texts) / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/review-classify")
    parser.add_argument("--single", type=int, default=200)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()

    import torch
    from transformers import pipeline

    from adapterlab.classifier import Classifier
    from adapterlab.runs import read_jsonl

    run = Path(args.run)
    texts = [r["text"] for split in ("train", "val", "test") for r in read_jsonl(run / "data" / f"{split}.jsonl")]
    texts = [t for t in texts if t]
    single = texts[: args.single]
    results = {"texts": len(texts), "single": len(single), "torch_threads": torch.get_num_threads()}

    ours32 = Classifier.load(run, "fp32")
    pipe = pipeline("text-classification", model=ours32.model, tokenizer=ours32.tokenizer, device=-1,
                    truncation=True, max_length=ours32.meta["max_tokens"])  # fmt: skip
    results["pipeline"] = {**timed_single(pipe, single), "examples_per_s": timed_batch(pipe, texts)}
    print("pipeline", results["pipeline"], flush=True)
    for precision, classifier in (("fp32", ours32), ("bf16", Classifier.load(run, "bf16"))):
        results[f"ours_{precision}"] = {
            **timed_single(lambda batch, c=classifier: c.predict_proba(batch, batch_size=1), single),
            "examples_per_s": timed_batch(lambda batch, c=classifier: c.predict_proba(batch, batch_size=64), texts),
        }
        print(f"ours {precision}", results[f"ours_{precision}"], flush=True)
    best = max(("ours_fp32", "ours_bf16"), key=lambda k: results[k]["examples_per_s"])
    results["throughput_vs_pipeline"] = results[best]["examples_per_s"] / results["pipeline"]["examples_per_s"]
    results["batch1_p50_best_ms"] = min(results["ours_fp32"]["p50_ms"], results["ours_bf16"]["p50_ms"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "classify_latency.json").write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results.items() if not isinstance(v, dict)}, indent=2))


if __name__ == "__main__":
    main()
