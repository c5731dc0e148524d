"""The openai backend's client against a mock transport: request bodies, retries, errors naming the endpoint."""

from __future__ import annotations

import json

import httpx
import pytest

from adapterlab.errors import RecipeError
from adapterlab.generation import Decoding
from adapterlab.remote import EndpointError, OpenAIGenerator

URL = "http://server.test/v1"
MESSAGES = [{"role": "user", "content": "hi"}]


def generator(handler, **kwargs) -> OpenAIGenerator:
    names = {"base": "base", "adapter": "my-run"}
    return OpenAIGenerator(URL, names, transport=httpx.MockTransport(handler), backoff=0.0, **kwargs)


def reply(body: dict, texts: list[str]) -> httpx.Response:
    key = "text" if "prompt" in body else "message"
    choices = [{"index": i, key: t if key == "text" else {"content": t}} for i, t in enumerate(texts)]
    return httpx.Response(200, json={"choices": choices, "usage": {"completion_tokens": 3 * len(texts)}})


def test_greedy_chat_request_maps_names_and_cuts_and_strips():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append((request.url.path, body, request.headers.get("authorization")))
        return reply(body, ["  Hello there. END more\n"])

    decoding = Decoding(max_new_tokens=7, stop_strings=["END"], seed=5)
    out = generator(handler, api_key="sk-1").generate([MESSAGES, MESSAGES], "adapter", decoding)
    assert [g.text for g in out] == ["Hello there.", "Hello there."]
    assert out[0].new_tokens == 3 and out[0].samples == ["Hello there."]
    path, body, auth = seen[0]
    assert path == "/v1/chat/completions" and auth == "Bearer sk-1"
    assert body == {"model": "my-run", "max_tokens": 7, "n": 1, "messages": MESSAGES, "temperature": 0.0,
                    "seed": 5, "stop": ["END"]}  # fmt: skip


def test_raw_prompts_use_completions_keep_indentation_and_sample():
    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        assert request.url.path == "/v1/completions" and body["prompt"] == "def f():\n"
        assert body["temperature"] == 0.9 and body["top_p"] == 0.8 and body["n"] == 2
        return reply(body, ["    return 1\n\n", "    return 2"])

    out = generator(handler).generate(["def f():\n"], "base", Decoding(do_sample=True, temperature=0.9, top_p=0.8), 2)
    assert out[0].samples == ["    return 1", "    return 2"]


def test_a_server_that_ignores_n_is_asked_again_with_the_seed_moved_on():
    seeds = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seeds.append(body["seed"])
        return reply(body, [f"reply {body['seed']}"])  # one choice whatever n says

    out = generator(handler).generate([MESSAGES], "base", Decoding(do_sample=True, seed=10), n=3)
    assert out[0].samples == ["reply 10", "reply 11", "reply 12"] and seeds == [10, 11, 12]


def test_transient_failures_are_retried():
    answers = iter([httpx.Response(503, json={"error": {"message": "busy"}}), httpx.ConnectError("refused")])

    def handler(request: httpx.Request) -> httpx.Response:
        nxt = next(answers, None)
        if isinstance(nxt, Exception):
            raise nxt
        return nxt or reply(json.loads(request.content), ["ok"])

    assert generator(handler, retries=2).generate([MESSAGES])[0].text == "ok"


def test_the_final_error_names_the_endpoint_and_the_last_failure():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, text="bad gateway")

    with pytest.raises(EndpointError, match=r"http://server.test/v1/chat/completions: no answer after 3 tries "
                                            r"\(HTTP 502: bad gateway\)"):  # fmt: skip
        generator(handler, retries=2).generate([MESSAGES])


def test_an_unknown_model_is_a_clear_error_before_and_during_generation():
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"data": [{"id": "base"}, {"id": "other"}]})
        return httpx.Response(404, json={"error": {"message": "model 'my-run' is not served here"}})

    with pytest.raises(EndpointError, match=r"serves base, other, not adapter -> 'my-run'; set eval.base_model_name"):
        generator(handler).check_models()
    with pytest.raises(EndpointError, match=r"HTTP 404 for model 'my-run': model 'my-run' is not served here; set"):
        generator(handler).generate([MESSAGES], "adapter")


def test_openai_backend_needs_an_endpoint(make_recipe):
    with pytest.raises(RecipeError, match="eval.endpoint"):
        make_recipe(["eval.backend=openai"])
    with pytest.raises(RecipeError, match="http"):
        make_recipe(["eval.backend=openai", "eval.endpoint=localhost:8000"])
    recipe = make_recipe(["eval.backend=openai", "eval.endpoint=http://h:1/v1", "eval.adapter_model_name=x"])
    assert recipe.eval.api_key_env == "OPENAI_API_KEY" and recipe.eval.base_model_name == "base"
