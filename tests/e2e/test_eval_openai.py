"""``eval.backend: openai`` against our own ``adapterlab serve`` in a subprocess: the same report as the
transformers backend under greedy fp32 decoding, with a repetition penalty."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from adapterlab.cli import app

pytestmark = pytest.mark.e2e

METRICS = "eval.metrics=[perplexity,rouge,bleu,chrf,language,clarify,length]"
# Sent as the request's `repetition_penalty`, which our server applies as transformers' generate does.
PENALTY = "eval.repetition_penalty=1.5"


def test_openai_backend_report_equals_the_transformers_one(trained_run, tmp_path, start_server):
    run = tmp_path / "chat"  # served under the run directory's name, the backend's default adapter name
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("eval"))
    plain = CliRunner().invoke(app, ["eval", str(run), METRICS])
    assert plain.exit_code == 0, plain.output
    plain_replies = _replies(run)
    local = CliRunner().invoke(app, ["eval", str(run), METRICS, PENALTY])
    assert local.exit_code == 0, local.output
    expected, expected_replies = _report(run), _replies(run)
    assert expected_replies != plain_replies, "the penalty changes nothing here, so the test could not see it lost"

    with start_server(runs=[str(run)]) as server:
        overrides = [METRICS, PENALTY, "eval.backend=openai", f"eval.endpoint={server.url}/v1"]
        remote = CliRunner().invoke(app, ["eval", str(run), *overrides])
    assert remote.exit_code == 0, remote.output
    got = _report(run)

    assert got["backend"] == "openai" and got["endpoint"] == f"{server.url}/v1"
    assert f"backend openai at {server.url}/v1" in (run / "eval" / "report.md").read_text()
    assert "returns no log-likelihood" in got["not_computed"]["perplexity"]
    assert "perplexity" in expected["metrics"] and "perplexity" not in got["metrics"]
    # Greedy fp32 on both sides gives the same replies token for token on this tiny model, so every metric, its
    # delta and its bootstrap interval are equal. (The server batches concurrent requests with its own padding;
    # on a real model a near-tie argmax can flip in the last float bits and change a reply: compare the
    # replies first when this fails.)
    assert _replies(run) == expected_replies
    assert set(got["metrics"]) == set(expected["metrics"]) - {"perplexity"}
    for name, entry in got["metrics"].items():
        for key in ("base", "adapter", "delta", "ci95"):
            assert entry[key] == pytest.approx(expected["metrics"][name][key], abs=1e-12), (name, key)


def _report(run) -> dict:
    return json.loads((run / "eval" / "report.json").read_text())


def _replies(run) -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in (run / "eval" / "predictions.jsonl").read_text().splitlines()]
    return [(r["base"]["text"], r["adapter"]["text"]) for r in rows]
