"""The CLI: one-line errors with a non-zero exit, tracebacks only with --debug, every verb reachable."""

import json

import pytest
import yaml
from typer.testing import CliRunner

from adapterlab.cli import app
from adapterlab.errors import RecipeError

runner = CliRunner()


@pytest.fixture
def recipe_file(tmp_path, recipe_dict):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe_dict))
    return path


def test_validate_ok(recipe_file):
    result = runner.invoke(app, ["validate", str(recipe_file)])
    assert result.exit_code == 0, result.output
    assert "ok" in result.output and "task chat" in result.output


def test_messages_and_errors_with_long_paths_stay_one_line_when_piped(tmp_path, recipe_dict):
    deep = tmp_path / ("a-folder-with-a-long-name-" * 3) / ("and-another-one-" * 3)
    deep.mkdir(parents=True)
    recipe_dict["output_dir"] = str(deep / "runs")
    path = deep / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe_dict))
    assert len(str(path)) > 120  # longer than the piped console's width
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == [f"ok {path}: task chat, run directory {deep / 'runs' / 'tiny'}"]
    result = runner.invoke(app, ["validate", str(path), "lora.alpah=3"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and lines == [f"error: {path}: unknown key 'lora.alpah'; did you mean lora.alpha?"]


def test_unknown_key_is_one_line_without_traceback(recipe_file):
    result = runner.invoke(app, ["validate", str(recipe_file), "lora.alpah=3"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == [f"error: {recipe_file}: unknown key 'lora.alpah'; did you mean lora.alpha?"]
    assert "Traceback" not in result.output


def test_debug_shows_the_exception(recipe_file):
    result = runner.invoke(app, ["--debug", "validate", str(recipe_file), "lora.alpah=3"])
    assert result.exit_code != 0
    assert isinstance(result.exception, RecipeError)


def test_missing_column_names_file_and_column(recipe_file):
    result = runner.invoke(app, ["validate", str(recipe_file), "data.target_column=reply"])
    assert result.exit_code == 2
    assert "tickets.csv: column 'reply' (from data.target_column) not found" in result.output


def test_missing_data_file(recipe_file, tmp_path):
    result = runner.invoke(app, ["validate", str(recipe_file), f"data.path={tmp_path / 'gone.csv'}"])
    assert result.exit_code == 2
    assert "gone.csv: data file not found" in result.output


def test_an_error_with_brackets_is_printed_as_written(recipe_file, tmp_path):
    """Error text is not markup: a path like ``runs[/old]`` (or a library's ``[file.cc:537]``) is printed as is."""
    gone = tmp_path / "runs[/old]" / "[bold]gone.csv"
    result = runner.invoke(app, ["validate", str(recipe_file), f"data.path={gone}"])
    assert result.exit_code == 2
    assert f"{gone}: data file not found" in result.output.replace("\n", "")


def test_prepare_prints_and_writes_the_accounting(recipe_file, tmp_path):
    result = runner.invoke(app, ["prepare", str(recipe_file), "train.batch_size=2"])
    assert result.exit_code == 0, result.output
    assert "rows read" in result.output and "36" in result.output
    report = json.loads((tmp_path / "runs" / "tiny" / "data_report.json").read_text())
    assert report["input_rows"] == report["kept"] == 36


def test_models_lists_the_embedded_default(tmp_path, monkeypatch):
    from adapterlab.console import console

    monkeypatch.setenv("ADAPTERLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(console, "width", 300)  # wide enough that no cell folds, however long tmp_path is
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    assert "SmolLM2-135M-Instruct" in result.output and "all-MiniLM-L6-v2" in result.output
    assert str(tmp_path / "cache") in result.output


def test_chat_on_a_directory_without_adapter(tmp_path):
    result = runner.invoke(app, ["chat", str(tmp_path)])
    assert result.exit_code == 2
    assert "no trained adapter here" in result.output


def test_every_verb_has_help():
    for verb in ("validate", "prepare", "train", "run", "chat", "models"):
        result = runner.invoke(app, [verb, "--help"])
        assert result.exit_code == 0, verb


def test_a_benchmark_refuses_recipe_overrides_instead_of_dropping_them(tmp_path):
    result = runner.invoke(app, ["eval", str(tmp_path), "--benchmark", "humaneval", "eval.max_new_tokens=64"])
    assert result.exit_code == 2
    assert "eval --benchmark takes no recipe overrides (eval.max_new_tokens=64)" in result.output
