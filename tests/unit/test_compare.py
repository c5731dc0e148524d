"""``adapterlab compare``: the base and every adapter on every run's test split, one report with intervals."""

from __future__ import annotations

import json

import pytest

from adapterlab.errors import DataError


def test_two_adapters_on_both_test_sets(trained_run, persona_run, tmp_path):
    from adapterlab.stages.compare import compare

    out = tmp_path / "compare"
    report = compare([trained_run, persona_run], out, max_examples=3, precision="fp32", bootstrap=100)
    data = json.loads((out / "report.json").read_text())
    assert data == json.loads(json.dumps(report.data))
    assert [s["test_set"] for s in data["test_sets"]] == ["chat", "persona"]
    for test_set in data["test_sets"]:
        assert test_set["examples"] == 3
        rouge = test_set["metrics"]["rougeL"]
        assert set(rouge["adapters"]) == {"chat", "persona"}  # every adapter scored on every test set
        for cell in rouge["adapters"].values():
            low, high = cell["ci95"]
            assert low <= cell["delta"] <= high
            assert cell["delta"] == pytest.approx(cell["value"] - rouge["base"])
        assert (out / f"compare_{test_set['test_set']}.png").is_file()
    markdown = (out / "report.md").read_text()
    assert "| test set | metric | base | chat | persona |" in markdown


def test_only_runs_with_generative_adapters(trained_classifier, trained_run, tmp_path):
    from adapterlab.stages.compare import compare

    with pytest.raises(DataError, match="generative adapters on one base"):
        compare([trained_run, trained_classifier], tmp_path / "out")
    with pytest.raises(DataError, match="not a run directory"):
        compare([tmp_path], tmp_path / "out")


def test_overrides_on_the_command_line_apply_to_every_run(trained_run, persona_run, tmp_path):
    from typer.testing import CliRunner

    from adapterlab.cli import app

    out = tmp_path / "out"
    base = ["compare", str(trained_run), str(persona_run), "--out", str(out), "--max-examples", "2"]
    bad = CliRunner().invoke(app, [*base, "eval.no_such_key=1"])
    assert bad.exit_code != 0 and "no_such_key" in bad.output  # the override reached the recipe and was checked
    code_only = CliRunner().invoke(app, [*base, "eval.samples=1"])  # no run here is a code run: still an error
    assert code_only.exit_code != 0 and "belongs to task 'code'" in code_only.output
    good = CliRunner().invoke(app, [*base, "eval.metrics=[rouge]"])
    assert good.exit_code == 0, good.output
    data = json.loads((out / "report.json").read_text())
    assert [s["test_set"] for s in data["test_sets"]] == ["chat", "persona"]
    assert all(set(s["metrics"]) <= {"rouge1", "rouge2", "rougeL", "rougeLsum"} for s in data["test_sets"])
