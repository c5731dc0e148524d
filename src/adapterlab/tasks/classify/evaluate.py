"""``classify`` evaluation: the classifier against cheap baselines on the held-out test split.

Reads top to bottom: the run's test rows (cleaned at prepare time) -> the classifier with its adapter merged ->
a TF-IDF + logistic-regression baseline and the majority class, trained on the same training split -> the
classification metrics of the registry for each system, per-class reports, confusion matrices -> paired
bootstrap of adapter minus TF-IDF -> latency at batch 1 and batched throughput -> report blocks.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from typing import Any

import numpy as np

from adapterlab import metrics
from adapterlab.environment import environment, version_of
from adapterlab.metrics import classification as cm
from adapterlab.metrics.bootstrap import paired_bootstrap
from adapterlab.report import Bullets, Image, Preformatted, Report, Table, Text, fmt
from adapterlab.runs import AdapterInfo, read_jsonl
from adapterlab.task import EvalContext, Evaluation
from adapterlab.tasks.classify.infer import Classifier

SYSTEMS = ("majority", "tfidf", "adapter")
SYSTEM_LABELS = {"majority": "majority class", "tfidf": "TF-IDF + LR", "adapter": "adapter"}
COMPARED = ("accuracy", "weighted_f1", "macro_f1")  # adapter - TF-IDF, with intervals
PART_LABELS = {"finetuned": "fine-tuned encoder", "embedding": "embeddings + LR", "tfidf": "TF-IDF + LR"}


def evaluate(ctx: EvalContext) -> Evaluation:
    cfg, rows, seed = ctx.recipe.eval, ctx.rows, ctx.recipe.seed
    train = read_jsonl(ctx.run.split_file("train"))
    classifier = Classifier.load(ctx.info, ctx.precision)
    labels = classifier.labels
    y_true = [labels.index(r["label"]) for r in rows]
    probs = classifier.predict_proba([r["text"] for r in rows], batch_size=cfg.batch_size)
    predictions = {"adapter": probs.argmax(axis=1).tolist()}
    shipped = ctx.info.task_info.get("shipped", "finetuned")
    alone_parts = [] if shipped == "finetuned" else ["finetuned", *(p for p in classifier.weights if p != "finetuned")]
    for part in alone_parts:  # each part alone, shown beside what ships (they decide nothing)
        part_probs = classifier.part_proba(part, [r["text"] for r in rows], batch_size=cfg.batch_size)
        predictions[f"{part}_alone"] = part_probs.argmax(axis=1).tolist()
    single = ctx.info.task_info.get("single")  # a fold ensemble (adapterlab cv): the single run beside it
    if single:
        reference = Classifier.load(AdapterInfo.read((ctx.info.path / single).resolve()), ctx.precision)
        predictions["single"] = reference.predict_proba([r["text"] for r in rows], cfg.batch_size).argmax(1).tolist()
    baseline = cm.tfidf_baseline([r["text"] for r in train], [labels.index(r["label"]) for r in train], seed)
    predictions["tfidf"] = [int(p) for p in baseline.predict([r["text"] for r in rows])]
    majority = Counter(r["label"] for r in train).most_common(1)[0][0]
    predictions["majority"] = [labels.index(majority)] * len(rows)

    scoring = metrics.LabelContext(y_true, len(labels))
    scored, _ = metrics.score(["classification"], predictions, scoring)
    systems = {s: {name: result.systems[s].value for name, result in scored.items()} for s in SYSTEMS}
    parts_alone = {
        part: {name: result.systems[f"{part}_alone"].value for name, result in scored.items()} for part in alone_parts
    }
    deltas = {}
    for name in COMPARED:
        delta = paired_bootstrap(scored[name].systems["tfidf"], scored[name].systems["adapter"], cfg.bootstrap, seed)
        deltas[name] = {"delta": delta.delta, "ci95": [delta.low, delta.high], "excludes_zero": delta.excludes_zero}
    if single:
        data_single = {}
        for name in COMPARED:
            delta = paired_bootstrap(scored[name].systems["single"], scored[name].systems["adapter"], cfg.bootstrap,
                                     seed)  # fmt: skip
            data_single[name] = {"single": delta.base, "ensemble": delta.delta + delta.base, "delta": delta.delta,
                                 "ci95": [delta.low, delta.high], "excludes_zero": delta.excludes_zero}  # fmt: skip
        data_single["line"] = ensemble_line(data_single["weighted_f1"])
    data = {
        **ctx.report_header(len(rows)),
        "labels": labels,
        "precision": ctx.precision,
        "seed": seed,
        "bootstrap": cfg.bootstrap,
        "base_model": ctx.info.base_model.spec,
        "majority_label": majority,
        "shipped": shipped,
        "encoder_weight": classifier.encoder_weight,
        "weights": classifier.weights,
        "selection": selection_of(ctx),
        "systems": systems,
        "finetuned_alone": parts_alone.get("finetuned"),  # when something else ships: the encoder's own metrics
        "parts_alone": parts_alone,  # ... and each shipped part's, on the same test split
        **({"ensemble_vs_single": data_single} if single else {}),
        "adapter_vs_tfidf": deltas,
        "per_class": {name: cm.per_class_report(y_true, predictions[name], labels) for name in ("adapter", "tfidf")},
        "confusion": {name: cm.confusion(y_true, predictions[name], len(labels)) for name in ("adapter", "tfidf")},
        "latency": latency(classifier, [r["text"] for r in rows], cfg.batch_size),
        "versions": versions(),
    }
    records = [
        {"id": r["id"], "text": r["text"], "label": r["label"], "predicted": labels[predictions["adapter"][i]],
         "probability": float(probs[i].max()), "tfidf_predicted": labels[predictions["tfidf"][i]]}
        for i, r in enumerate(rows)
    ]  # fmt: skip
    return Evaluation(build_report(ctx, data), records)


def selection_of(ctx: EvalContext) -> dict[str, Any] | None:
    """The validation scores that chose what ships (summary.json), for the report."""
    from adapterlab.runs import read_json

    summary = read_json(ctx.run.summary) if ctx.run.summary.is_file() else {}
    return summary.get("selection")


def versions() -> dict[str, str | None]:
    libraries = environment()["libraries"]
    shown = {k: libraries.get(k) for k in ("adapterlab", "torch", "transformers", "peft")}
    return shown | {"scikit-learn": version_of("scikit-learn")}


def latency(classifier, texts: list[str], batch_size: int, single: int = 64) -> dict[str, float]:
    """Milliseconds per example at batch 1 (what one request waits) and examples/s when batched."""
    sample = texts[:single]
    classifier.predict_proba(sample[:2], batch_size=1)  # warm-up: first calls allocate
    times = []
    for text in sample:
        began = time.perf_counter()
        classifier.predict_proba([text], batch_size=1)
        times.append((time.perf_counter() - began) * 1000)
    many = (texts * (1 + 256 // max(len(texts), 1)))[:256]
    began = time.perf_counter()
    classifier.predict_proba(many, batch_size=batch_size)
    seconds = time.perf_counter() - began
    return {
        "batch1_ms_p50": float(np.percentile(times, 50)),
        "batch1_ms_p95": float(np.percentile(times, 95)),
        "batch1_ms_mean": statistics.fmean(times),
        "batched_examples_per_s": len(many) / seconds,
        "batch_size": batch_size,
    }


def confusion_png(data: dict[str, Any], path) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = data["labels"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.6), dpi=100)
    for ax, name in zip(axes, ("adapter", "tfidf"), strict=True):
        matrix = np.asarray(data["confusion"][name])
        ax.imshow(matrix, cmap="Blues")
        ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        for (i, j), value in np.ndenumerate(matrix):
            if value:
                ax.text(j, i, str(value), ha="center", va="center", fontsize=7,
                        color="white" if value > matrix.max() / 2 else "black")  # fmt: skip
        f1 = data["systems"][name]["weighted_f1"]
        ax.set_title(f"{'adapter' if name == 'adapter' else 'TF-IDF + logistic regression'} (weighted F1 {f1:.3f})")
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


HEADER = ["metric", *(SYSTEM_LABELS[s] for s in SYSTEMS), "adapter - TF-IDF [95% CI]"]


def summary_rows(data: dict[str, Any]) -> list[list[str]]:
    rows = []
    for entry in metrics.CLASSIFICATION:
        delta = data["adapter_vs_tfidf"].get(entry.name)
        shown = f"{fmt(delta['delta'])} [{fmt(delta['ci95'][0])}, {fmt(delta['ci95'][1])}]" if delta else "-"
        rows.append([entry.label, *(fmt(data["systems"][s][entry.name]) for s in SYSTEMS), shown])
    return rows


def per_class_rows(data: dict[str, Any]) -> list[list[str]]:
    rows = []
    for label in data["labels"]:
        a, b = data["per_class"]["adapter"][label], data["per_class"]["tfidf"][label]
        rows.append([label, fmt(a["precision"]), fmt(a["recall"]), fmt(a["f1-score"]), str(int(a["support"])),
                     fmt(b["f1-score"])])  # fmt: skip
    return rows


def ensemble_line(delta: dict[str, Any]) -> str:
    low, high = delta["ci95"]
    shown = (f"weighted F1 {fmt(delta['ensemble'])} vs {fmt(delta['single'])} for the single model, "
             f"{fmt(delta['delta'])} [{fmt(low)}, {fmt(high)}]")  # fmt: skip
    if low > 0:
        return f"the ensemble beats the single model: {shown}."
    if high < 0:
        return f"the ensemble is worse than the single model: {shown}."
    return f"no clear difference from the single model: {shown} (the interval includes 0)."


def verdict_line(data: dict[str, Any]) -> str:
    """One plain sentence: does what ships beat TF-IDF + LR on the test split (weighted F1, with the interval)?"""
    delta = data["adapter_vs_tfidf"]["weighted_f1"]
    low, high = delta["ci95"]
    shown = f"{fmt(delta['delta'])} weighted F1 [{fmt(low)}, {fmt(high)}]"
    if low > 0:
        return f"Verdict: the shipped classifier beats TF-IDF + LR on the test split: {shown}."
    if high < 0:
        return f"Verdict: the shipped classifier is worse than TF-IDF + LR on the test split: {shown}."
    return (f"Verdict: no clear difference from TF-IDF + LR on the test split: {shown}, the interval includes 0; "
            "on this data the cheaper TF-IDF model is as good.")  # fmt: skip


def build_report(ctx: EvalContext, data: dict[str, Any]) -> Report:
    ctx.run.eval.mkdir(parents=True, exist_ok=True)
    chart = confusion_png(data, ctx.run.eval_file("confusion_matrix.png"))
    lat = data["latency"]
    latency_line = (
        f"Latency: batch 1 p50 {lat['batch1_ms_p50']:.1f} ms, p95 {lat['batch1_ms_p95']:.1f} ms; "
        f"batched ({lat['batch_size']}) {lat['batched_examples_per_s']:.0f} examples/s"
    )
    title = f"{data['name']}: classifier vs baselines on {data['n_examples']} test examples"
    chosen = data.get("selection") or {}
    shipped_line = f"Shipped: {data.get('shipped', 'finetuned')}" + (f" ({chosen['reason']})" if chosen else "")
    alone = data.get("parts_alone") or ({"finetuned": data["finetuned_alone"]} if data.get("finetuned_alone") else {})
    if alone:
        shown = "; ".join(f"{PART_LABELS[p]} {fmt(m['weighted_f1'])} / {fmt(m['macro_f1'])}" for p, m in alone.items())
        shipped_line += f". Each part alone on this test split (weighted / macro F1): {shown}"
    matrix = "\n".join(" ".join(f"{v:4d}" for v in row) for row in data["confusion"]["adapter"])
    verdict = verdict_line(data)
    blocks = [
        Bullets([
            f"Examples: {data['n_examples']} in the test split (never used in training or model selection)",
            f"Base model: {data['base_model']}, {data['precision']}; baselines trained on the same training split",
            f"Intervals: paired bootstrap, {data['bootstrap']} resamples, seed {data['seed']}",
            "Versions: " + ", ".join(f"{k} {v}" for k, v in data["versions"].items() if v),
        ]),
        Table(HEADER, summary_rows(data), title=title, terminal=True),
        Text(verdict, terminal=True),
        *([Text("Fold ensemble: " + data["ensemble_vs_single"]["line"], terminal=True)]
          if data.get("ensemble_vs_single") else []),
        Text(shipped_line, terminal=True),
        Text(latency_line, terminal=True),
        Text("Per class", heading=True),
        Table(["class", "precision", "recall", "F1", "support", "TF-IDF F1"], per_class_rows(data)),
        Image(chart, "confusion matrices"),
        Text("Confusion matrix (adapter; rows true, columns predicted, order as in the class table):"),
        Preformatted(matrix),
        Image(ctx.run.loss_plot if ctx.run.loss_plot.is_file() else None, "loss curves"),
        Text(f"Report: {ctx.run.eval_file('report.html')}", terminal=True),
    ]  # fmt: skip
    return Report(f"Evaluation: {data['name']} (classification)", data, blocks)
