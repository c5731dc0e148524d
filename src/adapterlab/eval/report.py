"""The base-vs-adapter report: report.json (everything), report.md, report.html (with pictures), a terminal table.

Every metric shows base, adapter, the difference and its paired-bootstrap 95% interval; the verdict says
"better" or "worse" only when the interval excludes zero. A metric that could not be computed is listed with
the reason, never shown as 0.
"""

from __future__ import annotations

import base64
import math
from pathlib import Path
from typing import Any

from adapterlab.console import console

# Metrics on a 0-1 scale are shown x100 in the chart so that they share an axis with BLEU and chrF.
PERCENT = {"rouge1", "rouge2", "rougeL", "rougeLsum", "bertscore", "language", "clarify"}


def verdict(entry: dict[str, Any]) -> str:
    if entry["higher_is_better"] is None or not entry["excludes_zero"]:
        return "no clear difference" if entry["higher_is_better"] is not None else "-"
    better = (entry["delta"] > 0) == entry["higher_is_better"]
    return "better" if better else "worse"


def fmt(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}g}" if abs(value) >= 1000 else f"{value:.{digits}f}".rstrip("0").rstrip(".")


def comparison_chart(report: dict[str, Any], path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = {k: v for k, v in report["metrics"].items() if v["higher_is_better"] is not None and k != "perplexity"}
    if not scored:
        return None
    names = list(scored)
    scale = [100.0 if n in PERCENT else 1.0 for n in names]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110, gridspec_kw={"width_ratios": [3, 2]})
    x = range(len(names))
    left.bar([i - 0.2 for i in x], [scored[n]["base"] * s for n, s in zip(names, scale, strict=True)], 0.4,
             label="base", color="#8C8C8C")  # fmt: skip
    left.bar([i + 0.2 for i in x], [scored[n]["adapter"] * s for n, s in zip(names, scale, strict=True)], 0.4,
             label="adapter", color="#4C72B0")  # fmt: skip
    left.set_xticks(list(x), [scored[n]["label"] for n in names], rotation=35, ha="right", fontsize=8)
    left.set_ylabel("score (0-100)")
    left.set_title(f"Base vs adapter on {report['n_examples']} test examples")
    left.legend()
    left.grid(axis="y", alpha=0.3)
    deltas = [scored[n]["delta"] * s for n, s in zip(names, scale, strict=True)]
    lows = [d - scored[n]["ci95"][0] * s for n, d, s in zip(names, deltas, scale, strict=True)]
    highs = [scored[n]["ci95"][1] * s - d for n, d, s in zip(names, deltas, scale, strict=True)]
    colours = ["#55A868" if verdict(scored[n]) == "better" else "#C44E52" if verdict(scored[n]) == "worse"
               else "#8C8C8C" for n in names]  # fmt: skip
    right.barh(list(x), deltas, xerr=[lows, highs], color=colours, capsize=3)
    right.axvline(0, color="black", linewidth=0.8)
    right.set_yticks(list(x), [scored[n]["label"] for n in names], fontsize=8)
    right.invert_yaxis()
    right.set_xlabel("adapter - base (95% bootstrap interval)")
    right.set_title("Difference")
    right.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _rows(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    for entry in report["metrics"].values():
        low, high = entry["ci95"]
        rows.append([entry["label"], fmt(entry["base"]), fmt(entry["adapter"]), fmt(entry["delta"]),
                     f"[{fmt(low)}, {fmt(high)}]", verdict(entry)])  # fmt: skip
    return rows


HEADER = ["metric", "base", "adapter", "delta", "95% CI of delta", "verdict"]


def settings_lines(report: dict[str, Any]) -> list[str]:
    d = report["decoding"]
    sampling = f"temperature {d['temperature']}, top_p {d['top_p']}" if d["do_sample"] else "greedy"
    if d.get("repetition_penalty", 1.0) != 1.0:
        sampling += f", repetition_penalty {d['repetition_penalty']}"
    versions = ", ".join(f"{k} {v}" for k, v in report["versions"].items() if v)
    return [
        f"Examples: {report['n_examples']} of {report['test_split_size']} in the test split (never used in training "
        "or model selection)",
        f"Decoding: {sampling}, max_new_tokens {d['max_new_tokens']}, stop {d['stop'] or 'end-of-turn token'}, "
        f"batch {d['batch_size']}, {report['precision']}, backend {report['backend']}, seed {report['seed']}",
        f"Base model: {report['base_model']}; adapter: {report['adapter']}",
        f"Intervals: paired bootstrap, {report['bootstrap']} resamples",
        f"Versions: {versions}",
    ]


def to_markdown(report: dict[str, Any]) -> str:
    lines = [f"# Evaluation: {report['name']}", "", *[f"- {s}" for s in settings_lines(report)], ""]
    lines += ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in _rows(report)]
    if report["not_computed"]:
        lines += ["", "Not computed:", *[f"- {k}: {why}" for k, why in report["not_computed"].items()]]
    gen = report["generation"]
    lines += ["", "| generation | base | adapter |", "|---|---|---|"]
    for key, label in GENERATION_ROWS:
        lines.append(f"| {label} | {fmt(gen['base'][key])} | {fmt(gen['adapter'][key])} |")
    lines += ["", "![comparison](comparison.png)", ""]
    for example in report["examples"]:
        lines += [f"## {example['kind']}: {example['id']} (ROUGE-L delta {example['delta']:+.3f})", ""]
        for part in ("input", "reference", "base", "adapter"):
            lines += [f"**{part.capitalize()}**", "", _quote(example[part]), ""]
    return "\n".join(lines) + "\n"


