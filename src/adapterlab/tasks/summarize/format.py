"""``summarize`` rows -> examples: an instruction and a document -> its summary, the document cut to fit.

:func:`document_of` and :func:`prompt_messages` build the prompt; training, evaluation, ``predict`` and the served
model all use them, so the adapter sees one prompt shape everywhere. A document that does not fit
``data.max_tokens`` with its summary is cut by tokens (:func:`cut_to_fit`) from the side ``data.truncate`` names;
the summary is never cut. Each cut is counted (``truncated`` in the data report, and a note naming the side).
"""

from __future__ import annotations

from adapterlab.generative.examples import ChatExample
from adapterlab.metrics.text import unsupported_figures
from adapterlab.rendering import encode_chat, encode_prompt, has_control_strings
from adapterlab.task import Dropped

# Below this many document tokens a cut document says too little to be summarised: the row is dropped instead.
MIN_DOCUMENT_TOKENS = 32
GAP = "\n[…]\n"  # where a middle cut joins the lead and the conclusion


def document_of(row: dict[str, str | None], columns: list[str]) -> str:
    return "\n\n".join(text.strip() for c in columns if (text := row.get(c)) and text.strip())


def prompt_messages(document: str, title: str | None, prompt: dict) -> list[dict[str, str]]:
    """The prompt of one document; ``prompt`` is the recipe's ``prompt_info`` (stored with the adapter)."""
    parts = [prompt.get("instruction") or ""]
    if title and title.strip():
        parts.append(f"Title: {title.strip()}")
    parts.append(document)
    system = prompt.get("system_prompt")
    messages = [{"role": "system", "content": system}] if system else []
    return [*messages, {"role": "user", "content": "\n\n".join(p for p in parts if p)}]


def cut(tokenizer, document: str, keep: int, side: str) -> str:
    """The document cut to about ``keep`` tokens, removing its end, its start or its middle."""
    ids = tokenizer(document, add_special_tokens=False)["input_ids"]
    if len(ids) <= keep:
        return document
    if side == "start":
        return tokenizer.decode(ids[len(ids) - keep :]).lstrip()
    if side == "middle":
        head = (keep * 2) // 3  # the lead carries more than the conclusion
        return tokenizer.decode(ids[:head]).rstrip() + GAP + tokenizer.decode(ids[len(ids) - (keep - head) :]).lstrip()
    return tokenizer.decode(ids[:keep]).rstrip()


def cut_to_fit(tokenizer, document: str, length_of, limit: int, side: str) -> str | None:
    """The longest cut of ``document`` whose rendering (``length_of(text)`` tokens) fits ``limit``; None when fewer
    than MIN_DOCUMENT_TOKENS of it would remain."""
    total = len(tokenizer(document, add_special_tokens=False)["input_ids"])
    keep = total - (length_of(document) - limit)
    for _ in range(8):  # decoding and re-encoding can shift a few tokens at the seams
        if keep < MIN_DOCUMENT_TOKENS:
            return None
        text = cut(tokenizer, document, keep, side)
        over = length_of(text) - limit
        if over <= 0:
            return text
        keep -= over + 2
    return None


class SummaryFormatter:
    """Renders, tokenises and fits rows for the ``summarize`` task."""

    def __init__(self, recipe, tokenizer):
        data = recipe.data
        self.tokenizer = tokenizer
        self.prompt = data.prompt_info()
        self.columns = data.document_columns
        self.title = data.title_column
        self.target = data.summary_column
        self.max_tokens = data.max_tokens
        self.on_too_long = data.on_too_long
        self.side = data.truncate
        self.max_unsupported = data.max_unsupported_figures

    def format(self, row: dict[str, str | None]) -> ChatExample | Dropped:
        for column in [*self.columns, self.target]:
            if row.get(column) is None:
                return Dropped("missing_field", f"column '{column}' has no value")
        document = document_of(row, self.columns)
        if not document:
            return Dropped("empty_field", f"the document ({', '.join(self.columns)}) is empty")
        summary = (row[self.target] or "").strip()
        if not summary:
            return Dropped("empty_field", f"column '{self.target}' is empty")
        title = row.get(self.title) if self.title else None
        completion = [{"role": "assistant", "content": summary}]

        def length_of(text: str) -> int:
            return len(encode_chat(self.tokenizer, prompt_messages(text, title, self.prompt) + completion))

        notes, truncated = [], False
        full = length_of(document)
        if full > self.max_tokens:
            if self.on_too_long == "drop":
                return Dropped("over_token_limit", f"{full} tokens > data.max_tokens={self.max_tokens}", fatal=False)
            shorter = cut_to_fit(self.tokenizer, document, length_of, self.max_tokens, self.side)
            if shorter is None:
                return Dropped("over_token_limit", f"{full} tokens > data.max_tokens={self.max_tokens}, and the "
                               "summary leaves too little room for the document", fatal=False)  # fmt: skip
            document, truncated = shorter, True
            notes.append(f"document cut ({self.side})")
        if self.max_unsupported is not None:
            share = unsupported_figures([summary], [document]).value
            if share > self.max_unsupported:
                why = f"{share:.0%} of its numbers and names are not in the document (over {self.max_unsupported})"
                return Dropped("unsupported_summary", why, fatal=False)
        prompt = prompt_messages(document, title, self.prompt)
        prompt_ids = encode_prompt(self.tokenizer, prompt)
        full_ids = encode_chat(self.tokenizer, prompt + completion)
        if full_ids[: len(prompt_ids)] != prompt_ids:
            return Dropped("template_mismatch", "the chat template renders the prompt differently with and without "
                           "the reply")  # fmt: skip
        mask = [0] * len(prompt_ids) + [1] * (len(full_ids) - len(prompt_ids))
        control = any(has_control_strings(self.tokenizer, m["content"]) for m in prompt + completion)
        example = ChatExample(prompt, completion, full_ids, mask, truncated, control_text=control, notes=notes)
        example.meta["fields"] = {"document": document}
        return example
