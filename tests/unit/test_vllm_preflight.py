"""The vLLM pre-flight check reads adapter_config.json and names every reason vLLM would refuse an adapter."""

import json
import sys

import pytest

from adapterlab.errors import ModelError
from adapterlab.vllm import check_adapters, max_lora_rank_for, refusals

PLAIN = {"peft_type": "LORA", "r": 8, "use_dora": False, "modules_to_save": None, "bias": "none"}


def test_a_plain_lora_adapter_passes():
    assert refusals(PLAIN, max_lora_rank=16) == []


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"use_dora": True}, "DoRA"),
        ({"r": 32}, "rank 32 above vLLM's --max-lora-rank 16"),
        ({"rank_pattern": {"q_proj": 64}}, "rank 64"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save ['lm_head']"),
        ({"bias": "lora_only"}, "bias 'lora_only'"),
        ({"peft_type": "IA3"}, "LoRA adapters only"),
    ],
)
def test_each_thing_vllm_refuses_is_named(change, reason):
    assert any(reason in r for r in refusals({**PLAIN, **change}, max_lora_rank=16))


def test_check_adapters_lists_every_refused_adapter(tmp_path, trained_run):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "adapter_config.json").write_text(json.dumps({**PLAIN, "use_dora": True, "r": 64}))
    check_adapters({"good": trained_run / "adapter"}, max_lora_rank=8)  # the tiny trained run: r=8, plain LoRA
    with pytest.raises(ModelError, match=r"vLLM would refuse bad \(.*\): DoRA.*; rank 64 above"):
        check_adapters({"good": trained_run / "adapter", "bad": bad}, max_lora_rank=16)
    with pytest.raises(ModelError, match="not a PEFT adapter"):
        check_adapters({"none": tmp_path}, max_lora_rank=16)


def test_max_lora_rank_covers_every_adapter():
    assert max_lora_rank_for([4, 8]) == 8 and max_lora_rank_for([9]) == 16 and max_lora_rank_for([]) == 8


# ------------------------------------------------------------------ the server we start, and the engine over it


