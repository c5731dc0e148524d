"""Code metrics on the program taken from a reply: syntax validity and CodeBLEU (the ``codebleu`` package).

:func:`~adapterlab.sandbox.programs.extract_code` is the one place a reply becomes a program: the first fenced
block (```python or a bare fence) when there is one, else the reply itself. Evaluation keeps what it extracted in
predictions.jsonl, and the sandbox runs exactly that text.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from adapterlab.metrics.stats import MetricStats, mean_stats
from adapterlab.sandbox.programs import extract_code, syntax_valid

__all__ = ["codebleu", "extract_code", "syntax_rate", "syntax_valid"]


def syntax_rate(programs: Sequence[str]) -> MetricStats:
    return mean_stats([float(syntax_valid(p)) for p in programs])


def codebleu(programs: Sequence[str], references: Sequence[str], language: str = "python") -> MetricStats:
    """CodeBLEU per example (n-gram, weighted n-gram, AST and data-flow match, equal weights), averaged."""
    from codebleu import calc_codebleu

    values = []
    for program, reference in zip(programs, references, strict=True):
        if not program.strip():
            values.append(0.0)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # it warns when a data-flow graph is empty
            values.append(float(calc_codebleu([reference], [program], lang=language)["codebleu"]))
    return mean_stats(values)
