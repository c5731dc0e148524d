"""One report writer for every task: ``report.json`` (everything), ``report.md``, ``report.html`` (pictures
embedded) and the terminal table.

A task's evaluation returns a :class:`Report`: the JSON data and a list of blocks (bullets, tables, text, images,
preformatted text, example pairs). The writer renders the same blocks as Markdown, HTML and, for the blocks
marked ``terminal``, as rich output; no task writes its own templates. Comparisons show every system, the
difference and its paired-bootstrap 95% interval; the verdict says "better" or "worse" only when the interval
excludes zero. A metric that could not be computed is listed with the reason, never shown as 0.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapterlab.console import console
from adapterlab.runs import write_json, write_text


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    title: str | None = None
    terminal: bool = False  # printed in the terminal too
    verdict: bool = False  # the last column is a verdict ("better" / "worse" / ...), coloured


@dataclass
class Text:
    text: str
    terminal: bool = False
    heading: bool = False  # a section heading rather than a paragraph


@dataclass
class Image:
    path: Path | None
    alt: str


@dataclass
class Preformatted:
    text: str


@dataclass
class Pair:
    """One test example shown side by side: its input and each named output."""

    heading: str
    input: str
    outputs: list[tuple[str, str]]


Block = Bullets | Table | Text | Image | Preformatted | Pair


@dataclass
class Report:
    title: str
    data: dict[str, Any]
    blocks: list[Block] = field(default_factory=list)

    def write(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / "report.json", self.data)
        write_text(folder / "report.md", to_markdown(self))
        write_text(folder / "report.html", to_html(self))

    def print(self) -> None:
        for block in self.blocks:
            if isinstance(block, Table) and block.terminal:
                console.print(rich_table(block))
            elif isinstance(block, Text) and block.terminal:
                console.print(block.text, soft_wrap=True, markup=False)


# ------------------------------------------------------------------------------------------------ values


def fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}g}" if abs(value) >= 1000 else f"{value:.{digits}f}".rstrip("0").rstrip(".")


def verdict(entry: dict[str, Any]) -> str:
    """'better' / 'worse' when the interval of the difference excludes zero, else 'no clear difference'."""
    if entry["higher_is_better"] is None:
        return "-"
    if not entry["excludes_zero"]:
        return "no clear difference"
    better = (entry["delta"] > 0) == entry["higher_is_better"]
    return "better" if better else "worse"


def png_base64(path: Path | None) -> str | None:
    return base64.b64encode(path.read_bytes()).decode() if path and path.is_file() else None


# ---------------------------------------------------------------------------------------------- renderers


def to_markdown(report: Report) -> str:
    lines = [f"# {report.title}", ""]
    for block in report.blocks:
        if isinstance(block, Bullets):
            lines += [f"- {item}" for item in block.items]
        elif isinstance(block, Table):
            lines += [f"**{block.title}**", ""] if block.title else []
            lines += ["| " + " | ".join(block.header) + " |", "|" + "---|" * len(block.header)]
            lines += ["| " + " | ".join(row) + " |" for row in block.rows]
        elif isinstance(block, Text):
            lines.append(f"## {block.text}" if block.heading else block.text)
        elif isinstance(block, Image):
            lines.append(f"![{block.alt}]({block.path.name})" if block.path else "")
        elif isinstance(block, Preformatted):
            lines += ["```", block.text, "```"]
        elif isinstance(block, Pair):
            lines += [f"### {block.heading}", "", "**Input**", "", _quote(block.input), ""]
            for label, text in block.outputs:
                lines += [f"**{label}**", "", _quote(text), ""]
        lines.append("")
    return "\n".join(lines)


def _quote(text: str) -> str:
    return "\n".join("> " + line for line in (text or "(empty)").splitlines())


HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ r.title }}</title>
<style>
body{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}.better{color:#1a7f37;font-weight:bold}.worse{color:#c62828;font-weight:bold}
.pair{display:grid;grid-template-columns:repeat({{ columns }},1fr);gap:10px}.pair pre,pre{white-space:pre-wrap;
background:#f6f8fa;padding:8px;border-radius:4px;font-size:13px}img{max-width:100%}
</style></head><body>
<h1>{{ r.title }}</h1>
{% for b in blocks %}{% set kind = kind_of(b) %}
{% if kind == "Bullets" %}<ul>{% for item in b.items %}<li>{{ item }}</li>{% endfor %}</ul>
{% elif kind == "Table" %}{% if b.title %}<h3>{{ b.title }}</h3>{% endif %}<table><tr>{% for h in b.header %}
<th>{{ h }}</th>{% endfor %}</tr>{% for row in b.rows %}<tr>{% for cell in row %}<td{% if b.verdict and loop.last %}
 class="{{ cell }}"{% endif %}>{{ cell }}</td>{% endfor %}</tr>{% endfor %}</table>
{% elif kind == "Text" %}{% if b.heading %}<h2>{{ b.text }}</h2>{% else %}<p>{{ b.text }}</p>{% endif %}
{% elif kind == "Image" %}{% set data = image(b.path) %}{% if data %}<img alt="{{ b.alt }}"
 src="data:image/png;base64,{{ data }}">{% endif %}
{% elif kind == "Preformatted" %}<pre>{{ b.text }}</pre>
{% elif kind == "Pair" %}<h3>{{ b.heading }}</h3><pre>{{ b.input }}</pre><div class="pair">
{% for label, text in b.outputs %}<div><b>{{ label }}</b><pre>{{ text }}</pre></div>{% endfor %}</div>
{% endif %}{% endfor %}
</body></html>
"""


