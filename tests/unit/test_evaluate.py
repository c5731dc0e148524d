"""adapterlab eval on a tiny trained run: one loaded model, honest base outputs, every report file."""

import json

import pytest
from typer.testing import CliRunner

from adapterlab.cli import app
from adapterlab.errors import DataError
from adapterlab.generation import Decoding, TransformersGenerator
from adapterlab.runs import read_jsonl
from adapterlab.stages.evaluate import evaluate

FAST = ["eval.metrics=[perplexity,rouge,bleu,chrf,language,clarify,length]"]


def test_base_and_adapter_come_from_one_loaded_model(trained_run, monkeypatch):
    import transformers

    loads = []
    original = transformers.AutoModelForCausalLM.from_pretrained.__func__

    def counting(cls, *args, **kwargs):
        loads.append(args[0])
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", classmethod(counting))
    report = evaluate(trained_run, FAST).report
    assert len(loads) == 1
    assert set(report["metrics"]) == {
        "perplexity", "rouge1", "rouge2", "rougeL", "rougeLsum", "bleu", "chrf", "language", "clarify", "length"
    }  # fmt: skip


def test_base_outputs_equal_the_plain_base_model(trained_run, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    evaluate(trained_run, FAST)
    predictions = read_jsonl(trained_run / "eval" / "predictions.jsonl")
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    replies = TransformersGenerator(plain, tokenizer).generate(
        [p["messages"] for p in predictions], "base", Decoding(max_new_tokens=8)
    )
    assert [r.text for r in replies] == [p["base"]["text"] for p in predictions]
    assert any(p["base"]["text"] != p["adapter"]["text"] for p in predictions)


def test_report_files_and_contents(trained_run):
    report = evaluate(trained_run, [*FAST, "eval.max_examples=4"]).report
    folder = trained_run / "eval"
    for name in ("predictions.jsonl", "report.json", "report.md", "report.html", "comparison.png"):
        assert (folder / name).is_file(), name
    saved = json.loads((folder / "report.json").read_text())
    assert saved["n_examples"] == 4 and saved["test_split_size"] >= 4
    assert saved["decoding"]["max_new_tokens"] == 8 and saved["seed"] == 42
    assert saved["versions"]["rouge-score"]
    entry = saved["metrics"]["perplexity"]
    assert entry["higher_is_better"] is False and entry["ci95"][0] <= entry["delta"] <= entry["ci95"][1]
    clarify = saved["metrics"]["clarify"]
    flagged = [r for r in read_jsonl(trained_run / "data" / "test.jsonl")[:4] if r["source"]["needs_details"] == "true"]
    assert clarify["examples"] == len(flagged)
    markdown = (folder / "report.md").read_text()
    assert "| ROUGE-L F1 |" in markdown and "paired bootstrap, 100 resamples" in markdown
    assert report["examples"] and {e["kind"] for e in report["examples"]} == {"best", "worst"}


def test_a_metric_that_cannot_be_computed_says_why_and_is_not_zero(trained_run, tmp_path):
    report = evaluate(trained_run, ["eval.metrics=[bertscore,clarify]", f"eval.bertscore_model={tmp_path}/nope"]).report
    assert "bertscore" not in report["metrics"]
    assert "not found" in report["not_computed"]["bertscore"]


def test_clarify_needs_its_column(trained_run):
    report = evaluate(trained_run, ["eval.metrics=[clarify]", "eval.clarify_column=null"]).report
    assert report["metrics"] == {}
    assert "eval.clarify_column" in report["not_computed"]["clarify"]


def test_eval_cli_and_bad_run_dir(trained_run, tmp_path):
    result = CliRunner().invoke(app, ["eval", str(trained_run), "eval.metrics=[rouge]", "eval.max_examples=2"])
    assert result.exit_code == 0, result.output
    assert "ROUGE-L F1" in result.output
    with pytest.raises(DataError, match="not a run directory"):
        evaluate(tmp_path)


def test_sampling_is_reproducible_with_the_seed(trained_run):
    sampled = ["eval.metrics=[length]", "eval.do_sample=true", "eval.temperature=1.5", "eval.max_new_tokens=12"]
    first = [p["adapter"]["text"] for p in _predictions(trained_run, sampled)]
    again = [p["adapter"]["text"] for p in _predictions(trained_run, sampled)]
    other = [p["adapter"]["text"] for p in _predictions(trained_run, [*sampled, "eval.seed=7"])]
    assert first == again
    assert first != other


def _predictions(run, overrides):
    evaluate(run, overrides)
    return read_jsonl(run / "eval" / "predictions.jsonl")


def test_stop_strings_cut_the_reply():
    from adapterlab.generation import cut_at_stop

    assert cut_at_stop("Hello\nBest regards\nIT", ["Best regards", "IT"]) == "Hello\n"
    assert cut_at_stop("no stop here", ["###"]) == "no stop here"
