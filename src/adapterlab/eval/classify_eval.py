"""``adapterlab eval RUN`` for a classifier: the adapter against cheap baselines on the held-out test split.

Reads top to bottom: the run's test rows (cleaned at prepare time) -> the classifier with its adapter merged ->
a TF-IDF + logistic-regression baseline and the majority class, trained on the same training split -> summary
and per-class metrics, confusion matrices -> paired bootstrap of adapter minus TF-IDF -> latency at batch 1 and
batched throughput -> report.json / .md / .html and predictions.jsonl.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from adapterlab.console import console
from adapterlab.eval import classify_metrics as cm
from adapterlab.eval.bootstrap import paired_bootstrap
from adapterlab.eval.report import fmt, png_base64
from adapterlab.runs import RunDir, environment, read_jsonl, write_json, write_jsonl, write_text

LABELS = {
    "accuracy": "accuracy",
    "weighted_f1": "weighted F1",
    "macro_f1": "macro F1",
    "weighted_precision": "weighted precision",
    "weighted_recall": "weighted recall",
}


def evaluate_classifier(run: RunDir, recipe) -> dict[str, Any]:
    from adapterlab.classifier import Classifier
    from adapterlab.eval.evaluate import test_rows
    from adapterlab.models import pick_precision

    cfg = recipe.eval
    rows = test_rows(run, cfg)
    train = read_jsonl(run.data / "train.jsonl")
    precision = pick_precision(cfg.precision)
    classifier = Classifier.load(run.root, precision)
    labels = classifier.labels
    y_true = [labels.index(r["label"]) for r in rows]
    probs = classifier.predict_proba([r["text"] for r in rows], batch_size=cfg.batch_size)
    predictions = {"adapter": probs.argmax(axis=1).tolist()}
    baseline = cm.tfidf_baseline([r["text"] for r in train], [labels.index(r["label"]) for r in train], recipe.seed)
    predictions["tfidf"] = [int(p) for p in baseline.predict([r["text"] for r in rows])]
    majority = Counter(r["label"] for r in train).most_common(1)[0][0]
    predictions["majority"] = [labels.index(majority)] * len(rows)

    systems = {name: cm.classification_metrics(y_true, pred, len(labels)) for name, pred in predictions.items()}
    deltas = {}
    for metric in ("accuracy", "weighted_f1", "macro_f1"):
        delta = paired_bootstrap(
            cm.metric_stats(y_true, predictions["tfidf"], len(labels), metric),
            cm.metric_stats(y_true, predictions["adapter"], len(labels), metric),
            cfg.bootstrap,
            recipe.seed,
        )
        deltas[metric] = {"delta": delta.delta, "ci95": [delta.low, delta.high], "excludes_zero": delta.excludes_zero}
    report = {
        "name": recipe.name,
        "task": "classify",
        "run": str(run.root),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "n_examples": len(rows),
        "labels": labels,
        "precision": precision,
        "seed": recipe.seed,
        "bootstrap": cfg.bootstrap,
        "base_model": classifier.meta["base_model"]["spec"],
        "majority_label": majority,
        "systems": systems,
        "adapter_vs_tfidf": deltas,
        "per_class": {name: cm.per_class_report(y_true, predictions[name], labels) for name in ("adapter", "tfidf")},
        "confusion": {name: cm.confusion(y_true, predictions[name], len(labels)) for name in ("adapter", "tfidf")},
        "latency": latency(classifier, [r["text"] for r in rows], cfg.batch_size),
        "versions": {
            k: v for k, v in environment()["libraries"].items() if k in ("adapterlab", "torch", "transformers", "peft")
        }
        | {"scikit-learn": _version("scikit-learn")},
    }
    write(run, report, rows, probs, predictions, labels)
    print_table(report)
    console.print(f"Report: {run.eval / 'report.html'}")
    return report


def _version(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


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


def confusion_png(report: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = report["labels"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.6), dpi=100)
    for ax, name in zip(axes, ("adapter", "tfidf"), strict=True):
        matrix = np.asarray(report["confusion"][name])
        ax.imshow(matrix, cmap="Blues")
        ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        for (i, j), value in np.ndenumerate(matrix):
            if value:
                ax.text(j, i, str(value), ha="center", va="center", fontsize=7,
                        color="white" if value > matrix.max() / 2 else "black")  # fmt: skip
        f1 = report["systems"][name]["weighted_f1"]
        ax.set_title(f"{'adapter' if name == 'adapter' else 'TF-IDF + logistic regression'} (weighted F1 {f1:.3f})")
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def summary_rows(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    for metric, label in LABELS.items():
        systems = report["systems"]
        row = [label, fmt(systems["majority"][metric]), fmt(systems["tfidf"][metric]), fmt(systems["adapter"][metric])]
        delta = report["adapter_vs_tfidf"].get(metric)
        row += [f"{fmt(delta['delta'])} [{fmt(delta['ci95'][0])}, {fmt(delta['ci95'][1])}]" if delta else "-"]
        rows.append(row)
    return rows


HEADER = ["metric", "majority class", "TF-IDF + LR", "adapter", "adapter - TF-IDF [95% CI]"]


def to_markdown(report: dict[str, Any]) -> str:
    lat = report["latency"]
    lines = [
        f"# Evaluation: {report['name']} (classification)",
        "",
        f"- Examples: {report['n_examples']} in the test split (never used in training or model selection)",
        f"- Base model: {report['base_model']}, {report['precision']}; baselines trained on the same training split",
        f"- Intervals: paired bootstrap, {report['bootstrap']} resamples, seed {report['seed']}",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items() if v),
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
        *["| " + " | ".join(r) + " |" for r in summary_rows(report)],
        "",
        f"Latency: batch 1 p50 {lat['batch1_ms_p50']:.1f} ms, p95 {lat['batch1_ms_p95']:.1f} ms; "
        f"batched ({lat['batch_size']}) {lat['batched_examples_per_s']:.0f} examples/s",
        "",
        "| class | precision | recall | F1 | support | TF-IDF F1 |",
        "|---|---|---|---|---|---|",
    ]
    for label in report["labels"]:
        a, b = report["per_class"]["adapter"][label], report["per_class"]["tfidf"][label]
        lines.append(f"| {label} | {fmt(a['precision'])} | {fmt(a['recall'])} | {fmt(a['f1-score'])} | "
                     f"{int(a['support'])} | {fmt(b['f1-score'])} |")  # fmt: skip
    lines += ["", "![confusion matrices](confusion_matrix.png)", "", "Confusion matrix (adapter; rows true, columns "
              "predicted, order as in the class table):", "", "```"]  # fmt: skip
    lines += [" ".join(f"{v:4d}" for v in row) for row in report["confusion"]["adapter"]]
    return "\n".join([*lines, "```", ""])


HTML = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{{ r.name }}: classification</title>
<style>body{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;color:#222}table{border-collapse:collapse;
margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child,th:first-child{text-align:left}
img{max-width:100%}</style></head><body><h1>{{ r.name }}: adapter vs baselines</h1>
<p>{{ r.n_examples }} held-out test examples; base model {{ r.base_model }} ({{ r.precision }}); paired bootstrap,
{{ r.bootstrap }} resamples.</p>
<table><tr>{% for h in header %}<th>{{ h }}</th>{% endfor %}</tr>{% for row in rows %}<tr>{% for c in row %}
<td>{{ c }}</td>{% endfor %}</tr>{% endfor %}</table>
<p>Latency: batch 1 p50 {{ "%.1f"|format(r.latency.batch1_ms_p50) }} ms,
p95 {{ "%.1f"|format(r.latency.batch1_ms_p95) }} ms;
batched {{ "%.0f"|format(r.latency.batched_examples_per_s) }} examples/s.</p>
<h2>Per class</h2><table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th>
<th>TF-IDF F1</th></tr>{% for label in r.labels %}{% set a = r.per_class.adapter[label] %}<tr><td>{{ label }}</td>
<td>{{ fmt(a.precision) }}</td><td>{{ fmt(a.recall) }}</td><td>{{ fmt(a["f1-score"]) }}</td>
<td>{{ a.support|int }}</td><td>{{ fmt(r.per_class.tfidf[label]["f1-score"]) }}</td></tr>{% endfor %}</table>
{% if cm %}<img alt="confusion matrices" src="data:image/png;base64,{{ cm }}">{% endif %}
{% if loss %}<h2>Training curves</h2><img alt="loss" src="data:image/png;base64,{{ loss }}">{% endif %}
</body></html>"""