GENERATION_ROWS = [
    ("latency_mean_s", "latency per example, mean (s, batch time / batch size)"),
    ("latency_p50_s", "latency per example, p50 (s)"),
    ("latency_p95_s", "latency per example, p95 (s)"),
    ("tokens_per_s", "generated tokens/s"),
    ("new_tokens_mean", "generated tokens per reply, mean"),
]


def _quote(text: str) -> str:
    return "\n".join("> " + line for line in (text or "(empty)").splitlines())


HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ r.name }}: base vs adapter</title>
<style>
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}.better{color:#1a7f37;font-weight:bold}.worse{color:#c62828;font-weight:bold}
.pair{display:grid;grid-template-columns:1fr 1fr 1fr;gap:10px}.pair pre{white-space:pre-wrap;background:#f6f8fa;
padding:8px;border-radius:4px;font-size:13px}img{max-width:100%}
</style></head><body>
<h1>{{ r.name }}: base vs adapter</h1>
<ul>{% for line in settings %}<li>{{ line }}</li>{% endfor %}</ul>
<table><tr>{% for h in header %}<th>{{ h }}</th>{% endfor %}</tr>
{% for row in rows %}<tr>{% for cell in row[:-1] %}<td>{{ cell }}</td>{% endfor %}
<td class="{{ row[-1] }}">{{ row[-1] }}</td></tr>{% endfor %}</table>
{% if r.not_computed %}<p>Not computed:</p><ul>{% for k, why in r.not_computed.items() %}<li>{{ k }}: {{ why }}</li>
{% endfor %}</ul>{% endif %}
{% if chart %}<img alt="comparison chart" src="data:image/png;base64,{{ chart }}">{% endif %}
<h2>Generation</h2><table><tr><th></th><th>base</th><th>adapter</th></tr>
{% for key, label in gen_rows %}<tr><td>{{ label }}</td><td>{{ fmt(r.generation.base[key]) }}</td>
<td>{{ fmt(r.generation.adapter[key]) }}</td></tr>{% endfor %}</table>
{% if loss %}<h2>Training curves</h2><img alt="loss curves" src="data:image/png;base64,{{ loss }}">{% endif %}
<h2>Examples (best and worst by ROUGE-L difference)</h2>
{% for e in r.examples %}<h3>{{ e.kind }}: {{ e.id }} (ROUGE-L delta {{ "%+.3f"|format(e.delta) }})</h3>
<pre>{{ e.input }}</pre><div class="pair"><div><b>Reference</b><pre>{{ e.reference }}</pre></div>
<div><b>Base</b><pre>{{ e.base }}</pre></div><div><b>Adapter</b><pre>{{ e.adapter }}</pre></div></div>{% endfor %}
</body></html>
"""


def png_base64(path: Path | None) -> str | None:
    return base64.b64encode(path.read_bytes()).decode() if path and path.is_file() else None


def to_html(report: dict[str, Any], chart: Path | None, loss_plot: Path | None) -> str:
    from jinja2 import Environment

    template = Environment(autoescape=True).from_string(HTML)
    return template.render(
        r=report,
        settings=settings_lines(report),
        header=HEADER,
        rows=_rows(report),
        gen_rows=GENERATION_ROWS,
        fmt=fmt,
        chart=png_base64(chart),
        loss=png_base64(loss_plot),
    )


def print_table(report: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"{report['name']}: base vs adapter on {report['n_examples']} test examples",
                  title_justify="left")  # fmt: skip
    for column in HEADER:
        table.add_column(column, justify="left" if column in ("metric", "verdict") else "right")
    style = {"better": "bold green", "worse": "bold red"}
    for row in _rows(report):
        table.add_row(*row[:-1], f"[{style.get(row[-1], 'dim')}]{row[-1]}[/]")
    console.print(table)
    for name, why in report["not_computed"].items():
        console.print(f"[yellow]not computed[/yellow] {name}: {why}", soft_wrap=True)
