"""The ``code`` task: instruction -> a fenced program, tests travelling with the row; the program taken from a
reply; and the evaluation running it in the sandbox (greedy pass rate, sampled pass@k)."""

from __future__ import annotations

import json

import pytest

from adapterlab.metrics.code import codebleu, extract_code, syntax_valid
from adapterlab.registry import recipe_from_dict
from adapterlab.runs import RunDir, read_jsonl
from adapterlab.stages.prepare import prepare

TASKS = [
    ("add", "def add(a: int, b: int) -> int:\n    return a + b", "assert add(1, 2) == 3\nassert add(0, 0) == 0"),
    ("double", "def double(x: int) -> int:\n    return 2 * x", "assert double(2) == 4\nassert double(-1) == -2"),
    ("shout", "def shout(s: str) -> str:\n    return s.upper()", "assert shout('a') == 'A'\nassert shout('') == ''"),
    ("first", "def first(xs: list) -> object:\n    return xs[0] if xs else None", "assert first([3]) == 3"),
    ("last", "def last(xs: list) -> object:\n    return xs[-1] if xs else None", "assert last([1, 2]) == 2"),
]


def write_tasks(path, count: int = 20, broken: bool = False, long: bool = False):
    with path.open("w", encoding="utf-8") as handle:
        for i in range(count):
            name, solution, tests = TASKS[i % len(TASKS)]
            if broken and i == 0:
                solution = "def add(a, b:\n    return"
            if long and i == 0:
                solution += "".join(
                    f"\n\n\ndef helper_{k}(value: int) -> int:\n    return value + {k}" for k in range(40)
                )
            row = {"task_id": f"t{i}", "entry_point": name, "instruction": f"Write `{name}` (variant {i}).",
                   "solution": solution, "tests": tests}  # fmt: skip
            handle.write(json.dumps(row) + "\n")
    return path


def code_recipe(tmp_path, model_dir, data_path, **eval_keys) -> dict:
    return {
        "name": "code",
        "task": "code",
        "output_dir": str(tmp_path / "runs"),
        "model": {"base": str(model_dir)},
        "data": {
            "path": str(data_path),
            "id_column": "task_id",
            "tests_column": "tests",
            "entry_point_column": "entry_point",
            "max_tokens": 256,
        },
        "split": {"train": 0.5, "val": 0.25, "test": 0.25},
        "train": {"max_steps": 2, "batch_size": 2, "eval_every": 2, "save_every": 2, "precision": "fp32"},
        "eval": {"max_new_tokens": 8, "bootstrap": 100, "precision": "fp32", **eval_keys},
    }


def test_rows_become_fenced_programs_with_their_tests(tmp_path, tiny_model_dir, tiny_tokenizer):
    recipe = recipe_from_dict(code_recipe(tmp_path, tiny_model_dir, write_tasks(tmp_path / "tasks.jsonl", broken=True)))
    report = prepare(recipe, tokenizer=tiny_tokenizer).report
    assert report["kept"] == 20 and report["conversation_notes"] == {"reference does not parse": 1}
    run = RunDir.for_recipe(recipe)
    rows = [r for name in ("train", "val", "test") for r in read_jsonl(run.split_file(name))]
    row = next(r for r in rows if r["id"] == "t1")
    assert row["completion"] == "```python\ndef double(x: int) -> int:\n    return 2 * x\n```"
    assert row["messages"][0]["role"] == "system" and row["messages"][-1]["content"] == "Write `double` (variant 1)."
    assert row["tests"].startswith("assert double(2)") and row["entry_point"] == "double"
    assert row["solution"] == "def double(x: int) -> int:\n    return 2 * x"


def test_a_program_is_never_cut(tmp_path, tiny_model_dir, tiny_tokenizer):
    tasks = write_tasks(tmp_path / "tasks.jsonl", long=True)
    report = prepare(recipe_from_dict(code_recipe(tmp_path, tiny_model_dir, tasks)), tokenizer=tiny_tokenizer).report
    assert report["kept"] == 19 and report["truncated"] == 0
    assert report["dropped"] == {"over_token_limit": 1}


@pytest.mark.parametrize(
    ("reply", "code"),
    [
        ("Sure!\n```python\ndef f():\n    return 1\n```\nThis returns 1.", "def f():\n    return 1"),
        ("```py\nx = 1\n```\n```python\ny = 2\n```", "x = 1"),  # the first Python block
        ("```text\nusage\n```\n```python\ny = 2\n```", "y = 2"),  # a non-Python block is skipped
        ("```\nz = 3\n```", "z = 3"),  # an untagged fence
        ("```python\ndef g():\n    return 2", "def g():\n    return 2"),  # cut off before the closing fence
        ("def h():\n    return 3", "def h():\n    return 3"),  # no fence: the reply is the program
        ("```javascript\nlet a = 1;\n```", "let a = 1;"),  # only another language: taken, and will not parse
    ],
)
def test_the_program_is_taken_from_the_reply(reply, code):
    assert extract_code(reply) == code


def test_syntax_and_codebleu():
    assert syntax_valid("def f(x):\n    return x") and not syntax_valid("def f(x:\n") and not syntax_valid("  ")
    same = codebleu(["def f(a):\n    return a + 1"], ["def f(a):\n    return a + 1"]).value
    other = codebleu(["print('hello world')"], ["def f(a):\n    return a + 1"]).value
    assert same == pytest.approx(1.0) and other < 0.5
