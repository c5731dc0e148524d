"""What the ``code`` evaluation adds to the shared one: the sandbox, its calibration, and sampled programs.

The shared evaluation (:mod:`adapterlab.generative.evaluate`) generates one greedy reply per problem for the base
and the adapter and scores the programs taken from them; this module builds the :class:`ExecutionScoring` the
execution metrics use: the sandbox (with ``eval.execute_code``), its timeout calibrated on the reference programs,
and, with ``eval.samples`` = n > 1, n sampled programs per problem and system for pass@k, generated in batches
through the same generator.
"""

from __future__ import annotations

from dataclasses import replace

from adapterlab.generative.execution import ExecutionScoring
from adapterlab.metrics.code import extract_code


def execution_scoring(ctx, generator, decoding, systems) -> ExecutionScoring:
    cfg, rows = ctx.recipe.eval, ctx.rows
    tests, entry_points = [r.get("tests") or "" for r in rows], [r.get("entry_point") or "" for r in rows]
    if not cfg.execute_code:
        reason = "set eval.execute_code: true to run the generated programs with their tests in the sandbox"
        return ExecutionScoring(tests, entry_points, cfg.pass_k, reason=reason)
    from adapterlab.sandbox import Limits, Sandbox

    sandbox = Sandbox(Limits(memory_mb=cfg.memory_mb))
    scoring = ExecutionScoring(tests, entry_points, cfg.pass_k, sandbox)
    scoring.calibrate([r.get("solution") or extract_code(r["completion"]) for r in rows], cfg.timeout)
    if cfg.samples > 1 and scoring.tested and ("pass_at_k" in cfg.metrics):
        sampling = replace(decoding, do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p)
        prompts = [rows[i]["messages"] for i in scoring.tested]
        for system in systems:
            generated = generator.generate(prompts, system, sampling, n=cfg.samples, label=f"sample: {system:<8}")
            scoring.samples[system] = {
                i: [extract_code(text) for text in g.samples] for i, g in zip(scoring.tested, generated, strict=True)
            }
    return scoring
