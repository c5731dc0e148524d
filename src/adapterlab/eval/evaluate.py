"""``adapterlab eval RUN``: base and adapter on the test split, one report with deltas and intervals.

Reads top to bottom: the run's resolved recipe -> the test rows prepared with the run -> one loaded base model
with the adapter attached -> generate with the adapter disabled (base) and enabled (adapter), same prompts,
decoding and seed -> perplexity of the reference replies for both -> metrics -> paired bootstrap -> report.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from adapterlab.config import EvalConfig, Recipe, load_recipe
from adapterlab.console import console
from adapterlab.errors import DataError
from adapterlab.eval import text_metrics as tm
from adapterlab.eval.bootstrap import paired_bootstrap
from adapterlab.eval.generate import Decoding, Generation, TransformersBackend
from adapterlab.eval.report import comparison_chart, print_table, to_html, to_markdown, verdict
from adapterlab.runs import RunDir, environment, read_jsonl, write_json, write_jsonl, write_text

LABELS = {
    "perplexity": ("perplexity of the reference replies", False),
    "rouge1": ("ROUGE-1 F1", True),
    "rouge2": ("ROUGE-2 F1", True),
    "rougeL": ("ROUGE-L F1", True),
    "rougeLsum": ("ROUGE-Lsum F1", True),
    "bleu": ("BLEU", True),
    "chrf": ("chrF", True),
    "bertscore": ("BERTScore F1", True),
    "language": ("language kept", True),
    "clarify": ("asks when details are missing", True),
    "length": ("reply length (words)", None),
}
TRUE = {"true", "1", "yes", "y", "t"}


@dataclass
class EvalResult:
    run: RunDir
    report: dict[str, Any]


def evaluate(run_dir: str | Path, overrides: list[str] | None = None) -> EvalResult:
    from transformers import set_seed

    from adapterlab.models import load_with_adapter, pick_precision, read_adapter

    run = RunDir(Path(run_dir))
    recipe = run_recipe(run, overrides)
    if recipe.task == "classify":
        from adapterlab.eval.classify_eval import evaluate_classifier

        return EvalResult(run, evaluate_classifier(run, recipe))
    cfg = recipe.eval
    rows = test_rows(run, cfg)
    info = read_adapter(run.root)
    precision = pick_precision(cfg.precision)
    model, tokenizer = load_with_adapter(info, precision)  # one base model; the adapter is switched off for "base"
    decoding = Decoding(cfg.max_new_tokens, cfg.do_sample, cfg.temperature, cfg.top_p, cfg.stop, cfg.repetition_penalty)
    backend = TransformersBackend(model, tokenizer, cfg.batch_size)
    seed = recipe.seed if cfg.seed is None else cfg.seed
    prompts = [r["messages"] for r in rows]

    outputs: dict[str, list[Generation]] = {}
    wall: dict[str, float] = {}
    for side in ("base", "adapter"):
        set_seed(seed)
        began = time.perf_counter()
        if side == "base":
            with model.disable_adapter():
                outputs[side] = backend.generate(prompts, decoding, label="generate: base   ")
        else:
            outputs[side] = backend.generate(prompts, decoding, label="generate: adapter")
        wall[side] = time.perf_counter() - began
    nll = reference_nll(model, tokenizer, run, len(rows), cfg) if "perplexity" in cfg.metrics else None

    texts = {side: [g.text for g in outputs[side]] for side in outputs}
    scored, not_computed = score(cfg, rows, texts, nll)
    report = build_report(recipe, run, info, cfg, rows, scored, not_computed, outputs, wall, precision, seed, backend)
    write_outputs(run, report, rows, outputs, scored)
    print_table(report)
    console.print(f"Report: {run.eval / 'report.html'}")
    return EvalResult(run, report)


def run_recipe(run: RunDir, overrides: list[str] | None) -> Recipe:
    path = run.root / "recipe.resolved.yaml"
    if not path.is_file():
        raise DataError(f"{run.root}: not a run directory (no recipe.resolved.yaml); train first")
    return load_recipe(path, overrides)


def test_rows(run: RunDir, cfg: EvalConfig) -> list[dict[str, Any]]:
    path = run.data / "test.jsonl"
    if not path.is_file():
        raise DataError(f"{path} not found: prepare the run first (adapterlab prepare)")
    rows = read_jsonl(path)
    if not rows:
        raise DataError(f"{path}: the test split is empty; give split.test a share of the data (e.g. 0.1)")
    return rows[: cfg.max_examples] if cfg.max_examples else rows


def reference_nll(model, tokenizer, run: RunDir, n: int, cfg: EvalConfig) -> dict[str, tuple[list, list]]:
    """Per example: summed NLL and count of the reference completion tokens, for base and adapter."""
    import torch
    from datasets import load_from_disk

    from adapterlab.train.losses import completion_nll_per_example

    data = load_from_disk(str(run.tokenized))["test"].select(range(n))
    device = next(model.parameters()).device
    result: dict[str, tuple[list, list]] = {"base": ([], []), "adapter": ([], [])}
    for start in range(0, n, cfg.batch_size):
        chunk = data[start : start + cfg.batch_size]
        width = max(len(ids) for ids in chunk["input_ids"])
        pad = tokenizer.pad_token_id
        ids = [x + [pad] * (width - len(x)) for x in chunk["input_ids"]]
        mask = [[1] * len(x) + [0] * (width - len(x)) for x in chunk["input_ids"]]
        labels = [
            [t if m else -100 for t, m in zip(x, c, strict=True)] + [-100] * (width - len(x))
            for x, c in zip(chunk["input_ids"], chunk["completion_mask"], strict=True)
        ]
        batch = {k: torch.tensor(v, device=device) for k, v in
                 {"input_ids": ids, "attention_mask": mask, "labels": labels}.items()}  # fmt: skip
        with torch.inference_mode():
            for side in ("base", "adapter"):
                if side == "base":
                    with model.disable_adapter():
                        sums, counts = completion_nll_per_example(model, batch)
                else:
                    sums, counts = completion_nll_per_example(model, batch)
                result[side][0].extend(sums.tolist())
                result[side][1].extend(counts.tolist())
    return result


def score(cfg: EvalConfig, rows, texts, nll) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Every selected metric for both sides, as MetricStats; the reason for each one that cannot be computed."""
    references = [r["completion"] for r in rows]
    scored: dict[str, dict[str, Any]] = {}
    not_computed: dict[str, str] = {}

    def add(name: str, compute, indices: list[int] | None = None) -> None:
        subset = indices if indices is not None else list(range(len(rows)))
        try:
            scored[name] = {side: compute([texts[side][i] for i in subset], subset) for side in ("base", "adapter")}
            scored[name]["indices"] = subset
        except (ImportError, OSError, ValueError) as exc:
            not_computed[name] = f"{type(exc).__name__}: {exc}".splitlines()[0]

    def refs(subset: list[int]) -> list[str]:
        return [references[i] for i in subset]

    for metric in cfg.metrics:
        if metric == "perplexity" and nll is not None:
            for side in ("base", "adapter"):
                scored.setdefault("perplexity", {"indices": list(range(len(rows)))})[side] = tm.perplexity(*nll[side])
        elif metric == "rouge":  # one scoring pass, four metrics
            both = {side: tm.rouge(texts[side], references) for side in ("base", "adapter")}
            for name in both["base"]:
                scored[name] = {"base": both["base"][name], "adapter": both["adapter"][name]}
                scored[name]["indices"] = list(range(len(rows)))
        elif metric == "bleu":
            add("bleu", lambda hyp, idx: tm.bleu(hyp, refs(idx)))
        elif metric == "chrf":
            add("chrf", lambda hyp, idx: tm.chrf(hyp, refs(idx)))
        elif metric == "bertscore":
            encoder = bertscore_encoder(cfg, not_computed)
            if encoder:
                add("bertscore", lambda hyp, idx, enc=encoder: tm.bertscore(hyp, refs(idx), enc, cfg.bertscore_layers))
        elif metric == "language":
            expected = expected_languages(cfg, rows)
            add("language", lambda hyp, idx, want=expected: tm.language_kept(hyp, [want[i] for i in idx]))
        elif metric == "clarify":
            flagged = clarify_subset(cfg, rows, not_computed)
            if flagged:
                add("clarify", lambda hyp, idx: tm.clarify_rate(hyp), flagged)
        elif metric == "length":
            add("length", lambda hyp, idx: tm.reply_length(hyp))
    return scored, not_computed


