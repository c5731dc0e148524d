"""Code metrics on the program taken from a reply: syntax validity and CodeBLEU (the ``codebleu`` package).

:func:`extract_code` is the one place a reply becomes a program: the first fenced block (```python or a bare
fence) when there is one, else the reply itself. Evaluation keeps what it extracted in predictions.jsonl, and the
sandbox runs exactly that text.
"""

from __future__ import annotations

import ast
import re
import warnings
from collections.abc import Sequence

from adapterlab.metrics.stats import MetricStats, mean_stats

# ```python / ```py / ```Python3 / ``` ... ``` ; an unclosed fence (the reply was cut) runs to the end.
_FENCE = re.compile(r"```[ \t]*(?P<lang>[\w+.-]*)[^\n]*\n(?P<code>.*?)(?:```|\Z)", re.DOTALL)
_PYTHON = {"", "python", "python3", "py", "py3"}


def extract_code(reply: str) -> str:
    """The program in a reply: the first Python (or untagged) fenced block, else the whole reply."""
    blocks = list(_FENCE.finditer(reply))
    for block in blocks:
        if block.group("lang").lower() in _PYTHON:
            return block.group("code").strip("\n")
    return (blocks[0].group("code") if blocks else reply).strip("\n")


def syntax_valid(code: str) -> bool:
    """Parses as Python (nothing runs); an empty program is not valid."""
    if not code.strip():
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SyntaxWarning for odd escapes is still valid code
            ast.parse(code)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return False
    return True


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
