"""The hostile requests of issue 12 against a real server: each gets an OpenAI-shaped 4xx (or, where the value is
valid, a normal answer), one poisoned request never ends the requests that share its batch, HTTP the parser
refuses is answered in JSON, and run-time adapter loading holds against symlinks and broken adapters."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.probe]

CHAT = "/v1/chat/completions"
USER = '"messages": [{"role": "user", "content": "VPN drops"}]'


def chat(**changes) -> dict:
    return {"model": "support", "messages": [{"role": "user", "content": "VPN drops"}], "max_tokens": 4, **changes}


def raw(text: str) -> dict:
    return {"content": text.encode(), "headers": {"content-type": "application/json"}}


def raw_chat(extra: str) -> dict:
    """A chat body written by hand, for what json.dumps cannot write: ``extra`` goes after the messages."""
    return raw('{"model": "support", ' + USER + extra + "}")


DEEP = "[" * 1000 + "]" * 1000
BIG_INT = "1" + "0" * 5000
COMPLETION = {"model": "support", "prompt": "hi", "n": 2, "seed": 2**64 - 1}
UTF16 = {"content": json.dumps(chat()).encode("utf-16"), "headers": {"content-type": "application/json"}}

HOSTILE = [
    # (kind, path, httpx kwargs, expected status)
    ("temperature 1e-45", CHAT, {"json": chat(temperature=1e-45)}, 200),
    ("top_p 1e-50", CHAT, {"json": chat(temperature=1.0, top_p=1e-50)}, 200),
    ("temperature and top_p at the smallest float", CHAT, {"json": chat(temperature=5e-324, top_p=5e-324)}, 200),
    ("seed 2**64", CHAT, {"json": chat(seed=2**64)}, 400),
    ("seed -(2**63) - 1", CHAT, {"json": chat(seed=-(2**63) - 1)}, 400),
    ("n 2 with seed 2**64 - 1", "/v1/completions", {"json": {**COMPLETION, "max_tokens": 3}}, 200),
    ("max_tokens 3000 past the context", "/v1/completions", {"json": {**COMPLETION, "max_tokens": 3000}}, 400),
    ("JSON nested 1,000 deep in an ignored field", CHAT, raw_chat(f', "x": {DEEP}'), 400),
    ("JSON nested 100,000 deep", CHAT, raw("[" * 100_000 + "]" * 100_000), 400),
    ("integer of 5,000 digits", CHAT, raw_chat(f', "max_tokens": {BIG_INT}'), 400),
    ("integer of 5,000 digits in an ignored field", CHAT, raw_chat(f', "x": {BIG_INT}'), 400),
    (
        "lone surrogate in content",
        CHAT,
        raw('{"model": "support", "messages": [{"role": "user", "content": "\\ud800"}]}'),
        400,
    ),
    ("lone surrogate in model", CHAT, raw('{"model": "supp\\udc00rt", ' + USER + "}"), 400),
    ("lone surrogate in prompt", "/v1/completions", raw('{"model": "base", "prompt": "x\\ud83d y"}'), 400),
    ("lone surrogate in classify input", "/v1/classify", raw('{"model": "reviews", "input": "\\udfff"}'), 400),
    ("NaN temperature", CHAT, raw_chat(', "temperature": NaN'), 400),
    ("1e999 top_p", CHAT, raw_chat(', "top_p": 1e999'), 400),
    ("boolean n", CHAT, {"json": chat(n=True)}, 400),
    ("string temperature", CHAT, {"json": chat(temperature="0.5")}, 400),
    ("n past --max-n", CHAT, {"json": chat(n=5)}, 400),
    ("UTF-16 body", CHAT, UTF16, 400),
    ("adapter path of 2,000 characters", "/admin/adapters", {"json": {"name": "x", "path": "a/" * 1000}}, 400),
    ("adapter path component of 300 characters", "/admin/adapters", {"json": {"name": "x", "path": "x" * 300}}, 400),
    ("NUL in adapter path", "/admin/adapters", {"json": {"name": "x", "path": "good\u0000"}}, 400),
]


@pytest.mark.parametrize(("kind", "path", "kwargs", "status"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_request_gets_an_openai_4xx_or_a_normal_answer(probe_server, tally, kind, path, kwargs, status):
    with probe_server.client() as http:
        r = tally.send(http, f"hostile: {kind}", "POST", path, **kwargs)
        assert r.status_code == status, f"{kind}: {r.status_code} {r.text[:300]}"
        if status >= 400:
            error = r.json()["error"]
            assert set(error) == {"message", "type", "param", "code"} and len(error["message"].splitlines()) == 1
        else:
            assert all(c["finish_reason"] in ("stop", "length") for c in r.json()["choices"])
        queue = http.get("/health").json()["queue"]
        assert queue["waiting"] == 0  # nothing of a refused request is left queued


def test_405_names_the_allowed_methods_and_unknown_routes_are_json(probe_server, tally):
    with probe_server.client() as http:
        r = tally.send(http, "hostile: wrong method", "GET", CHAT)
        assert r.status_code == 405 and r.headers["allow"] == "POST" and r.json()["error"]["code"]
        r = tally.send(http, "hostile: unknown route", "GET", "/v1/engines")
        assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"


MALFORMED_HTTP = {
    "not HTTP at all": b"HELLO\r\n\r\n",
    "header line without a colon": b"GET /health HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
    "content-length not a number": b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n",
    "two different content-lengths": b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
    b"Content-Length: 2\r\n\r\n",
    "control byte in the target": b"GET /he\x01alth HTTP/1.1\r\nHost: x\r\n\r\n",
}


@pytest.mark.parametrize("kind", list(MALFORMED_HTTP))
def test_http_the_parser_refuses_is_answered_in_json(probe_server, tally, kind):
    host, port = probe_server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(MALFORMED_HTTP[kind])
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    tally.record(f"malformed HTTP: {kind}", status, body.decode(errors="replace"))
    assert status == 400 and b"content-type: application/json" in head.lower(), reply[:300]
    assert json.loads(body)["error"]["code"] == "invalid_http"


def read_stream(http: httpx.Client, path: str, body: dict, events: list, first: threading.Event | None = None):
    with http.stream("POST", path, json=body) as r:
        events.append(r.status_code)
        for line in r.iter_lines():
            if line:
                events.append(line)
                if first is not None:
                    first.set()


def test_a_poisoned_request_shares_a_batch_and_no_request_fails(probe_server, tally):
    """Issue 12.1: temperature 1e-45 or top_p 1e-50 used to crash the sampler and end every row of the batch."""
    long_body = {
        "model": "base",
        "prompt": "The printer on floor 3",
        "max_tokens": 120,
        "temperature": 0,
        "stream": True,
    }
    poisoned = [chat(temperature=1e-45, max_tokens=10), chat(temperature=1.0, top_p=1e-50, max_tokens=10, seed=3),
                chat(temperature=5e-324, top_p=5e-324, max_tokens=10, stream=True)]  # fmt: skip
    normal = [chat(max_tokens=10), chat(max_tokens=10, stream=True)]
    with probe_server.client() as http:
        long_events: list = []
        started = threading.Event()
        runner = threading.Thread(target=read_stream, args=(http, "/v1/completions", long_body, long_events, started))
        runner.start()
        assert started.wait(60)  # the long row is decoding: everything below joins its batch
        results: dict = {}

        def send(i: int, body: dict) -> None:
            with probe_server.client() as own:
                if body.get("stream"):
                    results[i] = []
                    read_stream(own, CHAT, body, results[i])
                else:
                    r = own.post(CHAT, json=body)
                    results[i] = [r.status_code, r.json()]
                results[i].append(time.monotonic())

        threads = [threading.Thread(target=send, args=(i, b)) for i, b in enumerate(poisoned + normal)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        runner.join(120)
        long_done = time.monotonic()
    for i, body in enumerate(poisoned + normal):
        status, *rest, finished_at = results[i]
        tally.record("poisoned batch: " + ("poisoned" if i < len(poisoned) else "normal"), status, str(rest)[:200])
        assert status == 200, rest
        assert finished_at < long_done
        if body.get("stream"):
            assert rest[-1] == "data: [DONE]"
            assert json.loads(rest[-2][6:])["choices"][0]["finish_reason"] in ("stop", "length")
        else:
            assert rest[0]["choices"][0]["finish_reason"] in ("stop", "length")
    tally.record("poisoned batch: the long stream", long_events[0])
    assert long_events[0] == 200 and long_events[-1] == "data: [DONE]"
    assert json.loads(long_events[-2][6:])["choices"][0]["finish_reason"] == "length"  # it outlived the others


# ------------------------------------------------------------------ run-time adapter loading


def served(http: httpx.Client) -> list[str]:
    return sorted(m["id"] for m in http.get("/v1/models").json()["data"])


def test_symlinks_out_of_the_adapter_root_are_403(probe_server, tally):
    from hostile import ESCAPES

    with probe_server.client() as http:
        before = served(http)
        for escape in ESCAPES:
            body = {"name": "evil", "path": escape.__name__}
            r = tally.send(http, f"symlink: {escape.__name__}", "POST", "/admin/adapters", json=body)
            assert r.status_code == 403, f"{escape.__name__}: {r.status_code} {r.text[:300]}"
            assert r.json()["error"]["param"] == "path"
        assert served(http) == before


def test_failed_loads_are_4xx_with_the_reason_and_leave_the_server_as_it_was(probe_server, tally):
    """The model's parameters are compared in tests/unit/test_serve_registry.py; here: names and answers."""
    from hostile import BREAKS

    with probe_server.client() as http:
        before = served(http)
        answer = http.post(CHAT, json=chat(max_tokens=8)).json()["choices"][0]["message"]["content"]
        for _ in range(3):  # repeated failures must not pile anything up either
            for breaks in BREAKS:
                body = {"name": "newcomer", "path": breaks.__name__}
                r = tally.send(http, f"failed load: {breaks.__name__}", "POST", "/admin/adapters", json=body)
                assert r.status_code == 400, f"{breaks.__name__}: {r.status_code} {r.text[:300]}"
                assert r.json()["error"]["code"] == "invalid_adapter" and "newcomer" not in served(http)
        assert served(http) == before
        assert http.post(CHAT, json=chat(max_tokens=8)).json()["choices"][0]["message"]["content"] == answer
        r = tally.send(http, "load after failed loads", "POST", "/admin/adapters",
                       json={"name": "newcomer", "path": "good"})  # fmt: skip
        assert r.status_code == 201, r.text
        assert http.delete("/admin/adapters/newcomer").status_code == 200


