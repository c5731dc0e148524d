"""``dialogue`` evaluation: the generative base-vs-adapter report, headed by style fidelity.

Reads top to bottom: the shared generative evaluation (perplexity of the real held-out lines, ROUGE, chrF ...) ->
the script's lines read again as prepare read them, the test scenes set apart -> a style judge (the character vs
everyone else, trained by the ``classify`` task on the lines of the other scenes, balanced, on the embedded encoder;
saved in ``RUN/judge`` and reused), its accuracy on the held-out real lines -> for base, adapter and the real
held-out replies (the ceiling): the judge's probability of "the character", the margin of the reply's embedding
between the character's centroid and the nearest other speaker's, relevance (similarity to the line it answers),
distinct-1/2, repetition and length -> paired bootstrap intervals (adapter vs base, and adapter vs real) -> a style
table and chart first in the report.
"""

from __future__ import annotations

import csv
import random
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from adapterlab.console import console
from adapterlab.data.load import read_table
from adapterlab.metrics import style
from adapterlab.metrics.bootstrap import paired_bootstrap
from adapterlab.metrics.stats import MetricStats, mean_stats
from adapterlab.report import Bullets, Image, Table, Text, comparison_chart, comparison_rows
from adapterlab.runs import read_json, read_jsonl, write_json
from adapterlab.task import EvalContext, Evaluation
from adapterlab.tasks.dialogue.format import OTHERS, ConversationSource, ScriptReader, scene_name

SYSTEMS = ("real", "base", "adapter")  # bars in this order; deltas are adapter - base
CHARACTER, OTHER = "character", "other"
MIN_CENTROID_LINES = 20  # a speaker's centroid from fewer lines is noise

STYLE_METRICS = {
    "judge": ("style judge: P(the character)", True, True),
    "centroid_margin": ("closer to the character than to others (cosine margin)", True, False),
    "relevance": ("relevance: similarity to the line answered", True, True),
    "distinct_1": ("distinct-1", True, True),
    "distinct_2": ("distinct-2", True, True),
    "repetition": ("repeated bigrams within a reply", False, True),
    "opening": ("replies opening with their commonest first word", None, True),
    "length": ("reply length (words)", None, False),
}


def evaluate(ctx: EvalContext) -> Evaluation:
    from adapterlab.generative.evaluate import evaluate as generative_evaluate

    evaluation = generative_evaluate(ctx)
    texts = {
        "real": [p["reference"] for p in evaluation.predictions],
        "base": [p["base"]["text"] for p in evaluation.predictions],
        "adapter": [p["adapter"]["text"] for p in evaluation.predictions],
    }
    result = style_scores(ctx, texts)
    report = evaluation.report
    report.data["style"] = result
    report.blocks[1:1] = style_blocks(ctx, result)
    for index, prediction in enumerate(evaluation.predictions):
        prediction["style"] = {name: {s: result["per_example"][name][s][index] for s in SYSTEMS}
                               for name in result["per_example"]}  # fmt: skip
    report.data["style"].pop("per_example")
    return evaluation


def style_scores(ctx: EvalContext, texts: dict[str, list[str]]) -> dict[str, Any]:
    from adapterlab.embeddings import embed

    data = ctx.recipe.data
    if data.conversation_column is not None:
        reader = ConversationSource(data)
        lines, names = conversation_lines(ctx, reader)
        held_out = {str(row["id"]) for row in read_jsonl(ctx.run.split_file("test"))}
    else:
        reader = ScriptReader(data)
        lines, names = script_lines(ctx, reader)
        held_out = test_scenes(ctx, reader)
    seen = [line for line in lines if line[0] not in held_out]
    judge = load_judge(ctx, reader, seen, lines, held_out)
    stats: dict[str, dict[str, MetricStats]] = {name: {} for name in STYLE_METRICS}
    answered = [answered_line(row["messages"]) for row in ctx.rows]
    encoder = ctx.recipe.eval.style_encoder
    answered_emb = embed(answered, encoder).numpy()
    centroids = speaker_centroids(seen, reader.character, encoder)
    openings: dict[str, str] = {}
    for system in SYSTEMS:
        replies = texts[system]
        embeddings = embed(replies, encoder).numpy()
        stats["judge"][system] = mean_stats(judge["score"](replies))
        stats["centroid_margin"][system] = style.centroid_margin(embeddings, centroids, reader.character)
        stats["relevance"][system] = style.similarity(embeddings, answered_emb)
        stats["distinct_1"][system] = style.distinct(replies, 1)
        stats["distinct_2"][system] = style.distinct(replies, 2)
        stats["repetition"][system] = style.repetition(replies)
        openings[system], stats["opening"][system] = style.commonest_opening(replies)
        stats["length"][system] = mean_stats([len(style.words(r)) for r in replies])
    seed = ctx.recipe.seed
    entries = {}
    for name, (label, higher, percent) in STYLE_METRICS.items():
        by_system = stats[name]
        delta = paired_bootstrap(by_system["base"], by_system["adapter"], ctx.recipe.eval.bootstrap, seed)
        gap = paired_bootstrap(by_system["adapter"], by_system["real"], ctx.recipe.eval.bootstrap, seed)
        entries[name] = {
            "label": label, "real": by_system["real"].value, "base": delta.base, "adapter": delta.adapter,
            "delta": delta.delta, "ci95": [delta.low, delta.high], "excludes_zero": delta.excludes_zero,
            "gap_to_real": gap.delta, "gap_ci95": [gap.low, gap.high], "higher_is_better": higher,
            "percent": percent, "examples": len(texts["real"]),
        }  # fmt: skip
    per_example = {name: {s: [float(v) for v in stats[name][s].per_example] for s in SYSTEMS} for name in stats}
    return {
        "character": data.character,
        "metrics": entries,
        "judge": {k: v for k, v in judge.items() if k != "score"},
        "centroids": sorted(names.get(s, s) for s in centroids),
        "openings": openings,
        "per_example": per_example,
    }


