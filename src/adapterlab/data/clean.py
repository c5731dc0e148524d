"""Text cleaning for classification, one switchable step at a time, identical at training and prediction.

The steps run in a fixed order (tags before entities, so ``&lt;b&gt;`` stays text; URLs before e-mails and
phones, so their digits are not read as numbers). Each step replaces what it removes with a space and the
whitespace step tidies up afterwards. The step settings are saved with the adapter and reused by ``predict`` and
the server, through :func:`row_text`.
"""

from __future__ import annotations

import html
import re

# The switchable steps, in the order they run (lowercase, the last, is off unless asked for).
STEPS = ("urls", "html_tags", "html_entities", "emails", "phones", "emoji", "whitespace")

# https://..., http://..., www.example.com/path
URL = re.compile(r"(?:https?://|www\.)[^\s<>\"']+", re.IGNORECASE)
EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
# +7 916 123-45-67, 8 (800) 555-35-35, +1 415 555 0134, 89161234567: 7+ digits with separators, optional +.
PHONE = re.compile(r"(?<![\w+])\+?\d[\d\s().-]{5,}\d(?!\w)")
TAG = re.compile(r"<\s*/?\s*[a-zA-Z][^<>]*>")
# Pictographs, symbols, flags, variation selectors, zero-width joiner, skin tones.
EMOJI = re.compile(
    "[\U0001f000-\U0001faff\U00002600-\U000027bf\U0001f1e6-\U0001f1ff\U00002b00-\U00002bff"
    "\U0000fe0f\U0000200d\U0001f3fb-\U0001f3ff\U00002300-\U000023ff]+"
)
SPACES = re.compile(r"[ \t\u00a0]+")
BLANK_LINES = re.compile(r"\s*\n\s*")


def _phone(match: re.Match) -> str:
    # Years, prices and sizes ("2023", "1 500 руб") are short; a phone number has at least 7 digits.
    digits = sum(ch.isdigit() for ch in match.group(0))
    return " " if digits >= 7 else match.group(0)


def clean_text(text: str, steps: dict[str, bool]) -> str:
    """Apply the enabled steps (a classify recipe's ``data.clean``, saved with the adapter) to one text."""
    if steps.get("urls"):
        text = URL.sub(" ", text)
    if steps.get("emails"):
        text = EMAIL.sub(" ", text)
    if steps.get("html_tags"):
        text = TAG.sub(" ", text)
    if steps.get("html_entities"):
        text = html.unescape(text).replace("\u00a0", " ")
    if steps.get("phones"):
        text = PHONE.sub(_phone, text)
    if steps.get("emoji"):
        text = EMOJI.sub(" ", text)
    if steps.get("whitespace"):
        text = BLANK_LINES.sub("\n", SPACES.sub(" ", text)).strip()
    if steps.get("lowercase"):
        text = text.lower()
    return text


def join_text(row: dict[str, str | None], columns: list[str]) -> str | None:
    """The text of a row: its text columns joined by newlines; None when every one of them is missing."""
    values = [row.get(c) for c in columns]
    if all(v is None for v in values):
        return None
    return "\n".join(v.strip() for v in values if v and v.strip())


def row_text(row: dict[str, str | None], columns: list[str], steps: dict[str, bool]) -> str:
    """The cleaned text of a row as a model sees it ('' when nothing is left): the one entry point used by
    training, evaluation, prediction and serving."""
    return clean_text(join_text(row, columns) or "", steps)