def test_unloading_an_adapter_mid_request_ends_its_requests_with_an_error(probe_server, tally):
    long = {"model": "doomed", "prompt": "The printer on floor 3", "max_tokens": 400, "temperature": 1.0, "seed": 1}
    with probe_server.client() as http:
        assert http.post("/admin/adapters", json={"name": "doomed", "path": "good"}).status_code == 201
        stream_events: list = []
        json_reply: dict = {}

        def non_streamed():
            with probe_server.client() as own:
                r = own.post("/v1/completions", json=long)
                json_reply.update(status=r.status_code, body=r.json())

        threads = [threading.Thread(target=non_streamed),
                   threading.Thread(target=read_stream, args=(http, "/v1/completions", {**long, "stream": True},
                                                              stream_events))]  # fmt: skip
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60
        while http.get("/health").json()["queue"]["running"] < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert tally.send(http, "unload mid-request", "DELETE", "/admin/adapters/doomed").status_code == 200
        for thread in threads:
            thread.join(120)
    tally.record("request cut by an unload (JSON)", json_reply["status"])
    assert json_reply["status"] == 409 and json_reply["body"]["error"]["code"] == "model_unloaded"
    tally.record("request cut by an unload (stream)", stream_events[0])
    assert stream_events[0] == 200 and stream_events[-1] == "data: [DONE]"
    assert json.loads(stream_events[-2][6:])["error"]["code"] == "model_unloaded"