def write(run: RunDir, report, rows, probs, predictions, labels) -> None:
    from jinja2 import Environment

    run.eval.mkdir(parents=True, exist_ok=True)
    write_jsonl(run.eval / "predictions.jsonl", [
        {"id": r["id"], "text": r["text"], "label": r["label"], "predicted": labels[predictions["adapter"][i]],
         "probability": float(probs[i].max()), "tfidf_predicted": labels[predictions["tfidf"][i]]}
        for i, r in enumerate(rows)
    ])  # fmt: skip
    write_json(run.eval / "report.json", report)
    chart = confusion_png(report, run.eval / "confusion_matrix.png")
    write_text(run.eval / "report.md", to_markdown(report))
    html = (
        Environment(autoescape=True)
        .from_string(HTML)
        .render(
            r=report,
            header=HEADER,
            rows=summary_rows(report),
            fmt=fmt,
            cm=png_base64(chart),
            loss=png_base64(run.loss_plot),
        )
    )
    write_text(run.eval / "report.html", html)


def print_table(report: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"{report['name']}: classifier vs baselines on {report['n_examples']} test examples",
                  title_justify="left")  # fmt: skip
    for column in HEADER:
        table.add_column(column, justify="left" if column == "metric" else "right")
    for row in summary_rows(report):
        table.add_row(*row)
    console.print(table)
    lat = report["latency"]
    console.print(
        f"Latency: batch 1 p50 {lat['batch1_ms_p50']:.1f} ms; batched {lat['batched_examples_per_s']:.0f} ex/s"
    )
