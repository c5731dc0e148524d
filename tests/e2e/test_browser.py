"""The web UI at /ui driven in a real browser (Playwright with Debian's chromium): chat, compare, classify.

Screenshots go to ``$ADAPTERLAB_ARTIFACTS`` (default ``test-artifacts/``) so a failed CI run can be looked at.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(f"browser tests need {CHROMIUM} (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="browser tests need playwright (pip install -e .[dev])")
expect = sync_api.expect
TIMEOUT_MS = 60_000  # generous: a loaded CI machine runs the tiny models slowly

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]  # fmt: skip
TICKET = "Since this morning the VPN drops every hour. Room 104."
SYSTEM = "You are the IT support team."

# Records what the first assistant bubble shows each time the page changes it, and whether it was still streaming.
WATCH_BUBBLE = """() => {
  window.__updates = [];
  new MutationObserver((records) => {
    for (const bubble of new Set(records.map((r) => r.target))) {
      if (!bubble.matches || !bubble.matches(".msg.assistant")) continue;
      window.__updates.push({length: bubble.textContent.length, streaming: bubble.dataset.streaming === "true"});
    }
  }).observe(document.querySelector("#conversation"), {childList: true, subtree: true, characterData: true});
}"""


@dataclass
class UI:
    page: object
    console_errors: list[str] = field(default_factory=list)
    chat_requests: list[dict] = field(default_factory=list)

    def assert_no_console_errors(self) -> None:
        assert not self.console_errors, self.console_errors


@pytest.fixture(scope="module")
def browser():
    expect.set_options(timeout=TIMEOUT_MS)  # expect() has its own default (5 s), separate from the page's
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def artifacts() -> Path:
    path = Path(os.environ.get("ADAPTERLAB_ARTIFACTS", "test-artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def ui(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 820})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    state = UI(page)

    def on_console(message) -> None:
        where = (message.location or {}).get("url", "")
        if message.type == "error" and "favicon" not in message.text + where:
            state.console_errors.append(f"{message.text} ({where})")

    def on_request(request) -> None:
        if request.method == "POST" and request.url.endswith("/v1/chat/completions"):
            state.chat_requests.append(json.loads(request.post_data))

    page.on("console", on_console)
    page.on("pageerror", lambda exc: state.console_errors.append(f"uncaught: {exc}"))
    page.on("request", on_request)
    page.goto(server.url + "/ui")
    expect(page.locator("#model option[value='support']")).to_be_attached()
    yield state
    context.close()


def chat_text(server, model: str, messages: list[dict]) -> str:
    """The same request the page made, non-streamed through the API, for comparison."""
    with server.client() as client:
        reply = client.post("/v1/chat/completions", json={"model": model, "messages": messages, "temperature": 0})
    reply.raise_for_status()
    return reply.json()["choices"][0]["message"]["content"]


def test_chat_streams_and_keeps_the_conversation_across_adapters(ui, server, artifacts):
    page = ui.page
    page.select_option("#model", "support")
    page.fill("#system", SYSTEM)
    page.fill("#temperature", "0")
    page.evaluate(WATCH_BUBBLE)
    page.fill("#message", TICKET)
    page.click("#send")

    first = page.locator(".msg.assistant").nth(0)
    expect(first).to_have_attribute("data-done", "true")
    assert first.get_attribute("data-streaming") is None
    assert first.get_attribute("data-error") is None
    updates = page.evaluate("window.__updates")
    partial = {u["length"] for u in updates if u["streaming"] and u["length"]}
    assert len(partial) >= 2, f"the answer did not arrive in pieces: {updates}"
    answer = first.text_content()
    assert answer
    sent = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": TICKET}]
    assert answer == chat_text(server, "support", sent), "the streamed answer did not reassemble"
    expect(page.locator("#message")).to_have_value("")

    page.select_option("#model", "persona")
    page.fill("#message", "And the printer on floor 3 jams.")
    page.press("#message", "Enter")
    expect(page.locator(".msg.assistant[data-done='true']")).to_have_count(2)
    second = page.locator(".msg.assistant").nth(1)
    assert second.get_attribute("data-error") is None
    assert second.text_content()
    assert page.locator(".turn.assistant .who").all_text_contents() == ["support", "persona"]
    assert page.locator(".msg.user").all_text_contents() == [TICKET, "And the printer on floor 3 jams."]

    last = ui.chat_requests[-1]
    assert last["model"] == "persona" and last["stream"] is True and last["temperature"] == 0
    assert [m["role"] for m in last["messages"]] == ["system", "user", "assistant", "user"]
    assert last["messages"][2]["content"] == answer
    page.screenshot(path=artifacts / "ui-chat.png")

    page.click("#clear")
    expect(page.locator(".msg")).to_have_count(0)
    ui.assert_no_console_errors()


def test_api_errors_are_shown_inline(ui):
    page = ui.page
    page.fill("#max-tokens", "100000")
    page.fill("#message", TICKET)
    page.click("#send")
    expect(page.locator("#chat-error")).to_contain_text("max_tokens")
    expect(page.locator(".msg.assistant")).to_have_attribute("data-error", "true")
    expect(page.locator("#send")).to_be_enabled()
    # the failed turn is not part of the history: the next request carries one user message
    page.fill("#max-tokens", "")
    page.fill("#message", "Hello")
    page.click("#send")
    expect(page.locator(".msg.assistant").nth(1)).to_have_attribute("data-done", "true")
    expect(page.locator("#chat-error")).to_be_hidden()
    assert [m["content"] for m in ui.chat_requests[-1]["messages"]] == ["Hello"]
    # the 400 above is logged by the browser as a failed resource load; nothing else may be
    assert all("status of 400" in e for e in ui.console_errors), ui.console_errors


def test_stop_aborts_the_stream_and_keeps_the_partial_answer(ui):
    page = ui.page
    page.fill("#max-tokens", "800")  # a reply long enough to be stopped mid-way, however fast the machine
    page.fill("#message", TICKET)
    page.click("#send")
    bubble = page.locator(".msg.assistant")
    expect(bubble).to_have_attribute("data-streaming", "true")
    expect(bubble).not_to_have_text("")
    page.click("#stop")
    expect(bubble).to_have_attribute("data-stopped", "true")
    assert bubble.get_attribute("data-done") == "true"
    expect(page.locator("#send")).to_be_enabled()
    expect(page.locator("#stop")).to_be_disabled()
    partial = bubble.text_content()
    page.fill("#message", "Thanks")
    page.click("#send")
    expect(page.locator(".msg.assistant").nth(1)).to_have_attribute("data-done", "true")
    assert [m["content"] for m in ui.chat_requests[-1]["messages"]] == [TICKET, partial, "Thanks"]
    ui.assert_no_console_errors()


def test_a_blank_answer_is_not_replayed_to_the_api(ui):
    page = ui.page
    page.select_option("#model", "base")
    page.fill("#message", TICKET)
    page.click("#send")
    expect(page.locator(".msg.assistant")).to_have_attribute("data-done", "true")
    answer = page.locator(".msg.assistant").text_content()
    page.fill("#message", "Hello?")
    page.click("#send")
    expect(page.locator(".msg.assistant").nth(1)).to_have_attribute("data-done", "true")
    expect(page.locator("#chat-error")).to_be_hidden()
    # the API refuses blank messages: a blank answer (the tiny base model gives newlines) drops its turn
    history = [TICKET, answer, "Hello?"] if answer.strip() else ["Hello?"]
    assert [m["content"] for m in ui.chat_requests[-1]["messages"]] == history
    ui.assert_no_console_errors()


def test_compare_runs_one_prompt_against_the_base_and_two_adapters(ui, artifacts):
    page = ui.page
    page.click("#tab-compare")
    expect(page.locator("#view-compare")).to_be_visible()
    expect(page.locator("#view-chat")).to_be_hidden()
    # One base with two adapters: the base and both adapters side by side by default.
    expect(page.locator("#compare-left")).to_have_value("base")
    expect(page.locator("#compare-right")).to_have_value("support")
    expect(page.locator("#compare-third")).to_have_value("persona")
    page.fill("#temperature", "0")
    page.fill("#compare-prompt", TICKET)
    page.click("#compare-run")

    sides = ("left", "right", "third")
    for side in sides:
        expect(page.locator(f"#compare-{side}-out")).to_have_attribute("data-done", "true")
    outputs = [page.locator(f"#compare-{side}-out") for side in sides]
    assert all(out.get_attribute("data-error") is None and out.text_content() for out in outputs)
    assert outputs[0].text_content() != outputs[1].text_content()
    for side in sides:
        assert re.fullmatch(
            r"\d+ tokens · \d+\.\d\d s · (stop|length)( · whitespace only)?",
            page.text_content(f"#compare-{side}-stats"),
        )
    assert sorted(r["model"] for r in ui.chat_requests[-3:]) == ["base", "persona", "support"]
    boxes = [page.locator(f"#compare-{side}-out").bounding_box() for side in sides]
    assert boxes[0]["x"] < boxes[1]["x"] < boxes[2]["x"]  # side by side, not stacked
    page.screenshot(path=artifacts / "ui-compare.png")

    # "none" takes the third pane away; two requests then.
    page.select_option("#compare-third", "")
    expect(page.locator("#compare-third-pane")).to_be_hidden()
    before = len(ui.chat_requests)
    page.click("#compare-run")
    for side in ("left", "right"):
        expect(page.locator(f"#compare-{side}-out")).to_have_attribute("data-done", "true")
    expect(page.locator("#compare-run")).to_be_enabled()
    assert len(ui.chat_requests) == before + 2

    # Beside an adapter evaluated with a repetition penalty, the base decodes with it too (both models alike, as
    # in evaluation); the adapter gets its own from the server. A penalty typed in the settings goes to both.
    expect(page.locator("#compare-right option[value='persona']")).to_be_attached()
    page.select_option("#compare-right", "persona")
    for typed, expected in (("", (1.3, None)), ("1.1", (1.1, 1.1))):
        page.fill("#repetition-penalty", typed)
        before = len(ui.chat_requests)
        page.click("#compare-run")
        for side in ("left", "right"):
            expect(page.locator(f"#compare-{side}-out")).to_have_attribute("data-done", "true")
        expect(page.locator("#compare-run")).to_be_enabled()
        sent = {r["model"]: r for r in ui.chat_requests[before:]}
        assert (sent["base"].get("repetition_penalty"), sent["persona"].get("repetition_penalty")) == expected
    ui.assert_no_console_errors()


def test_classify_shows_a_table_of_labels(ui, server, artifacts):
    page = ui.page
    page.click("#tab-classify")
    expect(page.locator("#classify-none")).to_be_hidden()
    expect(page.locator("#settings")).to_be_hidden()
    page.select_option("#classify-model", "reviews")
    texts = ["phone battery died after a week, charger cable broken", "warm jacket, the dress fits well"]
    page.fill("#classify-input", "\n".join(texts) + "\n")
    page.click("#classify-run")

    rows = page.locator("#classify-results tbody tr")
    expect(rows).to_have_count(2)
    labels = rows.locator("td.label").all_text_contents()
    with server.client() as client:
        expected = client.post("/v1/classify", json={"model": "reviews", "input": texts}).json()
    assert labels == [item["label"] for item in expected["data"]]
    assert rows.locator("td.text").all_text_contents() == texts
    assert rows.nth(0).locator(".bar").count() >= 1
    page.screenshot(path=artifacts / "ui-classify.png")
    ui.assert_no_console_errors()


def test_api_key_is_asked_for_then_remembered(browser, start_server):
    with start_server("--api-key", "s3cret") as srv:
        context = browser.new_context()
        page = context.new_page()
        page.goto(srv.url + "/ui")
        expect(page.locator("#status")).to_contain_text("API key")
        expect(page.locator("#model option")).to_have_count(0)
        page.fill("#api-key", "s3cret")
        page.press("#api-key", "Enter")
        page.locator("#api-key").blur()
        expect(page.locator("#model option[value='support']")).to_be_attached()
        expect(page.locator("#status")).to_be_hidden()
        page.fill("#message", TICKET)
        page.click("#send")
        expect(page.locator(".msg.assistant")).to_have_attribute("data-done", "true")
        assert page.locator(".msg.assistant").get_attribute("data-error") is None
        page.reload()  # the key is kept in localStorage
        expect(page.locator("#api-key")).to_have_value("s3cret")
        expect(page.locator("#model option[value='support']")).to_be_attached()
        context.close()