def test_the_vllm_command_enables_lora_with_names_rank_and_our_tokenizer(trained_run, monkeypatch):
    from adapterlab.vllm import VLLMServer

    adapter = trained_run / "adapter"
    server = VLLMServer("/models/base", {"chat": adapter}, tokenizer=str(adapter), precision="fp32",
                        python="/env/bin/python", port=8123, extra_args=["--max-model-len", "512"])  # fmt: skip
    cmd = server.command()
    assert cmd[:3] == ["/env/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    flags = {flag: cmd[i + 1] for i, flag in enumerate(cmd[:-1]) if flag.startswith("--")}
    assert flags["--model"] == "/models/base" and flags["--served-model-name"] == "base"
    assert flags["--tokenizer"] == str(adapter) and flags["--dtype"] == "float32" and flags["--port"] == "8123"
    assert flags["--host"] == "127.0.0.1" and "--api-key" not in cmd and server.api_key not in " ".join(cmd)
    assert "--enable-lora" in cmd and cmd[cmd.index("--max-lora-rank") + 1] == "8"  # the r=8 adapter
    assert cmd[cmd.index("--lora-modules") + 1] == f"chat={adapter}"
    assert "--generation-config" in cmd and cmd[cmd.index("--generation-config") + 1] == "vllm"  # our defaults
    assert cmd[-2:] == ["--max-model-len", "512"]
    assert "--enforce-eager" in cmd  # no CUDA here: no torch.compile, which needs a C++ compiler
    env = server.environment()
    assert env["VLLM_API_KEY"] == server.api_key and len(server.api_key) >= 24  # a random key vLLM requires
    assert env["VLLM_CPU_KVCACHE_SPACE"] and env["VLLM_CPU_OMP_THREADS_BIND"].startswith("0-")
    assert "PYTHONPATH" not in env and "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in env
    runtime = VLLMServer("/m", {}, python="/p", runtime_lora=True)
    assert runtime.max_lora_rank == 64 and runtime.max_loras == 4  # room for adapters loaded later
    assert runtime.environment()["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"


def test_a_refused_adapter_stops_the_server_before_it_starts(tmp_path):
    from adapterlab.vllm import VLLMServer

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "adapter_config.json").write_text(json.dumps({**PLAIN, "use_dora": True}))
    with pytest.raises(ModelError, match="vLLM would refuse dora .*DoRA"):
        VLLMServer("/m", {"dora": bad}, python="/p")


def test_vllm_python_is_found_or_the_error_says_how_to_install_it(tmp_path, monkeypatch):
    import importlib.util

    from adapterlab import vllm

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(vllm.PYTHON_ENV, raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelError, match="make vllm"):
        vllm.vllm_python()
    with pytest.raises(ModelError, match="not found"):
        vllm.vllm_python(str(tmp_path / "missing"))
    local = tmp_path / ".venv-vllm" / "bin" / "python"
    local.parent.mkdir(parents=True)
    local.symlink_to(sys.executable)  # as in a real venv: the venv's own path, not the interpreter it links to
    assert vllm.vllm_python() == str(local)
    monkeypatch.setenv(vllm.PYTHON_ENV, str(local))
    assert vllm.vllm_python() == str(local)


def test_a_server_that_exits_while_starting_is_one_error_with_its_log(tmp_path):
    from adapterlab.vllm import VLLMServer

    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'RuntimeError: no space for the KV cache' >&2\nexit 3\n")
    fake.chmod(0o755)
    server = VLLMServer("/m", {}, python=str(fake), log_path=tmp_path / "vllm.log", startup_timeout=30)
    with pytest.raises(ModelError, match=r"exited with status 3 while starting: .*no space for the KV cache"):
        server.start()
    assert server.process is None


def test_each_choice_goes_to_vllm_as_token_ids_with_our_stops_and_a_seed_it_takes():
    from types import SimpleNamespace

    from adapterlab.serve.batching import BASE, Job, Sampling
    from adapterlab.serve.vllm_engine import SEED_RANGE, VLLMEngine

    engine = VLLMEngine.__new__(VLLMEngine)
    engine.server = SimpleNamespace(base_name="base")
    job = Job([5, 6, 7], Sampling(16, 0.7, 0.9, 2**64 - 1, ["\n\n"], 1.2, frequency_penalty=0.5), None, {2, 9},
              lambda e: None, adapter="tickets")  # fmt: skip
    body = engine.body_of(job)
    assert body["repetition_penalty"] == 1.2  # the adapter's evaluated penalty reaches vLLM
    assert body["frequency_penalty"] == 0.5 and "presence_penalty" not in body
    assert body["model"] == "tickets" and body["prompt"] == [5, 6, 7] and body["max_tokens"] == 16
    assert body["temperature"] == 0.7 and body["top_p"] == 0.9 and body["stop"] == ["\n\n"]
    assert body["stop_token_ids"] == [2, 9] and body["stream"] and 0 <= body["seed"] < SEED_RANGE
    greedy = Job([1], Sampling(4, 0.0), None, {2}, lambda e: None, adapter=BASE)
    body = engine.body_of(greedy)
    assert body["model"] == "base" and body["temperature"] == 0.0 and "seed" not in body and "stop" not in body
    assert not {"repetition_penalty", "presence_penalty", "frequency_penalty"} & set(body)


def test_vllm_refusals_keep_a_4xx_and_turn_anything_else_into_502():
    import httpx

    from adapterlab.serve.vllm_engine import upstream_failure

    refused = upstream_failure(httpx.Response(400, json={"error": {"message": "This model's maximum context..."}}))
    assert (refused.status, refused.code) == (400, "engine_refused") and "maximum context" in refused.message
    broken = upstream_failure(httpx.Response(500, text="Internal Server Error"))
    assert (broken.status, broken.code) == (502, "engine_failed")


def test_serve_with_the_vllm_engine_refuses_a_dora_adapter_at_load_with_the_reason(trained_run, tmp_path):
    import shutil

    from adapterlab.serve.registry import Registry

    dora = tmp_path / "dora"
    shutil.copytree(trained_run, dora)
    config_path = dora / "adapter" / "adapter_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "use_dora": True}))
    registry = Registry([str(trained_run), str(dora)], precision="fp32", engine="vllm")
    with pytest.raises(ModelError, match=r"vLLM would refuse dora .*DoRA \(lora.dora: true\)"):
        registry.load()
    ok = Registry([str(trained_run)], precision="fp32", engine="vllm")
    ok.load()
    assert ok.model is None and set(ok.chat) == {"base", trained_run.name}  # no weights loaded here
    assert ok.adapter_dirs == {trained_run.name: trained_run / "adapter"} and ok.vllm_max_rank == 8
    assert ok.chat[trained_run.name].system_prompt == "You are the IT support team."


def test_serve_engine_vllm_refuses_a_dora_adapter_in_one_line_before_starting(trained_run, tmp_path):
    import shutil

    from typer.testing import CliRunner

    from adapterlab.cli import app

    dora = tmp_path / "dora"
    shutil.copytree(trained_run, dora)
    config_path = dora / "adapter" / "adapter_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "use_dora": True}))
    result = CliRunner().invoke(app, ["serve", str(trained_run), str(dora), "--engine", "vllm"])
    assert result.exit_code != 0
    assert "vLLM would refuse dora" in result.output and "DoRA" in result.output


def _engine_with(handler, capacity: int = 4):
    """A VLLMEngine whose HTTP client talks to ``handler`` (an httpx MockTransport) instead of a vLLM server."""
    import threading
    from concurrent.futures import ThreadPoolExecutor
    from types import SimpleNamespace

    import httpx

    from adapterlab.serve.vllm_engine import VLLMEngine

    engine = VLLMEngine.__new__(VLLMEngine)
    engine.server = SimpleNamespace(base_name="base", stop=lambda: None)
    engine.max_batch, engine.max_queue = capacity, 0
    engine._cv, engine._active, engine._closed = threading.Condition(), set(), None
    engine._pool = ThreadPoolExecutor(capacity)
    engine.client = httpx.Client(base_url="http://vllm/v1", transport=httpx.MockTransport(handler))
    return engine


def _run_jobs(engine, *jobs):
    import queue

    heard = queue.Queue()
    for i, job in enumerate(jobs):
        job.on_event = lambda event, i=i: heard.put((i, event))
    engine.submit(*jobs)
    events = {i: [] for i in range(len(jobs))}
    while sum(1 for evs in events.values() if evs and evs[-1].finish_reason) < len(jobs):
        i, event = heard.get(timeout=10)
        events[i].append(event)
    return events


def test_the_vllm_engine_turns_vllm_streams_into_our_events_and_keeps_its_refusals():
    import httpx

    from adapterlab.serve.batching import Job, QueueFull, Sampling

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if body["max_tokens"] > 100:
            return httpx.Response(400, json={"error": {"message": "maximum context length exceeded"}})
        chunks = [{"choices": [{"index": 0, "text": t, "finish_reason": None}]} for t in ("Re", "start it")]
        chunks.append({"choices": [{"index": 0, "text": "", "finish_reason": "length"}]})
        chunks.append({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}})
        sse = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
        return httpx.Response(200, text=sse, headers={"content-type": "text/event-stream"})

    engine = _engine_with(handler)
    good = Job([1, 2, 3], Sampling(2), None, {2}, None, adapter="support")
    refused = Job([1, 2, 3], Sampling(500), None, {2}, None, adapter="support")
    events = _run_jobs(engine, good, refused)
    assert "".join(e.delta for e in events[0]) == "Restart it"
    last = events[0][-1]
    assert (last.finish_reason, last.prompt_tokens, last.completion_tokens) == ("length", 3, 2)
    failed = events[1][-1]
    assert failed.finish_reason == "error" and failed.failure.status == 400  # one row refused, the other fine
    assert "maximum context" in failed.failure.message and not engine.busy()
    with pytest.raises(QueueFull):
        engine.submit(*[Job([1], Sampling(2), None, {2}, lambda e: None) for _ in range(5)])  # capacity 4


def test_a_vllm_that_went_away_fails_the_row_with_502_not_the_server():
    import httpx

    from adapterlab.serve.batching import Job, Sampling

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    engine = _engine_with(handler)
    events = _run_jobs(engine, Job([1], Sampling(2), None, {2}, None))
    failure = events[0][-1].failure
    assert events[0][-1].finish_reason == "error" and (failure.status, failure.code) == (502, "engine_unavailable")
