"""The API app in-process (Starlette's TestClient): loading state, load failures, error shapes."""

from __future__ import annotations

import threading
import time

import pytest
from fastapi.testclient import TestClient

from adapterlab.serve.api import Settings, create_app, error_param
from adapterlab.serve.registry import Registry, ServeError, parse_spec

CHAT = {"model": "support", "messages": [{"role": "user", "content": "VPN drops"}], "max_tokens": 3}


def wait_status(client, status: int, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = client.get("/health")
        if r.status_code == status:
            return r.json()
        time.sleep(0.05)
    raise AssertionError(f"/health never returned {status}")


def test_health_is_503_while_models_load_then_200(trained_run, monkeypatch):
    registry = Registry([f"support={trained_run}"], precision="fp32")
    gate = threading.Event()
    real_load = registry.load
    monkeypatch.setattr(registry, "load", lambda: (gate.wait(30), real_load()))
    with TestClient(create_app(registry, Settings(ui=False))) as client:
        r = client.get("/health")
        assert r.status_code == 503 and r.json() == {"status": "loading"}
        r = client.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 503 and r.json()["error"]["code"] == "loading"
        gate.set()
        body = wait_status(client, 200)
        assert body["models"] == ["base", "support"]
        assert client.post("/v1/chat/completions", json=CHAT).status_code == 200


def test_a_run_that_cannot_load_makes_health_say_why(tmp_path):
    registry = Registry([str(tmp_path)])  # not a run directory
    with TestClient(create_app(registry, Settings(ui=False))) as client:
        body = wait_status(client, 503)
        deadline = time.monotonic() + 10
        while body.get("status") == "loading" and time.monotonic() < deadline:
            body = client.get("/health").json()
        assert body["status"] == "error" and "no trained adapter" in body["error"]
        r = client.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 503 and r.json()["error"]["code"] == "load_failed"


def test_model_names_come_from_run_directories_or_name_equals_path(tmp_path):
    assert parse_spec("runs/support") == ("support", tmp_path.__class__("runs/support"))
    assert parse_spec("runs/support/adapter")[0] == "support"
    assert parse_spec("helpdesk=runs/support")[0] == "helpdesk"
    for bad in ("base=runs/x", "../x=runs/x", "a b=runs/x"):
        with pytest.raises(ServeError, match="cannot be a model name"):
            parse_spec(bad)
    with pytest.raises(ServeError, match="both be served as 'support'"):
        Registry(["runs/support", "other/support"])


def test_error_param_drops_pydantic_union_labels():
    assert error_param(("messages", 0, "role")) == "messages.0.role"
    assert error_param(("input", "str")) == "input"
    assert error_param(("input", "list[str]", 0)) == "input.0"
    assert error_param(()) is None
