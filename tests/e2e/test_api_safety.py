"""Safety at the edge: every kind of bad request gets the right 4xx with an OpenAI-shaped JSON error and the
server stays healthy; API keys; a bounded queue under 16 concurrent clients; disconnects free slots; SIGTERM
drains in-flight requests."""

from __future__ import annotations

import json
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from servers import run_server

pytestmark = pytest.mark.e2e

CHAT = "/v1/chat/completions"
OK_MESSAGES = [{"role": "user", "content": "VPN drops"}]


def chat_body(**changes) -> dict:
    return {"model": "support", "messages": OK_MESSAGES, "max_tokens": 4, **changes}


BAD_REQUESTS = [
    # (id, method, path, kwargs for httpx, expected status, expected error.param or None)
    (
        "bad-json",
        "POST",
        CHAT,
        {"content": b'{"model": "support", "messages": [', "headers": {"content-type": "application/json"}},
        400,
        None,
    ),
    ("not-an-object", "POST", CHAT, {"json": [1, 2, 3]}, 400, None),
    (
        "bad-utf8",
        "POST",
        CHAT,
        {"content": b'{"model": "support", "messages": [{"role": "user", "content": "\xff\xfe"}]}'},
        400,
        None,
    ),
    ("missing-model", "POST", CHAT, {"json": {"messages": OK_MESSAGES}}, 400, "model"),
    ("wrong-type-max-tokens", "POST", CHAT, {"json": chat_body(max_tokens="ten")}, 400, "max_tokens"),
    ("negative-max-tokens", "POST", CHAT, {"json": chat_body(max_tokens=-5)}, 400, "max_tokens"),
    ("huge-max-tokens", "POST", CHAT, {"json": chat_body(max_tokens=10**9)}, 400, "max_tokens"),
    ("empty-messages", "POST", CHAT, {"json": chat_body(messages=[])}, 400, "messages"),
    (
        "empty-content",
        "POST",
        CHAT,
        {"json": chat_body(messages=[{"role": "user", "content": "  "}])},
        400,
        "messages.0.content",
    ),
    (
        "unknown-role",
        "POST",
        CHAT,
        {"json": chat_body(messages=[{"role": "wizard", "content": "hi"}])},
        400,
        "messages.0.role",
    ),
    (
        "only-assistant-messages",
        "POST",
        CHAT,
        {"json": chat_body(messages=[{"role": "assistant", "content": "hi"}])},
        400,
        "messages",
    ),
    ("messages-not-a-list", "POST", CHAT, {"json": chat_body(messages="hello")}, 400, "messages"),
    ("unknown-model", "POST", CHAT, {"json": chat_body(model="gpt-9")}, 404, "model"),
    ("chat-on-classifier", "POST", CHAT, {"json": chat_body(model="reviews")}, 400, "model"),
    ("too-many-choices", "POST", CHAT, {"json": chat_body(n=1000)}, 400, "n"),
    ("too-many-stops", "POST", CHAT, {"json": chat_body(stop=["a", "b", "c", "d", "e", "f"])}, 400, "stop"),
    ("empty-stop", "POST", CHAT, {"json": chat_body(stop=[""])}, 400, "stop"),
    ("temperature-out-of-range", "POST", CHAT, {"json": chat_body(temperature=7)}, 400, "temperature"),
    (
        "prompt-over-context",
        "POST",
        CHAT,
        {"json": chat_body(messages=[{"role": "user", "content": "printer " * 3000}])},
        400,
        "messages",
    ),
    (
        "oversized-body",
        "POST",
        CHAT,
        {"json": chat_body(messages=[{"role": "user", "content": "x" * (2 << 20)}])},
        413,
        None,
    ),
    ("classify-unknown-model", "POST", "/v1/classify", {"json": {"model": "nope", "input": "hi"}}, 404, "model"),
    ("classify-wrong-input", "POST", "/v1/classify", {"json": {"model": "reviews", "input": 42}}, 400, "input"),
    ("completion-empty-prompt", "POST", "/v1/completions", {"json": {"model": "base", "prompt": ""}}, 400, "prompt"),
    (
        "adapter-path-traversal",
        "POST",
        "/admin/adapters",
        {"json": {"name": "evil", "path": "../outside"}},
        403,
        "path",
    ),
    ("adapter-absolute-path", "POST", "/admin/adapters", {"json": {"name": "evil", "path": "/etc"}}, 403, "path"),
    ("adapter-bad-name", "POST", "/admin/adapters", {"json": {"name": "../x", "path": "persona-copy"}}, 400, None),
    ("adapter-missing-dir", "POST", "/admin/adapters", {"json": {"name": "ghost", "path": "no-such-run"}}, 404, "path"),
    (
        "adapter-taken-name",
        "POST",
        "/admin/adapters",
        {"json": {"name": "support", "path": "persona-copy"}},
        409,
        "name",
    ),
    ("unload-base", "DELETE", "/admin/adapters/base", {}, 403, None),
    ("unload-unknown", "DELETE", "/admin/adapters/ghost", {}, 404, None),
    ("unknown-route", "GET", "/v1/engines", {}, 404, None),
    ("wrong-method", "GET", CHAT, {}, 405, None),
]