def to_html(report: Report) -> str:
    from jinja2 import Environment

    columns = max((len(b.outputs) for b in report.blocks if isinstance(b, Pair)), default=3)
    template = Environment(autoescape=True).from_string(HTML)
    return template.render(r=report, blocks=report.blocks, image=png_base64, columns=columns,
                           kind_of=lambda block: type(block).__name__)  # fmt: skip


def rich_table(block: Table):
    from rich.table import Table as RichTable

    table = RichTable(title=block.title, title_justify="left")
    for i, column in enumerate(block.header):
        left = i == 0 or (block.verdict and i == len(block.header) - 1)
        table.add_column(column, justify="left" if left else "right")
    style = {"better": "bold green", "worse": "bold red"}
    for row in block.rows:
        cells = list(row)
        if block.verdict:
            cells[-1] = f"[{style.get(cells[-1], 'dim')}]{cells[-1]}[/]"
        table.add_row(*cells)
    return table


# -------------------------------------------------------------------------------------------- comparisons


def comparison_rows(metrics: dict[str, dict[str, Any]], systems: list[str]) -> list[list[str]]:
    """One row per metric: its label, each system's value, the difference, its interval and the verdict."""
    rows = []
    for entry in metrics.values():
        low, high = entry["ci95"]
        values = [fmt(entry[s]) for s in systems]
        rows.append([entry["label"], *values, fmt(entry["delta"]), f"[{fmt(low)}, {fmt(high)}]", verdict(entry)])
    return rows


def comparison_chart(metrics: dict[str, dict[str, Any]], systems: list[str], title: str, path: Path) -> Path | None:
    """Grouped bars of every system per metric, and the difference from the first system (the base) with its
    interval: of the last system, or of every other system where each metric carries ``differences``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = {k: v for k, v in metrics.items() if v["higher_is_better"] is not None and k != "perplexity"}
    if not scored:
        return None
    names = list(scored)
    scale = [100.0 if scored[n].get("percent") else 1.0 for n in names]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110, gridspec_kw={"width_ratios": [3, 2]})
    x = list(range(len(names)))
    width = 0.8 / len(systems)
    colours = ["#8C8C8C", "#4C72B0", "#DD8452", "#55A868", "#8172B3"]
    for k, system in enumerate(systems):
        offset = (k - (len(systems) - 1) / 2) * width
        left.bar([i + offset for i in x], [scored[n][system] * s for n, s in zip(names, scale, strict=True)], width,
                 label=system, color=colours[k % len(colours)])  # fmt: skip
    left.set_xticks(x, [scored[n]["label"] for n in names], rotation=35, ha="right", fontsize=8)
    left.set_ylabel("score (0-100)")
    left.set_title(title)
    left.legend()
    left.grid(axis="y", alpha=0.3)
    if all("differences" in scored[n] for n in names):  # several adapters: each one's difference from the base
        compared = systems[1:]
        height = 0.8 / len(compared)
        for k, system in enumerate(compared):
            rows = [scored[n]["differences"][system] for n in names]
            deltas = [r["delta"] * s for r, s in zip(rows, scale, strict=True)]
            errors = [[d - r["ci95"][0] * s for r, d, s in zip(rows, deltas, scale, strict=True)],
                      [r["ci95"][1] * s - d for r, d, s in zip(rows, deltas, scale, strict=True)]]  # fmt: skip
            offset = (k - (len(compared) - 1) / 2) * height
            right.barh([i + offset for i in x], deltas, height, xerr=errors, capsize=2, label=system,
                       color=colours[(k + 1) % len(colours)])  # fmt: skip
        right.legend(fontsize=8)
        against = f"adapter - {systems[0]}"
    else:
        deltas = [scored[n]["delta"] * s for n, s in zip(names, scale, strict=True)]
        lows = [d - scored[n]["ci95"][0] * s for n, d, s in zip(names, deltas, scale, strict=True)]
        highs = [scored[n]["ci95"][1] * s - d for n, d, s in zip(names, deltas, scale, strict=True)]
        tint = {"better": "#55A868", "worse": "#C44E52"}
        right.barh(x, deltas, xerr=[lows, highs], color=[tint.get(verdict(scored[n]), "#8C8C8C") for n in names],
                   capsize=3)  # fmt: skip
        against = f"{systems[-1]} - {systems[0]}"
    right.axvline(0, color="black", linewidth=0.8)
    right.set_yticks(x, [scored[n]["label"] for n in names], fontsize=8)
    right.invert_yaxis()
    right.set_xlabel(f"{against} (95% bootstrap interval)")
    right.set_title("Difference")
    right.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