def bertscore_encoder(cfg: EvalConfig, not_computed: dict[str, str]) -> str | None:
    from adapterlab.errors import ModelError
    from adapterlab.models import resolve_base

    try:
        return resolve_base(cfg.bertscore_model)
    except ModelError as exc:
        not_computed["bertscore"] = str(exc)
        return None


def expected_languages(cfg: EvalConfig, rows) -> list[str | None]:
    """The language each reply should be in: the row's language column, or the language of the user message."""
    if cfg.language_column:
        return [r["source"].get(cfg.language_column) for r in rows]
    return [tm.detect_language(r["messages"][-1]["content"]) for r in rows]


def clarify_subset(cfg: EvalConfig, rows, not_computed: dict[str, str]) -> list[int]:
    if not cfg.clarify_column:
        not_computed["clarify"] = "set eval.clarify_column to the column that flags inputs lacking details"
        return []
    flagged = [i for i, r in enumerate(rows) if str(r["source"].get(cfg.clarify_column, "")).strip().lower() in TRUE]
    if not flagged:
        not_computed["clarify"] = f"no test example has {cfg.clarify_column} set to true"
    return flagged


def generation_stats(outputs: list[Generation], wall_seconds: float) -> dict[str, float]:
    latencies = [g.seconds for g in outputs]
    return {
        "latency_mean_s": statistics.fmean(latencies),
        "latency_p50_s": float(np.percentile(latencies, 50)),
        "latency_p95_s": float(np.percentile(latencies, 95)),
        "tokens_per_s": sum(g.new_tokens for g in outputs) / wall_seconds if wall_seconds else 0.0,
        "new_tokens_mean": statistics.fmean(g.new_tokens for g in outputs),
        "wall_seconds": wall_seconds,
    }