@pytest.mark.parametrize(
    ("kind", "method", "path", "kwargs", "status", "param"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS]
)
def test_bad_request_gets_a_clear_4xx_and_the_server_stays_healthy(server, kind, method, path, kwargs, status, param):
    with server.client() as http:
        r = http.request(method, path, **kwargs)
        assert r.status_code == status, f"{kind}: {r.status_code} {r.text[:300]}"
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["message"] and len(error["message"].splitlines()) == 1
        assert error["type"].endswith("_error")
        if param is not None:
            assert error["param"] == param, error
        assert http.get("/health").status_code == 200


@pytest.fixture(scope="module")
def guarded(tmp_path_factory, trained_run):
    """A server with an API key and one allowed CORS origin."""
    options = ["--api-key", "s3cret", "--cors-origin", "https://app.example"]
    with run_server([f"support={trained_run}"], *options, log_dir=tmp_path_factory.mktemp("guarded")) as srv:
        yield srv


def test_api_key_is_required_on_model_routes_but_not_on_health(guarded):
    with guarded.client() as http:
        assert http.get("/health").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            r = http.post(CHAT, json=chat_body(), headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
            assert http.get("/v1/models", headers=headers).status_code == 401
        ok = http.post(CHAT, json=chat_body(), headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200


def test_no_cors_headers_unless_an_origin_is_allowed(server, guarded):
    preflight = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    with server.client() as http:
        r = http.options(CHAT, headers=preflight)
        assert "access-control-allow-origin" not in r.headers
    with guarded.client() as http:  # the browser's preflight carries no API key
        r = http.options(CHAT, headers={**preflight, "Origin": "https://app.example"})
        assert r.headers.get("access-control-allow-origin") == "https://app.example"
        r = http.options(CHAT, headers=preflight)
        assert r.headers.get("access-control-allow-origin") != "*"


def test_sixteen_clients_against_a_two_slot_queue_get_only_complete_200s_and_429s(two_plus_two):
    body = chat_body(max_tokens=24, temperature=0)
    srv = two_plus_two
    with srv.client() as http:
        expected = http.post(CHAT, json=body).json()["choices"][0]["message"]["content"]
        barrier = threading.Barrier(16)

        def call(_):
            with srv.client() as own:
                barrier.wait()
                return own.post(CHAT, json=body)

        with ThreadPoolExecutor(16) as pool:
            replies = list(pool.map(call, range(16)))
        statuses = [r.status_code for r in replies]
        assert set(statuses) <= {200, 429}, statuses
        assert statuses.count(200) >= 2 and statuses.count(429) >= 1, statuses
        for r in replies:
            if r.status_code == 200:
                choice = r.json()["choices"][0]
                assert choice["finish_reason"] in ("stop", "length")
                assert choice["message"]["content"] == expected  # complete, not cut or mixed with another row
            else:
                assert r.json()["error"]["type"] == "rate_limit_error"
        assert http.get("/health").json()["queue"]["running"] == 0


def test_a_client_that_disconnects_frees_its_slot(start_server):
    long = chat_body(max_tokens=900, temperature=1.0, stream=True)
    with start_server("--max-batch", "1", "--max-queue", "0") as srv, srv.client() as http:
        with http.stream("POST", CHAT, json=long) as r:
            assert r.status_code == 200
            next(r.iter_lines())  # the stream has started; now walk away
        for _ in range(100):
            reply = http.post(CHAT, json=chat_body())
            if reply.status_code == 200:
                break
            assert reply.status_code == 429
            threading.Event().wait(0.05)
        assert reply.status_code == 200


def test_sigterm_drains_in_flight_requests_then_exits(start_server):
    body = {"model": "base", "prompt": "The printer on floor 3", "max_tokens": 600, "temperature": 1.0, "seed": 1,
            "stream": True}  # fmt: skip
    with start_server() as srv, srv.client() as http:
        events = []
        with http.stream("POST", "/v1/completions", json=body) as r:
            for line in r.iter_lines():
                if not line:
                    continue
                events.append(line)
                if len(events) == 2:
                    srv.proc.send_signal(signal.SIGTERM)  # mid-answer
        assert events[-1] == "data: [DONE]"
        finals = [json.loads(e[6:])["choices"][0]["finish_reason"] for e in events[:-1]]
        assert finals[-1] in ("stop", "length")
        assert len(events) > 3
        assert srv.proc.wait(timeout=30) == 0
