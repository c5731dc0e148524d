"""Cleaning: each step removes what it should and leaves the rest alone."""

import pytest

from adapterlab.data.clean import clean_text
from adapterlab.tasks.classify.config import CleanConfig

ALL = CleanConfig().steps()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Отличный телефон 😍😍 https://ozon.ru/item/123?ref=a", "Отличный телефон"),
        ("It&#039;s great &amp; cheap&nbsp;!", "It's great & cheap !"),
        ("<br><b>5 stars</b> for this <i>kettle</i>", "5 stars for this kettle"),
        ("&lt;b&gt;not a tag&lt;/b&gt;", "<b>not a tag</b>"),  # entities decoded after tags are removed
        ("write to shop.help@mail.ru or www.shop.example/help", "write to or"),
        ("call +7 916 123-45-67 or 8 (800) 555-35-35 today", "call or today"),
        ("size 42, bought in 2023 for 1 500 руб", "size 42, bought in 2023 for 1 500 руб"),
        ("fits   well\n\n\n  thanks 👍🏽❤️", "fits well\nthanks"),
    ],
)
def test_all_steps(raw, expected):
    assert clean_text(raw, ALL) == expected


def test_steps_switch_individually():
    steps = CleanConfig(urls=False, emoji=False).steps()
    assert clean_text("see https://x.io 😍", steps) == "see https://x.io 😍"
    assert clean_text("A  B", CleanConfig(lowercase=True).steps()) == "a b"


def test_chat_task_cleans_nothing(make_recipe, tiny_tokenizer):
    from adapterlab.tasks.chat.format import ChatFormatter

    raw = "VPN error, see https://intranet/vpn  😡"
    formatter = ChatFormatter(make_recipe(), tiny_tokenizer)
    example = formatter.format({"subject": "VPN", "body": raw, "answer": "Please restart the VPN client."})
    assert raw in example.prompt[-1]["content"]  # a ticket keeps its URLs and emoji
