"""Program text for the sandbox and the numbers computed from its verdicts: pass@k, syntax validity."""

from __future__ import annotations

import ast
import re
import warnings
from collections.abc import Mapping, Sequence

# The harness runs the text before the last marker as the code and the text after it as the tests, each compiled on
# its own (kept in sync with _harness.TESTS_MARKER, which cannot import this module).
TESTS_MARKER = "\n# --- adapterlab sandbox: tests ---\n"


def check_program(code: str, tests: str, entry_point: str | None = None) -> str:
    """The program that checks ``code`` against ``tests``: the code, then the tests, then ``check(entry_point)``
    when the tests define ``check(candidate)`` and an entry point is given."""
    program = code.rstrip("\n") + "\n" + TESTS_MARKER + tests.rstrip("\n") + "\n"
    if entry_point and re.search(r"^def check\(", tests, flags=re.MULTILINE):
        program += f"\ncheck({entry_point})\n"
    return program


# ```python / ```py / ```Python3 / ``` ... ``` ; an unclosed fence (the reply was cut) runs to the end.
_FENCE = re.compile(r"```[ \t]*(?P<lang>[\w+.-]*)[^\n]*\n(?P<code>.*?)(?:```|\Z)", re.DOTALL)
_PYTHON = {"", "python", "python3", "py", "py3"}


def extract_code(reply: str) -> str:
    """The program in a model's reply: the first Python (or untagged) fenced block, else the whole reply. The one
    place a reply becomes a program: evaluation, HumanEval and predictions all use it."""
    blocks = list(_FENCE.finditer(reply))
    for block in blocks:
        if block.group("lang").lower() in _PYTHON:
            return block.group("code").strip("\n")
    return (blocks[0].group("code") if blocks else reply).strip("\n")


def syntax_valid(code: str) -> bool:
    """Does the code parse as Python (nothing is run)? An empty program is not valid."""
    if not code.strip():
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escape sequences in generated code warn, they are not errors
            ast.parse(code)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return False
    return True


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c passed: 1 - C(n-c, k) / C(n, k), as a stable product
    (Chen et al. 2021): 1 - prod_{i=n-c+1}^{n} (1 - k / i)."""
    if not 0 <= c <= n or k < 1:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and k >= 1 (got n={n}, c={c}, k={k})")
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem (got {n})")
    if n - c < k:
        return 1.0
    product = 1.0
    for i in range(n - c + 1, n + 1):
        product *= 1.0 - k / i
    return 1.0 - product


def pass_at_k_table(correct: Mapping[str, Sequence[bool]], ks: Sequence[int]) -> dict[int, float]:
    """Mean pass@k over problems (problem -> pass/fail of each sample), only for the k where every problem has at
    least k samples."""
    if not correct:
        return {}
    fewest = min(len(samples) for samples in correct.values())
    return {
        k: sum(pass_at_k(len(s), sum(map(bool, s)), k) for s in correct.values()) / len(correct)
        for k in sorted(set(ks))
        if 1 <= k <= fewest
    }
