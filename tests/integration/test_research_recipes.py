"""The research-assistant recipes end to end on the embedded model, a few steps each: a summarisation adapter and
a code adapter on one base, compared on both test sets, and HumanEval through the sandbox."""

import json

import pytest

from adapterlab.registry import load_recipe
from adapterlab.runs import read_jsonl
from adapterlab.stages.pipeline import run

pytestmark = pytest.mark.integration

SMALL = ["train.max_steps=2", "train.batch_size=4", "train.eval_every=2", "train.save_every=2", "train.log_every=1"]
SMALL += ["train.golden_prompts=1", "eval.max_examples=3", "eval.max_new_tokens=16", "eval.bootstrap=200"]
SMALL += ["split.val=0.05"]  # CI time: the base's and the adapter's validation loss on 15 rows, not 30


@pytest.fixture(scope="module")
def research_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("research")
    summarize = load_recipe(
        "recipes/summarize.yaml", [*SMALL, "split.train=0.85", "data.max_tokens=320", f"output_dir={out}"]
    )
    code = load_recipe("recipes/code.yaml", [*SMALL, "split.train=0.75", "data.max_tokens=384", "eval.samples=2",
                                              "eval.pass_k=[1,2]", f"output_dir={out}"])  # fmt: skip
    return out, run(summarize), run(code)


def test_summarize_recipe_cuts_documents_and_scores_against_them(research_runs):
    out, summarize, _ = research_runs
    report = json.loads((out / "summarize" / "data_report.json").read_text())
    assert report["input_rows"] == 300 == report["kept"] + report["dropped_total"]
    # At 320 tokens most articles lose their end (the lead stays), each cut counted; no summary is cut.
    assert report["truncated"] > 100 and report["conversation_notes"]["document cut (end)"] == report["truncated"]
    metrics = summarize["eval"]["metrics"]
    assert {"rougeL", "rougeLsum", "bertscore", "compression", "novel_2grams", "unsupported_figures"} <= set(metrics)
    assert summarize["eval"]["not_computed"] == {}


def test_code_recipe_runs_generated_programs_in_the_sandbox(research_runs):
    out, _, code = research_runs
    report = code["eval"]
    assert {"pass_rate", "pass@1", "pass@2", "syntax_valid", "codebleu", "bleu"} <= set(report["metrics"])
    assert any("ran with their tests in the sandbox" in line for line in report["notes"])
    predictions = read_jsonl(out / "code" / "eval" / "predictions.jsonl")
    assert len(predictions) == 3
    for row in predictions:
        for system in ("base", "adapter"):
            assert "code" in row[system] and row[system]["tests"]["status"] in {"passed", "failed", "timeout", "error"}
            assert len(row[system]["samples"]) == 2


def test_one_comparison_of_both_adapters_and_humaneval(research_runs):
    from adapterlab.stages.compare import compare
    from adapterlab.stages.evaluate import benchmark

    out, _, _ = research_runs
    data = compare([out / "summarize", out / "code"], out / "compare", max_examples=2, bootstrap=200).data
    by_set = {s["test_set"]: s for s in data["test_sets"]}
    assert set(by_set) == {"summarize", "code"}
    assert set(by_set["summarize"]["metrics"]["rougeL"]["adapters"]) == {"summarize", "code"}
    assert "pass_rate" in by_set["code"]["metrics"]  # the code test set is scored by running its programs
    assert (out / "compare" / "report.html").is_file()

    humaneval = benchmark(out / "code", "humaneval", limit=2, max_new_tokens=24)
    assert humaneval["problems"] == 2 and set(humaneval["metrics"]) >= {"pass_rate", "syntax_valid"}
    assert 0.0 <= humaneval["metrics"]["pass_rate"]["adapter"] <= 1.0
    samples = read_jsonl(out / "code" / "eval" / "humaneval" / "samples_adapter.jsonl")
    assert [s["task_id"] for s in samples] == ["HumanEval/0", "HumanEval/1"]
