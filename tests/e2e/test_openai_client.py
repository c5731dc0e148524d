"""The server driven by the official OpenAI Python SDK, as users call it from code."""

from __future__ import annotations

import pytest
from openai import OpenAI

pytestmark = pytest.mark.e2e

MESSAGES = [{"role": "user", "content": "Since this morning the VPN drops every hour. Room 104."}]


@pytest.fixture(scope="module")
def client(server) -> OpenAI:
    return OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_models_lists_base_adapters_and_classifier(client):
    models = {m.id: m for m in client.models.list().data}
    assert {"base", "support", "persona", "reviews"} <= set(models)
    assert models["support"].owned_by == "adapterlab"
    card = models["reviews"].model_dump()
    assert card["task"] == "classify" and card["parent"] is None and card["root"] != card_root(models["support"])
    assert client.models.retrieve("persona").id == "persona"


def card_root(model) -> str:
    return model.model_dump()["root"]


def test_a_blank_earlier_assistant_turn_is_accepted(client):
    history = [*MESSAGES, {"role": "assistant", "content": "\n\n"}, {"role": "user", "content": "Hello?"}]
    reply = client.chat.completions.create(model="support", messages=history, max_tokens=4, temperature=0)
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_adapters_and_base_answer_differently_from_one_server(client):
    answers = {}
    for name in ("base", "support", "persona"):
        reply = client.chat.completions.create(model=name, messages=MESSAGES, max_tokens=16, temperature=0)
        assert reply.choices[0].finish_reason in ("stop", "length")
        assert reply.usage.completion_tokens > 0
        assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
        answers[name] = reply.choices[0].message.content
    assert len(set(answers.values())) == 3, answers


def test_streamed_completion_reassembles_to_the_non_streamed_one(client):
    full = client.chat.completions.create(model="support", messages=MESSAGES, max_tokens=24, temperature=0)
    chunks = list(
        client.chat.completions.create(
            model="support", messages=MESSAGES, max_tokens=24, temperature=0, stream=True,
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1, "answer came in one piece"
    assert text == full.choices[0].message.content
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [full.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_n_choices_and_seeded_sampling(client):
    kwargs = dict(model="support", messages=MESSAGES, max_tokens=12, temperature=1.2, seed=11, n=2)
    first = client.chat.completions.create(**kwargs)
    second = client.chat.completions.create(**kwargs)
    assert [c.index for c in first.choices] == [0, 1]
    assert [c.message.content for c in first.choices] == [c.message.content for c in second.choices]


def test_stop_strings_and_max_tokens(client):
    probe = client.chat.completions.create(model="support", messages=MESSAGES, max_tokens=20, temperature=0)
    text = probe.choices[0].message.content
    assert len(text) >= 4
    cut = client.chat.completions.create(model="support", messages=MESSAGES, max_tokens=20, temperature=0,
                                         stop=[text[2:4]])  # fmt: skip
    assert cut.choices[0].message.content == text[: text.find(text[2:4])]
    assert cut.choices[0].finish_reason == "stop"
    short = client.chat.completions.create(model="support", messages=MESSAGES, max_tokens=3, temperature=0)
    assert short.usage.completion_tokens <= 3


def test_text_completions_endpoint(client):
    reply = client.completions.create(model="base", prompt="The printer on floor 3", max_tokens=8, temperature=0)
    assert reply.object == "text_completion"
    assert reply.choices[0].text
    streamed = client.completions.create(model="base", prompt="The printer on floor 3", max_tokens=8, temperature=0,
                                         stream=True)  # fmt: skip
    assert "".join(c.choices[0].text for c in streamed if c.choices) == reply.choices[0].text


def test_classify_endpoint_returns_labels_with_probabilities_and_counts_empty_texts(server):
    with server.client() as http:
        r = http.post("/v1/classify", json={"model": "reviews", "input": ["phone battery dies", "  <br> 😀 ", "novel"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["counts"] == {"inputs": 3, "classified": 2, "empty": 1}
    first = body["data"][0]
    assert first["label"] in first["probabilities"]
    assert abs(sum(first["probabilities"].values()) - 1) < 1e-3
    assert body["data"][1]["label"] is None and "empty" in body["data"][1]["error"]


def test_adapter_loaded_at_run_time_is_served_and_can_be_unloaded(server, client):
    with server.client() as http:
        r = http.post("/admin/adapters", json={"name": "persona2", "path": "persona-copy"})
        assert r.status_code == 201, r.text
        assert "persona2" in {m.id for m in client.models.list().data}
        a = client.chat.completions.create(model="persona2", messages=MESSAGES, max_tokens=12, temperature=0)
        b = client.chat.completions.create(model="persona", messages=MESSAGES, max_tokens=12, temperature=0)
        assert a.choices[0].message.content == b.choices[0].message.content  # same weights, same answer
        assert http.delete("/admin/adapters/persona2").status_code == 200
        assert "persona2" not in {m.id for m in client.models.list().data}
        assert http.get("/health").status_code == 200
