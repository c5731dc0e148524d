"""The vLLM tier (``make test-vllm``): real vLLM servers on the CPU, from the environment ``make vllm`` installs.

Two tiny adapters are trained in-process on a tiny Llama whose attention heads vLLM's CPU kernels take (head size
64); vLLM starts in ~40 s on 2 cores. Checked: ``eval.backend: vllm`` starts vLLM with the run's adapter and gives
the transformers backend's replies; ``serve --engine vllm`` serves two adapters and the base through vLLM with the
same answers as our own engine (prompts rendered by us, so training/serving parity holds), streams, seeds choices,
and loads and unloads an adapter at run time. (Refusing what vLLM would refuse is in the unit tier.)
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from adapterlab.cli import app

from samples import ticket_rows, write_csv
from servers import run_server
from tiny import build_model_dir

pytestmark = pytest.mark.vllm

METRICS = "eval.metrics=[rouge,bleu,chrf,length]"
VLLM_START = 600  # seconds allowed for vLLM to start (~40 s here; slower on a loaded 2-core machine)


@pytest.fixture(scope="module")
def vllm_python() -> str:
    from adapterlab.errors import ModelError
    from adapterlab.vllm import vllm_python

    try:
        return vllm_python()
    except ModelError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Two chat adapters (r=8 and r=16) on one tiny base with 64-wide attention heads."""
    from adapterlab.registry import recipe_from_dict
    from adapterlab.stages.train import train

    tmp = tmp_path_factory.mktemp("vllm")
    model = build_model_dir(tmp / "tiny-64", hidden=256)
    data = write_csv(tmp / "tickets.csv", ticket_rows())
    made = {}
    for name, rank, lr in (("support", 8, 0.02), ("helpdesk", 16, 0.01)):
        recipe = recipe_from_dict({
            "name": name, "seed": rank, "output_dir": str(tmp / "runs"), "model": {"base": str(model)},
            "data": {"path": str(data), "id_column": "ticket_id", "system_prompt": "You are the IT support team.",
                     "prompt_template": "{body}", "target_column": "answer"},
            "split": {"train": 0.7, "val": 0.1, "test": 0.2, "stratify_by": "needs_details"},
            "lora": {"r": rank, "alpha": 2 * rank},
            "train": {"max_steps": 12, "learning_rate": lr, "precision": "fp32", "save_every": 50},
            "eval": {"max_new_tokens": 8, "bootstrap": 100, "precision": "fp32"},
        })  # fmt: skip
        made[name] = train(recipe).run.root
    return made


def test_eval_backend_vllm_starts_vllm_and_gives_the_transformers_replies(runs, tmp_path, vllm_python):
    run = tmp_path / "support"
    shutil.copytree(runs["support"], run, ignore=shutil.ignore_patterns("eval"))
    local = CliRunner().invoke(app, ["eval", str(run), METRICS])
    assert local.exit_code == 0, local.output
    expected, expected_replies = _report(run), _replies(run)

    remote = CliRunner().invoke(app, ["eval", str(run), METRICS, "eval.backend=vllm"])
    assert remote.exit_code == 0, remote.output
    got = _report(run)
    assert got["backend"] == "vllm" and got["endpoint"].startswith("http://127.0.0.1:")
    assert (run / "eval" / "vllm.log").is_file()  # vLLM's own log, kept next to the report
    # Greedy fp32 in both engines: the same replies (vLLM's CPU kernels sum in another order, so a near-tie could
    # flip a token on a real model; on this one every reply matches), hence the same metrics.
    assert _replies(run) == expected_replies
    for name, entry in got["metrics"].items():
        assert entry["adapter"] == pytest.approx(expected["metrics"][name]["adapter"], abs=1e-9), name
    assert _no_vllm_left(), "the vLLM server started for the evaluation must be stopped after it"


def test_serve_engine_vllm_answers_like_our_engine_for_two_adapters_and_the_base(runs, tmp_path, vllm_python):
    specs = [str(runs["support"]), str(runs["helpdesk"])]
    root = tmp_path / "root"
    shutil.copytree(runs["support"] / "adapter", root / "late" / "adapter")
    asks = {name: {"model": name, "messages": [{"role": "user", "content": "The VPN drops every hour."}],
                   "max_tokens": 8, "temperature": 0} for name in ("base", "support", "helpdesk")}  # fmt: skip
    with run_server(specs, log_dir=tmp_path) as ours:
        expected = {name: _chat(ours.url, body) for name, body in asks.items()}

    options = ["--engine", "vllm", "--adapter-root", str(root), "--max-batch", "4"]
    with run_server(specs, *options, log_dir=tmp_path, timeout=VLLM_START) as server, server.client() as http:
        models = {m["id"]: m for m in http.get("/v1/models").json()["data"]}
        assert set(models) == {"base", "support", "helpdesk"}
        assert models["helpdesk"]["kind"] == "generate" and models["helpdesk"]["parent"] == "base"
        for name, body in asks.items():  # the adapter's system prompt and chat template applied by us: parity
            assert _chat(server.url, body) == expected[name], name

        streamed = http.post("/v1/chat/completions", json={**asks["support"], "stream": True,
                                                          "stream_options": {"include_usage": True}})  # fmt: skip
        events = [line[5:].strip() for line in streamed.text.splitlines() if line.startswith("data:")]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
        assert text == expected["support"] and chunks[-1]["usage"]["completion_tokens"] == 8

        sampled = http.post("/v1/chat/completions", json={**asks["helpdesk"], "n": 2, "temperature": 0.9,
                                                         "seed": 7}).json()  # fmt: skip
        again = http.post("/v1/chat/completions", json={**asks["helpdesk"], "n": 2, "temperature": 0.9,
                                                       "seed": 7}).json()  # fmt: skip
        assert len(sampled["choices"]) == 2 and sampled["choices"] == again["choices"]  # seeded: reproducible

        too_long = http.post("/v1/chat/completions", json={**asks["base"], "max_tokens": 5000})
        assert too_long.status_code == 400 and too_long.json()["error"]["code"] == "context_length_exceeded"

        loaded = http.post("/admin/adapters", json={"name": "late", "path": "late"})
        assert loaded.status_code == 201, loaded.text
        assert _chat(server.url, {**asks["support"], "model": "late"}) == expected["support"]
        assert http.delete("/admin/adapters/late").status_code == 200
        assert http.post("/v1/chat/completions", json={**asks["support"], "model": "late"}).status_code == 404
        assert http.get("/health").json()["status"] == "ok"
    assert _no_vllm_left(), "stopping adapterlab serve must stop its vLLM server"


def _chat(url: str, body: dict) -> str:
    response = httpx.post(url + "/v1/chat/completions", json=body, timeout=300)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


def _report(run: Path) -> dict:
    return json.loads((run / "eval" / "report.json").read_text())


def _replies(run: Path) -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in (run / "eval" / "predictions.jsonl").read_text().splitlines()]
    return [(r["base"]["text"], r["adapter"]["text"]) for r in rows]


def _no_vllm_left() -> bool:
    listed = subprocess.run(["pgrep", "-f", "vllm.entrypoints.openai.api_server"], capture_output=True, text=True)
    return not listed.stdout.strip()
