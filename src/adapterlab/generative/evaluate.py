"""The generative tasks' evaluation: base and adapter on the test split, one report with deltas and intervals.

Reads top to bottom: one generator holding the base with the adapter attached -> the same prompts, decoding and
seed for ``base`` and ``adapter`` -> log-likelihood of the reference replies for both (where the generator can
score) -> what the task's own metrics need (its ``scoring`` hook: a summary's documents, a program's sandbox) ->
the metrics of the registry -> paired bootstrap -> report blocks and per-example predictions.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np

from adapterlab import metrics
from adapterlab.environment import environment, version_of
from adapterlab.generation import BASE, Decoding, Generation, Generator, TransformersGenerator
from adapterlab.metrics.bootstrap import paired_bootstrap
from adapterlab.report import Bullets, Image, Pair, Report, Table, Text, comparison_chart, comparison_rows, fmt
from adapterlab.task import EvalContext, Evaluation

ADAPTER = "adapter"  # the name the evaluated adapter is loaded under
SYSTEMS = (BASE, ADAPTER)


def evaluate(ctx: EvalContext, task: Any = None) -> Evaluation:
    """``task`` (a GenerativeTask) adds what its own metrics need: ``scoring`` returns extra TextContext fields
    (a summary's documents; a program's tests, sandbox and sampled completions), ``scoring_notes`` report lines,
    ``prediction_fields`` per-example fields of predictions.jsonl, and ``scored_text`` what of a reply and a
    reference the metrics score (a code task: the program taken from it)."""
    generator = ctx.generator or load_generator(ctx)
    try:
        return evaluate_with(ctx, task, generator)
    finally:
        if ctx.generator is None and hasattr(generator, "close"):
            generator.close()  # a vLLM server started for this evaluation stops here


def evaluate_with(ctx: EvalContext, task: Any, generator: Generator) -> Evaluation:
    cfg = ctx.recipe.eval
    decoding = decoding_of(ctx.recipe)
    seed = decoding.seed
    prompts = [r["messages"] for r in ctx.rows]
    outputs: dict[str, list[Generation]] = {}
    wall: dict[str, float] = {}
    for system in SYSTEMS:
        began = time.perf_counter()
        outputs[system] = generator.generate(prompts, system, decoding, label=f"generate: {system:<8}")
        wall[system] = time.perf_counter() - began
    nll = reference_nll(generator, ctx) if "perplexity" in cfg.metrics else None
    scoring, scored, not_computed = score_outputs(ctx, task, generator, decoding, outputs, cfg.metrics, nll)
    if "perplexity" in not_computed and getattr(generator, "nll_unavailable", None):
        not_computed["perplexity"] = generator.nll_unavailable  # say why this backend cannot, not just that
    data = report_data(ctx, scored, not_computed, outputs, wall, seed, generator.name, reference_values(scoring, cfg))
    data["endpoint"] = getattr(generator, "endpoint", None)
    if data["endpoint"]:
        data["precision"] = "the server's precision"
    data["notes"] = task.scoring_notes(scoring) if task else []
    fields = task.prediction_fields(scoring, outputs) if task else None
    return Evaluation(build_report(ctx, data), predictions(ctx.rows, outputs, scored, fields))


def decoding_of(recipe) -> Decoding:
    """The decoding a recipe's eval section asks for (its seed: eval.seed, else the recipe's)."""
    cfg = recipe.eval
    seed = recipe.seed if cfg.seed is None else cfg.seed
    return Decoding(cfg.max_new_tokens, cfg.do_sample, cfg.temperature, cfg.top_p, cfg.stop, cfg.repetition_penalty,
                    seed)  # fmt: skip


def score_outputs(ctx: EvalContext, task: Any, generator, decoding: Decoding, outputs: dict[str, list[Generation]],
                  selected: list[str], nll=None) -> tuple[metrics.TextContext, dict, dict[str, str]]:  # fmt: skip
    """The selected metric families for every system in ``outputs`` (base first) on ``ctx.rows``: (the scoring
    context, the scored metrics, the reason per family not computed). ``adapterlab compare`` calls it per test set."""
    scored_text = task.scored_text if task else str
    scoring = metrics.TextContext(
        references=[scored_text(r["completion"]) for r in ctx.rows],
        inputs=[r["messages"][-1]["content"] for r in ctx.rows],
        sources=[r["source"] for r in ctx.rows],
        options=ctx.recipe.eval,
        nll=nll,
        **(task.scoring(ctx, generator, decoding, outputs) if task else {}),
    )
    texts = {system: [scored_text(g.text) for g in generated] for system, generated in outputs.items()}
    scored, not_computed = metrics.score(selected, texts, scoring)
    return scoring, scored, not_computed


def reference_values(scoring: metrics.TextContext, cfg) -> dict[str, float]:
    """The selected metrics that can score the references themselves (their length, a summary's invented figures):
    what the adapter was trained to imitate, beside what it and the base wrote."""
    scored, _ = metrics.score(metrics.reference_free(cfg.metrics), {"reference": scoring.references}, scoring)
    return {name: result.systems["reference"].value for name, result in scored.items()}


def load_generator(ctx: EvalContext) -> Generator:
    """The backend the recipe names: ``transformers`` loads one base model with the adapter attached (``base``
    runs it with the adapter bypassed); ``openai`` asks a server at ``eval.endpoint`` for both by name (the
    adapter under the run directory's name by default, as ``adapterlab serve RUN`` names it)."""
    from adapterlab.models import load_with_adapter

    if ctx.recipe.eval.backend == "openai":
        from adapterlab.remote import openai_generator

        return openai_generator(ctx.recipe.eval, ctx.run.root.name, ADAPTER)
    if ctx.recipe.eval.backend == "vllm":
        return vllm_generator(ctx)

    model, tokenizer = load_with_adapter(ctx.info, ctx.precision, adapter_name=ADAPTER)
    return TransformersGenerator(model, tokenizer, ctx.recipe.eval.batch_size)


def vllm_generator(ctx: EvalContext) -> Generator:
    """A vLLM server started with the run's base and adapter (as ``adapter``, the base as ``base``) and the
    adapter's tokenizer (its chat template), asked over its OpenAI API; closing the generator stops the server."""
    from adapterlab.models import adapter_base
    from adapterlab.remote import OpenAIGenerator
    from adapterlab.vllm import VLLMServer

    cfg = ctx.recipe.eval
    ctx.run.eval.mkdir(parents=True, exist_ok=True)
    server = VLLMServer(adapter_base(ctx.info), {ADAPTER: ctx.info.path}, tokenizer=str(ctx.info.path),
                        precision=ctx.precision, python=cfg.vllm_python, extra_args=cfg.vllm_args,
                        log_path=ctx.run.eval_file("vllm.log"))  # fmt: skip
    server.start()
    try:
        generator = OpenAIGenerator(server.endpoint, {BASE: server.base_name, ADAPTER: ADAPTER},
                                    api_key=server.api_key, concurrency=cfg.batch_size)  # fmt: skip
    except BaseException:
        server.stop()
        raise
    generator.name = "vllm"
    generator.on_close.append(server.stop)
    return generator


def reference_nll(generator, ctx: EvalContext) -> dict[str, tuple[list, list]] | None:
    """Per system: summed NLL and count of the reference completion tokens (None if the generator cannot)."""
    from adapterlab.data.tokenized import load_tokenized

    if not hasattr(generator, "completion_nll"):
        return None
    data = load_tokenized(ctx.run.tokenized)["test"].select(range(len(ctx.rows)))
    rows = [{"input_ids": r["input_ids"], "completion_mask": r["completion_mask"]} for r in data]
    return {system: generator.completion_nll(rows, system) for system in SYSTEMS}


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


def metric_entries(scored: dict[str, metrics.Scored], cfg, seed: int) -> dict[str, dict[str, Any]]:
    entries = {}
    for name, result in scored.items():
        delta = paired_bootstrap(result.systems[BASE], result.systems[ADAPTER], cfg.bootstrap, seed)
        definition = metrics.metric(name)
        entries[name] = {
            "label": metrics.label_of(name, cfg),
            "base": delta.base,
            "adapter": delta.adapter,
            "delta": delta.delta,
            "ci95": [delta.low, delta.high],
            "excludes_zero": delta.excludes_zero,
            "higher_is_better": definition.higher_is_better,
            "percent": definition.percent,
            "examples": len(result.indices),
        }
    return entries


def report_data(ctx: EvalContext, scored, not_computed, outputs, wall, seed: int, backend: str,
                references: dict[str, float] | None = None) -> dict[str, Any]:  # fmt: skip
    cfg, rows = ctx.recipe.eval, ctx.rows
    entries = metric_entries(scored, cfg, seed)
    for name, value in (references or {}).items():
        if name in entries:
            entries[name]["reference"] = value
    libraries = environment()["libraries"]
    versions = {k: libraries.get(k) for k in ("adapterlab", "torch", "transformers", "peft")}
    versions |= {extra: version_of(extra) for extra in ("rouge-score", "sacrebleu", "bert-score", "langdetect")}
    return {
        **ctx.report_header(len(rows)),
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
        "precision": ctx.precision,
        "backend": backend,
        "bootstrap": cfg.bootstrap,
        "base_model": ctx.info.base_model.spec,
        "adapter": str(ctx.info.path),
        "versions": versions,
        "metrics": entries,
        "not_computed": not_computed,
        "generation": {system: generation_stats(outputs[system], wall[system]) for system in SYSTEMS},
        "examples": pick_examples(rows, outputs, scored, cfg.examples_in_report),
    }


def pick_examples(rows, outputs, scored, count: int) -> list[dict[str, Any]]:
    key = next((k for k in ("rougeL", "codebleu", "chrf", "bleu") if k in scored), None)
    if key is None or count == 0:
        return []
    deltas = scored[key].systems[ADAPTER].per_example - scored[key].systems[BASE].per_example
    order = np.argsort(deltas)
    chosen = [("best", int(i)) for i in order[::-1][:count]] + [("worst", int(i)) for i in order[:count]]
    return [
        {"kind": kind, "id": rows[i]["id"], "delta": float(deltas[i]), "metric": key,
         "input": shown_input(rows[i]["messages"]), "reference": rows[i]["completion"],
         "base": outputs[BASE][i].text, "adapter": outputs[ADAPTER][i].text}
        for kind, i in chosen
    ]  # fmt: skip


def shown_input(messages: list[dict[str, str]]) -> str:
    """What the report shows as an example's input: the user message, or the turns of a conversation so far."""
    turns = [m for m in messages if m["role"] != "system"]
    if len(turns) == 1:
        return turns[0]["content"]
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in turns)


GENERATION_ROWS = [
    ("latency_mean_s", "latency per example, mean (s, batch time / batch size)"),
    ("latency_p50_s", "latency per example, p50 (s)"),
    ("latency_p95_s", "latency per example, p95 (s)"),
    ("tokens_per_s", "generated tokens/s"),
    ("new_tokens_mean", "generated tokens per reply, mean"),
]


def backend_of(data: dict[str, Any]) -> str:
    """``transformers``, or ``openai at http://host:port/v1``: which engine generated the replies."""
    endpoint = data.get("endpoint")
    return f"{data['backend']} at {endpoint}" if endpoint else data["backend"]


def settings_lines(data: dict[str, Any]) -> list[str]:
    d = data["decoding"]
    sampling = f"temperature {d['temperature']}, top_p {d['top_p']}" if d["do_sample"] else "greedy"
    if d.get("repetition_penalty", 1.0) != 1.0:
        sampling += f", repetition_penalty {d['repetition_penalty']}"
    versions = ", ".join(f"{k} {v}" for k, v in data["versions"].items() if v)
    return [
        f"Examples: {data['n_examples']} of {data['test_split_size']} in the test split (never used in training "
        "or model selection)",
        f"Decoding: {sampling}, max_new_tokens {d['max_new_tokens']}, stop {d['stop'] or 'end-of-turn token'}, "
        f"batch {d['batch_size']}, {data['precision']}, backend {backend_of(data)}, seed {data['seed']}",
        f"Base model: {data['base_model']}; adapter: {data['adapter']}",
        f"Intervals: paired bootstrap, {data['bootstrap']} resamples",
        f"Versions: {versions}",
        *data.get("notes", []),
    ]


def build_report(ctx: EvalContext, data: dict[str, Any]) -> Report:
    entries = data["metrics"]
    ctx.run.eval.mkdir(parents=True, exist_ok=True)
    chart = comparison_chart(entries, list(SYSTEMS), f"Base vs adapter on {data['n_examples']} test examples",
                             ctx.run.eval_file("comparison.png"))  # fmt: skip
    title = f"{data['name']}: base vs adapter on {data['n_examples']} test examples"
    blocks: list = [
        Bullets(settings_lines(data)),
        Table(
            ["metric", "references", "base", "adapter", "delta", "95% CI of delta", "verdict"],
            [
                [row[0], fmt(e["reference"]) if "reference" in e else "-", *row[1:]]
                for row, e in zip(comparison_rows(entries, list(SYSTEMS)), entries.values(), strict=True)
            ],
            title=title,
            terminal=True,
            verdict=True,
        ),
        Text(
            "references = the test split's own answers, scored where a metric needs no reference to compare with "
            "(what the adapter learned to imitate)"
        ),
    ]
    blocks += [Text(f"not computed {name}: {why}", terminal=True) for name, why in data["not_computed"].items()]
    gen = data["generation"]
    blocks += [
        Image(chart, "comparison"),
        Table(
            ["generation", "base", "adapter"],
            [[label, fmt(gen[BASE][key]), fmt(gen[ADAPTER][key])] for key, label in GENERATION_ROWS],
        ),
        Image(ctx.run.loss_plot if ctx.run.loss_plot.is_file() else None, "loss curves"),
    ]
    if data["examples"]:
        blocks.append(Text(f"Examples (best and worst by {data['examples'][0]['metric']} difference)", heading=True))
    for e in data["examples"]:
        outputs = [("Reference", e["reference"]), ("Base", e["base"]), ("Adapter", e["adapter"])]
        blocks.append(Pair(f"{e['kind']}: {e['id']} ({e['metric']} delta {e['delta']:+.3f})", e["input"], outputs))
    blocks.append(Text(f"Report: {ctx.run.eval_file('report.html')}", terminal=True))
    return Report(f"Evaluation: {data['name']}", data, blocks)


def predictions(rows, outputs, scored, fields=None) -> list[dict[str, Any]]:
    """One line per test example: its prompt, reference, each system's reply and scores; ``fields(index, system)``
    adds a task's own per-reply fields (the code extracted from a reply and its test verdict)."""
    per_example: list[dict[str, Any]] = [{} for _ in rows]
    for name, result in scored.items():
        for position, index in enumerate(result.indices):
            per_example[index][name] = {s: float(result.systems[s].per_example[position]) for s in SYSTEMS}
    return [
        {
            "id": row["id"],
            "messages": row["messages"],
            "reference": row["completion"],
            **{
                system: {
                    "text": outputs[system][i].text,
                    "new_tokens": outputs[system][i].new_tokens,
                    "seconds": outputs[system][i].seconds,
                    "tokens_per_s": outputs[system][i].tokens_per_s,
                    **(fields(i, system) if fields else {}),
                }
                for system in SYSTEMS
            },
            "scores": per_example[i],
        }
        for i, row in enumerate(rows)
    ]