def script_lines(ctx: EvalContext, reader: ScriptReader) -> tuple[list[tuple[str, str, str]], dict[str, str]]:
    """The script's usable lines as prepare read them, and each speaker's name as the script mostly writes it."""
    data = ctx.recipe.data
    table = read_table(ctx.recipe.resolve_path(data.path), data.format, data.encoding)
    _, rows = reader.arrange(table.numbers, table.rows)
    spellings: dict[str, Counter] = {}
    for row in rows:
        raw = " ".join((row.get(data.speaker_column) or "").split())
        spellings.setdefault(data.canonical(raw), Counter())[raw] += 1
    return reader.lines(rows), {name: c.most_common(1)[0][0] for name, c in spellings.items()}


def conversation_lines(ctx: EvalContext, reader) -> tuple[list[tuple[str, str, str]], dict[str, str]]:
    """Every message of the conversation file as (conversation id, the character or others, text)."""
    data = ctx.recipe.data
    table = read_table(ctx.recipe.resolve_path(data.path), data.format, data.encoding)
    lines = []
    for number, row in zip(table.numbers, table.rows, strict=True):
        group = str(row.get(data.id_column) if data.id_column else number)
        lines += reader.lines_of(row, group)
    return lines, {reader.character: data.character, OTHERS: OTHERS}


def test_scenes(ctx: EvalContext, reader: ScriptReader) -> set[str]:
    return {scene_name(reader.scene_key(row["source"])) for row in read_jsonl(ctx.run.split_file("test"))}


def answered_line(messages: list[dict[str, str]]) -> str:
    """The line a reply answers: the last line of the last user turn, without its speaker prefix."""
    user = [m["content"] for m in messages if m["role"] == "user"]
    last = user[-1].splitlines()[-1] if user else ""
    name, colon, text = last.partition(": ")
    return text if colon and name.isupper() else last


def speaker_centroids(lines: list[tuple[str, str, str]], character: str, encoder: str) -> dict[str, np.ndarray]:
    from adapterlab.embeddings import embed

    by_speaker: dict[str, list[str]] = {}
    for _, speaker, text in lines:
        by_speaker.setdefault(speaker, []).append(text)
    kept = {s: t for s, t in by_speaker.items() if len(t) >= MIN_CENTROID_LINES or s == character}
    return {s: style.centroid(embed(t, encoder).numpy()) for s, t in kept.items()}


# ------------------------------------------------------------------------------------------------------ judge


def load_judge(ctx: EvalContext, reader, seen, lines, held_out) -> dict[str, Any]:
    """The style judge of this run (trained once, in RUN/judge), its held-out figures and a scoring function."""
    if ctx.tasks is None:
        raise RuntimeError("the style judge is trained through the evaluate stage (adapterlab eval)")
    folder = ctx.run.root / "judge"
    stamp = folder / "judge_for.json"
    data = read_json(ctx.run.data_meta).get("fingerprint") if ctx.run.data_meta.is_file() else None
    current = stamp.is_file() and read_json(stamp).get("data_fingerprint") == data
    if not (current and (folder / "adapter" / "adapterlab.json").is_file()):
        console.print("[dim]Training the style judge (the character vs everyone else) ...[/dim]")
        shutil.rmtree(folder, ignore_errors=True)  # a judge of other data (or half trained) is replaced whole
        ctx.tasks.train(judge_recipe(ctx, folder, judge_rows(seen, reader.character, ctx.recipe.seed)))
        write_json(stamp, {"data_fingerprint": data, "run": str(ctx.run.root)})
    predictor = ctx.tasks.predictor(folder, ctx.precision, proba=True)

    def score(texts: list[str]) -> list[float]:
        outputs = predictor.predict([{"text": t} for t in texts])
        return [float(o[f"p_{CHARACTER}"]) if isinstance(o, dict) else 0.0 for o in outputs]

    test_lines = [line for line in lines if line[0] in held_out]
    truth = [CHARACTER if speaker == reader.character else OTHER for _, speaker, _ in test_lines]
    probabilities = score([text for _, _, text in test_lines])
    predicted = [CHARACTER if p >= 0.5 else OTHER for p in probabilities]
    return {"score": score, "run": str(folder), **judge_figures(truth, predicted)}


