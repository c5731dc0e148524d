"""Serve settings are declared once (ServeSettings): the CLI options and the Python function come from it."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from adapterlab.cli import app
from adapterlab.errors import AdapterlabError
from adapterlab.serve.settings import ServeSettings

FLAGS_BEFORE_THE_REFACTOR = [
    "--max-batch", "--max-queue", "--max-body-kb", "--max-n", "--max-tokens", "--temperature", "--cors-origin",
    "--ui", "--no-ui", "--drain-seconds", "--api-key", "--adapter-root", "--precision", "--host", "--port", "--base",
]  # fmt: skip


def serve_command():
    return typer.main.get_command(app).commands["serve"]


def test_every_settings_field_is_a_cli_option_with_its_help_and_bounds():
    options = {p.name: p for p in serve_command().params if p.param_type_name == "option"}
    assert set(options) == set(ServeSettings.model_fields)
    for name, field in ServeSettings.model_fields.items():
        option = options[name]
        assert f"--{name.replace('_', '-')}" in option.opts
        assert option.help == field.description
        bounds = {type(m).__name__: m for m in field.metadata}
        if "Ge" in bounds:
            assert option.min == bounds["Ge"].ge, name
        if "Le" in bounds:
            assert option.max == bounds["Le"].le, name
    flags = {flag for option in options.values() for flag in (*option.opts, *option.secondary_opts)}
    assert set(FLAGS_BEFORE_THE_REFACTOR) <= flags


@pytest.fixture
def captured(monkeypatch):
    calls = []
    monkeypatch.setattr("adapterlab.serve.serve", lambda runs, **options: calls.append((runs, options)))
    return calls


def test_the_cli_hands_its_options_to_serve_by_field_name(captured):
    args = ["serve", "runs/a", "--max-batch", "2", "--max-queue", "0", "--cors-origin", "https://a.example",
            "--cors-origin", "https://b.example", "--no-ui", "--precision", "fp32", "--drain-seconds", "3"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    runs, options = captured[0]
    settings = ServeSettings(**options)
    assert runs == ["runs/a"]
    assert (settings.max_batch, settings.max_queue, settings.ui, settings.drain_seconds) == (2, 0, False, 3)
    assert settings.cors_origin == ["https://a.example", "https://b.example"]
    assert settings.capacity == 2


def test_cli_defaults_are_the_settings_defaults(captured):
    assert CliRunner().invoke(app, ["serve", "runs/a"]).exit_code == 0
    assert ServeSettings(**captured[0][1]) == ServeSettings()


@pytest.mark.parametrize("args", [["--max-batch", "0"], ["--temperature", "2.5"], ["--precision", "fp8"]])
def test_values_outside_the_fields_bounds_are_refused_by_the_cli(captured, args):
    result = CliRunner().invoke(app, ["serve", "runs/a", *args])
    assert result.exit_code == 2 and not captured


@pytest.mark.parametrize(
    ("options", "message"),
    [({"max_batch": 0}, "--max-batch"), ({"max_queue": -1}, "--max-queue"), ({"no_such_option": 1}, "--no-such")],
)
def test_the_python_function_validates_its_options_with_the_same_model(options, message):
    from adapterlab.serve import serve

    with pytest.raises(AdapterlabError, match=message):
        serve(["runs/a"], **options)
