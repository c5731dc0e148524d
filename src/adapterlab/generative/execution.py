"""Running generated programs against tests for evaluation: greedy pass rate and sampled pass@k, in the sandbox.

:class:`ExecutionScoring` is what the execution metrics of the registry (``execution``, ``pass_at_k``) ask: it
builds each program from the extracted code and the example's tests (:func:`adapterlab.sandbox.check_program`),
runs a whole system's programs in one parallel sandbox call, and keeps every verdict for predictions.jsonl. The
timeout is calibrated on the reference programs on this machine; a problem whose reference fails its own tests is
left out of execution (counted), since no answer could pass it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any


class ExecutionScoring:
    def __init__(self, tests: Sequence[str], entry_points: Sequence[str], ks: Sequence[int], sandbox=None,
                 reason: str = "", builder=None):  # fmt: skip
        self.tests = list(tests)
        self.entry_points = [e or None for e in entry_points]
        self.ks = list(ks)
        self.sandbox = sandbox
        self.reason = reason  # why nothing runs, when the sandbox is off
        self.builder = builder  # (code, index) -> program, instead of code + tests (HumanEval's own program shape)
        self.tested = [i for i, t in enumerate(self.tests) if t and t.strip()]
        self.broken: list[int] = []  # problems whose reference program fails its tests
        self.samples: dict[str, dict[int, list[str]]] = {}  # system -> example -> sampled programs
        self.verdicts: dict[str, dict[int, Any]] = {}  # system -> example -> greedy verdict
        self.sample_verdicts: dict[str, dict[int, list[Any]]] = {}

    @property
    def executes(self) -> bool:
        return self.sandbox is not None

    def program(self, code: str, index: int) -> str:
        from adapterlab.sandbox import check_program

        if self.builder is not None:
            return self.builder(code, index)
        return check_program(code, self.tests[index], self.entry_points[index])

    def calibrate(self, references: Sequence[str], timeout: float | str) -> None:
        """Leave out problems whose reference fails; set the timeout from the references' run times ("auto")."""
        if not self.executes or not self.tested:
            return
        verdicts = self.sandbox.run([self.program(references[i], i) for i in self.tested], label="execute: reference")
        self.broken = [i for i, v in zip(self.tested, verdicts, strict=True) if not v.passed]
        self.tested = [i for i in self.tested if i not in self.broken]
        if timeout == "auto":
            if self.tested:
                self.sandbox.calibrate([self.program(references[i], i) for i in self.tested])
        else:
            self.sandbox.limits = replace(self.sandbox.limits, timeout=float(timeout))

    def passed(self, system: str, programs: Sequence[str], indices: Sequence[int]) -> list[bool]:
        verdicts = self.sandbox.run([self.program(p, i) for p, i in zip(programs, indices, strict=True)],
                                    label=f"execute: {system}")  # fmt: skip
        self.verdicts[system] = dict(zip(indices, verdicts, strict=True))
        return [v.passed for v in verdicts]

    def pass_at_k(self, system: str, indices: Sequence[int]) -> dict[int, list[float]]:
        """k -> per-problem unbiased pass@k estimate, for the k every problem has n >= k samples for."""
        from adapterlab.sandbox import pass_at_k

        samples = self.samples.get(system)
        if not samples:
            return {}
        jobs = [(i, code) for i in indices for code in samples[i]]
        verdicts = self.sandbox.run([self.program(code, i) for i, code in jobs], label=f"execute: {system} samples")
        by_problem: dict[int, list[Any]] = {i: [] for i in indices}
        for (i, _), verdict in zip(jobs, verdicts, strict=True):
            by_problem[i].append(verdict)
        self.sample_verdicts[system] = by_problem
        n = min(len(v) for v in by_problem.values())
        return {
            k: [pass_at_k(len(v), sum(x.passed for x in v), k) for v in by_problem.values()] for k in self.ks if k <= n
        }

    def notes(self) -> list[str]:
        if not self.executes:
            return [f"Execution: off ({self.reason})"]
        limits = self.sandbox.limits
        lines = [f"Execution: generated programs ran with their tests in the sandbox ({self.sandbox.isolation}; "
                 f"timeout {limits.timeout:.1f} s, memory {limits.memory_mb} MB); {len(self.tested)} problems with "
                 "tests"]  # fmt: skip
        if self.broken:
            lines.append(f"Execution: {len(self.broken)} problems left out: their reference program fails its tests")
        if self.samples:
            n = min((len(s) for per in self.samples.values() for s in per.values()), default=0)
            lines.append(f"pass@k: {n} sampled programs per problem, unbiased estimator")
        return lines

    def fields(self, index: int, system: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        verdict = self.verdicts.get(system, {}).get(index)
        if verdict is not None:
            out["tests"] = {"passed": verdict.passed, "status": verdict.status, "detail": verdict.detail}
        sampled = self.sample_verdicts.get(system, {}).get(index)
        if sampled:
            out["samples"] = [{"code": code, "passed": v.passed, "status": v.status}
                              for code, v in zip(self.samples[system][index], sampled, strict=True)]  # fmt: skip
        return out
