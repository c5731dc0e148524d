"""Schemathesis against the running server's own /openapi.json: bodies that fit the published schema and bodies
that break it, for every operation, must never get a 5xx; every error must be an OpenAI-shaped JSON error; and
the server must still answer normally afterwards."""

from __future__ import annotations

import zlib

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.probe]

EXAMPLES = 80  # per operation and generation mode: ~1,100 requests, ~30 s on two slow cores
REPLY_TOKENS = 8  # generated max_tokens are cut to this: the probe is about input handling, not decoding speed
SERVED = {"/v1/classify": ["reviews"], "/admin/adapters": None}
GENERATORS = ["support", "base", "reviews"]  # "reviews" on a generation route is a 400 (it is a classifier)


def steer(path: str, body: object) -> None:
    """Point three generated bodies in four at a served model (a random name only tests the 404), let one
    /admin/adapters body in three name the good adapter, and keep replies short."""
    if not isinstance(body, dict):
        return
    model = body.get("model")
    names = SERVED.get(path, GENERATORS)
    if names and isinstance(model, str):
        pick = zlib.crc32(model.encode("utf-8", "surrogatepass"))
        if pick % 4:
            body["model"] = names[pick % len(names)]
    if path == "/admin/adapters" and isinstance(body.get("path"), str) and len(body["path"]) % 3 == 0:
        body["path"] = "good"
    for key in ("max_tokens", "max_completion_tokens"):
        if isinstance(body.get(key), int) and not isinstance(body[key], bool) and body[key] > REPLY_TOKENS:
            body[key] = REPLY_TOKENS


def check_error_shape(response) -> None:
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}, error
        assert len(error["message"].splitlines()) == 1


def fuzz(operation, mode, url: str, tally) -> None:
    """EXAMPLES generated requests to one operation; derandomized, so a run is repeatable."""
    from hypothesis import HealthCheck, Phase, given, settings

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])  # fmt: skip
    def probe(case):
        steer(operation.path, case.body)
        response = case.call(base_url=url, timeout=120)
        tally.record(f"fuzz {mode.value} {operation.label}", response.status_code, response.text)
        assert response.status_code < 500, f"{operation.label}: {response.status_code} {response.text[:300]}"
        check_error_shape(response)

    probe()


def test_fuzzing_the_published_schema_finds_no_5xx(probe_server, tally):
    import schemathesis
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(f"{probe_server.url}/openapi.json")
    # Unloading is probed on purpose elsewhere; a random DELETE could unload what the other operations use.
    schema = schema.exclude(method="DELETE")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 7, [op.label for op in operations]
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                fuzz(operation, mode, probe_server.url, tally)
            except Unsatisfiable:  # an operation without inputs has no invalid variant
                assert mode is GenerationMode.NEGATIVE

    with probe_server.client() as http:
        assert http.get("/health").json()["status"] == "ok"
        body = {"model": "support", "messages": [{"role": "user", "content": "VPN drops"}], "max_tokens": 4}
        r = tally.send(http, "normal request after the fuzzing", "POST", "/v1/chat/completions", json=body)
        assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("stop", "length")
