"""Run untrusted generated code and score it: the sandbox, pass@k, HumanEval (``adapterlab.sandbox.humaneval``).

A leaf library: it imports only the standard library, ``adapterlab.errors`` and ``adapterlab.console``. See
``adapterlab.sandbox.core`` for what the sandbox defends against and what it does not.
"""

from adapterlab.sandbox.core import Limits, Sandbox, SandboxError, Verdict
from adapterlab.sandbox.programs import (
    TESTS_MARKER,
    check_program,
    extract_code,
    pass_at_k,
    pass_at_k_table,
    syntax_valid,
)

__all__ = [
    "TESTS_MARKER",
    "Limits",
    "Sandbox",
    "SandboxError",
    "Verdict",
    "check_program",
    "extract_code",
    "pass_at_k",
    "pass_at_k_table",
    "syntax_valid",
]