def build_report(recipe, run, info, cfg, rows, scored, not_computed, outputs, wall, precision, seed, backend):
    metrics = {}
    for name, sides in scored.items():
        delta = paired_bootstrap(sides["base"], sides["adapter"], cfg.bootstrap, seed)
        label, higher = LABELS[name]
        entry = {
            "label": label + (f" ({Path(cfg.bertscore_model).name})" if name == "bertscore" else ""),
            "base": delta.base,
            "adapter": delta.adapter,
            "delta": delta.delta,
            "ci95": [delta.low, delta.high],
            "excludes_zero": delta.excludes_zero,
            "higher_is_better": higher,
            "examples": len(sides["indices"]),
        }
        entry["verdict"] = verdict(entry)
        metrics[name] = entry
    if "length" in metrics:
        metrics["length"]["reference"] = statistics.fmean(tm.word_count(r["completion"]) for r in rows)
    libraries = environment()["libraries"]
    versions = {k: libraries.get(k) for k in ("adapterlab", "torch", "transformers", "peft")}
    for extra in ("rouge-score", "sacrebleu", "bert-score", "langdetect"):
        versions[extra] = _version(extra)
    return {
        "name": recipe.name,
        "run": str(run.root),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "n_examples": len(rows),
        "test_split_size": len(read_jsonl(run.data / "test.jsonl")),
        "seed": seed,
        "decoding": {
            "max_new_tokens": cfg.max_new_tokens,
            "do_sample": cfg.do_sample,
            "temperature": cfg.temperature,
            "top_p": cfg.top_p,
            "stop": cfg.stop,
            "repetition_penalty": cfg.repetition_penalty,
            "batch_size": cfg.batch_size,
        },
        "precision": precision,
        "backend": backend.name,
        "bootstrap": cfg.bootstrap,
        "base_model": info.meta["base_model"]["spec"],
        "adapter": str(info.path),
        "versions": versions,
        "metrics": metrics,
        "not_computed": not_computed,
        "generation": {side: generation_stats(outputs[side], wall[side]) for side in outputs},
        "examples": pick_examples(rows, outputs, scored, cfg.examples_in_report),
    }


def _version(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def pick_examples(rows, outputs, scored, count: int) -> list[dict[str, Any]]:
    key = next((k for k in ("rougeL", "chrf", "bleu") if k in scored), None)
    if key is None or count == 0:
        return []
    deltas = scored[key]["adapter"].per_example - scored[key]["base"].per_example
    order = np.argsort(deltas)
    chosen = [("best", int(i)) for i in order[::-1][:count]] + [("worst", int(i)) for i in order[:count]]
    return [
        {
            "kind": kind,
            "id": rows[i]["id"],
            "delta": float(deltas[i]),
            "input": rows[i]["messages"][-1]["content"],
            "reference": rows[i]["completion"],
            "base": outputs["base"][i].text,
            "adapter": outputs["adapter"][i].text,
        }
        for kind, i in chosen
    ]


def write_outputs(run: RunDir, report, rows, outputs, scored) -> None:
    per_example: list[dict[str, Any]] = [{} for _ in rows]
    for name, sides in scored.items():
        for position, index in enumerate(sides["indices"]):
            per_example[index][name] = {s: float(sides[s].per_example[position]) for s in ("base", "adapter")}
    records = [
        {
            "id": row["id"],
            "messages": row["messages"],
            "reference": row["completion"],
            **{
                side: {
                    "text": outputs[side][i].text,
                    "new_tokens": outputs[side][i].new_tokens,
                    "seconds": outputs[side][i].seconds,
                    "tokens_per_s": outputs[side][i].tokens_per_s,
                }
                for side in ("base", "adapter")
            },
            "scores": per_example[i],
        }
        for i, row in enumerate(rows)
    ]
    run.eval.mkdir(parents=True, exist_ok=True)
    write_jsonl(run.eval / "predictions.jsonl", records)
    write_json(run.eval / "report.json", report)
    chart = comparison_chart(report, run.eval / "comparison.png")
    write_text(run.eval / "report.md", to_markdown(report))
    write_text(run.eval / "report.html", to_html(report, chart, run.loss_plot))