def judge_rows(seen, character: str, seed: int) -> list[dict[str, str]]:
    """The lines of the training scenes: every line of the character, as many of the others' (seeded)."""
    own = [text for _, speaker, text in seen if speaker == character]
    others = [text for _, speaker, text in seen if speaker != character]
    random.Random(seed).shuffle(others)
    rows = [{"text": t, "label": CHARACTER} for t in own] + [{"text": t, "label": OTHER} for t in others[: len(own)]]
    random.Random(seed + 1).shuffle(rows)
    return rows


def judge_recipe(ctx: EvalContext, folder: Path, rows: list[dict[str, str]]) -> dict[str, Any]:
    folder.parent.mkdir(parents=True, exist_ok=True)
    path = folder.parent / "judge_lines.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, ["text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return {
        "name": folder.name, "task": "classify", "seed": ctx.recipe.seed, "output_dir": str(folder.parent),
        "model": {"base": ctx.recipe.eval.style_encoder},
        "data": {"path": str(path), "text_columns": ["text"], "label_column": "label", "labels": [CHARACTER, OTHER],
                 "max_tokens": 96},
        "split": {"train": 0.85, "val": 0.15, "test": 0.0},
        "lora": {"full_finetune": True},
        "train": {"epochs": ctx.recipe.eval.judge_epochs, "batch_size": 16, "learning_rate": 5e-5,
                  "eval_every": "epoch", "save_every": "epoch", "keep_checkpoints": 1, "log_every": 10,
                  "metric_for_best": "weighted_f1"},
        # The judge is a measuring instrument: the frozen encoder's embeddings keep it quick (seconds, not the
        # minutes of a contrastive stage on a thousand lines) and comparable with the figures in the docs (so is the
        # order of preference it was measured with).
        "select": {"contrastive_pairs": 0, "candidates": ["ensemble", "finetuned", "embedding", "tfidf"]},
    }  # fmt: skip


def judge_figures(truth: list[str], predicted: list[str]) -> dict[str, Any]:
    from sklearn.metrics import accuracy_score, f1_score

    counts = Counter(truth)
    return {
        "held_out_lines": len(truth),
        "held_out_character_lines": counts[CHARACTER],
        "accuracy": float(accuracy_score(truth, predicted)) if truth else float("nan"),
        "macro_f1": float(f1_score(truth, predicted, average="macro")) if truth else float("nan"),
        "character_f1": float(f1_score(truth, predicted, pos_label=CHARACTER)) if truth else float("nan"),
    }


# ----------------------------------------------------------------------------------------------------- report


def style_blocks(ctx: EvalContext, result: dict[str, Any]) -> list:
    entries = result["metrics"]
    judge = result["judge"]
    chart = comparison_chart(
        {k: v for k, v in entries.items() if k not in ("length",)}, list(SYSTEMS),
        f"Style of {result['character']}: real held-out lines, base, adapter", ctx.run.eval_file("style.png"),
    )  # fmt: skip
    rows = []
    for row, entry in zip(comparison_rows(entries, list(SYSTEMS)), entries.values(), strict=True):
        low, high = entry["gap_ci95"]
        rows.append([*row[:-1], f"{entry['gap_to_real']:+.3f} [{low:+.3f}, {high:+.3f}]", row[-1]])
    notes = [
        f"Style judge ({judge['run']}): the character vs everyone else, trained on the lines of the training scenes; "
        f"on the {judge['held_out_lines']} real lines of the test scenes ({judge['held_out_character_lines']} of "
        f"them the character's): accuracy {judge['accuracy']:.3f}, macro F1 {judge['macro_f1']:.3f}. Its score is "
        "worth as much as that accuracy.",
        f"Centroids of speakers with at least {MIN_CENTROID_LINES} lines in the training scenes: "
        f"{', '.join(result['centroids'])}.",
        "Commonest first word of the replies: "
        + ", ".join(f"{s} '{w}' ({result['metrics']['opening'][s]:.0%})" for s, w in result["openings"].items())
        + "; a share far above the real lines' is a voice reduced to a catchphrase.",
        "real = the held-out lines themselves (the ceiling); delta = adapter - base with its 95% paired bootstrap "
        "interval; gap = real - adapter.",
    ]
    return [
        Table(
            ["style", *SYSTEMS, "delta", "95% CI of delta", "gap to real [95% CI]", "verdict"],
            rows,
            title=f"Style fidelity: {result['character']}",
            terminal=True,
            verdict=True,
        ),
        Bullets(notes),
        Image(chart, "style"),
        Text("Base vs adapter on the text metrics", heading=True),
    ]
