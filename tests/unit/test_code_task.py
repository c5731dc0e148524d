"""The ``code`` task: instruction -> a fenced program, tests travelling with the row; the program taken from a
reply; and the evaluation running it in the sandbox (greedy pass rate, sampled pass@k)."""

from __future__ import annotations

import json

import pytest

from adapterlab.generation import Generation
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


SOLUTIONS = {name: solution for name, solution, _ in TASKS}


class ScriptedGenerator:
    """The adapter answers with the reference in a fence; the base with a program that fails its tests. Sampled
    replies alternate right and wrong, so pass@k has a known value."""

    name = "scripted"

    def generate(self, prompts, model="base", decoding=None, n=1, label=None):
        out = []
        for messages in prompts:
            name = messages[-1]["content"].split("`")[1]
            right = f"Here it is:\n```python\n{SOLUTIONS[name]}\n```"
            wrong = f"```python\ndef {name}(*args):\n    return 'nope'\n```"
            if n > 1:
                samples = [right if (k % 2 == 0) == (model != "base") else wrong for k in range(n)]
                out.append(Generation(samples[0], 5, 0.01, 0.01, samples=samples))
            else:
                out.append(Generation(right if model != "base" else wrong, 5, 0.01, 0.01))
        return out


def trained_code_run(tmp_path, tiny_model_dir, *overrides):
    from adapterlab.stages.train import train

    data = write_tasks(tmp_path / "tasks.jsonl", count=20)
    return train(recipe_from_dict(code_recipe(tmp_path, tiny_model_dir, data), list(overrides))).run


def test_generated_programs_run_with_their_tests_in_the_sandbox(tmp_path, tiny_model_dir):
    from adapterlab.stages.evaluate import evaluate

    run = trained_code_run(tmp_path, tiny_model_dir)
    overrides = ["eval.execute_code=true", "eval.samples=4", "eval.pass_k=[1,2,5]"]
    data = evaluate(run.root, overrides, generator=ScriptedGenerator()).report
    metrics = data["metrics"]
    assert metrics["pass_rate"]["base"] == 0.0 and metrics["pass_rate"]["adapter"] == 1.0
    assert metrics["syntax_valid"]["base"] == metrics["syntax_valid"]["adapter"] == 1.0
    assert metrics["codebleu"]["adapter"] == pytest.approx(1.0)
    # Four samples per problem, two right for either model: pass@1 = 2/4, pass@2 = 1 - C(2,2)/C(4,2).
    assert metrics["pass@1"]["base"] == pytest.approx(0.5) == metrics["pass@1"]["adapter"]
    assert metrics["pass@2"]["adapter"] == pytest.approx(1 - 1 / 6)
    assert "pass@5" not in metrics  # fewer than 5 samples per problem: not reported
    assert any(line.startswith("Execution: generated programs ran") for line in data["notes"])
    predictions = read_jsonl(run.eval_file("predictions.jsonl"))
    first = predictions[0]["adapter"]
    assert first["code"] == SOLUTIONS[first["code"].split("(")[0].split()[-1]]  # the program, out of its fence
    assert first["tests"]["passed"] is True and len(first["samples"]) == 4
    assert predictions[0]["base"]["tests"]["passed"] is False


def test_execution_is_opt_in(tmp_path, tiny_model_dir):
    from adapterlab.stages.evaluate import evaluate

    run = trained_code_run(tmp_path, tiny_model_dir)
    data = evaluate(run.root, generator=ScriptedGenerator()).report
    assert "pass_rate" not in data["metrics"] and "execute_code" in data["not_computed"]["execution"]
    assert data["metrics"]["syntax_valid"]["adapter"] == 1.0  # what needs no execution is still scored
