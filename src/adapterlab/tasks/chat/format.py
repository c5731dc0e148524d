"""``chat`` rows -> conversational prompt-completion examples, and the prepared files the trainer reads.

A prompt is an optional system prompt plus a user message rendered from columns by ``data.prompt_template``; the
reply comes from ``data.target_column``. The base model's own chat template renders both; the loss mask covers
the completion only (the reply and the template's end-of-turn token, so the model learns to stop). Text that
contains the template's control strings is tokenised as text (:mod:`adapterlab.rendering`) and counted.

With ``data.conversation_column`` a row is a whole conversation (:mod:`.conversation` reads and checks it): the
template renders all of it, the loss covers the last assistant reply or every one (``data.train_on``), and the
example's prompt is everything before the last reply, its completion that reply, so evaluation, golden prompts,
predict and serve see the multi-turn context exactly as training did.
"""

from __future__ import annotations

from adapterlab.generative.conversation import SHAREGPT_SYSTEM_FIELD, for_training, read_conversation
from adapterlab.generative.examples import MIN_COMPLETION_TOKENS, ChatExample, ConversationEncoder
from adapterlab.rendering import encode_chat, encode_prompt, has_control_strings, render_messages, template_columns
from adapterlab.task import Dropped


class ChatFormatter:
    """Renders, tokenises and length-checks rows for the ``chat`` task."""

    def __init__(self, recipe, tokenizer):
        data = recipe.data
        self.tokenizer = tokenizer
        self.template = data.prompt_template or ""
        self.system_prompt = data.system_prompt
        self.target = data.target_column or ""
        self.max_tokens = data.max_tokens
        self.on_too_long = data.on_too_long
        self.required = [*template_columns(self.template), self.target]

    def check_fields(self, row: dict[str, str | None]) -> Dropped | None:
        for column in self.required:
            value = row.get(column)
            if value is None:
                return Dropped("missing_field", f"column '{column}' has no value")
            if not value.strip():
                return Dropped("empty_field", f"column '{column}' is empty")
        return None

    def format(self, row: dict[str, str | None]) -> ChatExample | Dropped:
        bad = self.check_fields(row)
        if bad is not None:
            return bad
        prompt = render_messages(row, self.template, self.system_prompt)
        completion = [{"role": "assistant", "content": (row[self.target] or "").strip()}]
        prompt_ids = encode_prompt(self.tokenizer, prompt)
        full_ids = encode_chat(self.tokenizer, prompt + completion)
        # The completion starts where the two renderings diverge; a template that renders the prompt alone
        # differently would otherwise train on a context the model never sees at inference.
        if full_ids[: len(prompt_ids)] != prompt_ids:
            return Dropped(
                "template_mismatch",
                "the chat template renders the prompt differently with and without the reply",
            )
        n_prompt = len(prompt_ids)
        truncated = False
        if len(full_ids) > self.max_tokens:
            if self.on_too_long == "drop":
                return Dropped(
                    "over_token_limit", f"{len(full_ids)} tokens > data.max_tokens={self.max_tokens}", fatal=False
                )
            if self.max_tokens - n_prompt < MIN_COMPLETION_TOKENS:
                return Dropped(
                    "over_token_limit",
                    f"the prompt alone has {n_prompt} tokens, too close to data.max_tokens={self.max_tokens}",
                    fatal=False,
                )
            full_ids = full_ids[: self.max_tokens]  # keep the whole prompt, cut the reply's tail
            truncated = True
        mask = [0] * n_prompt + [1] * (len(full_ids) - n_prompt)
        control = any(has_control_strings(self.tokenizer, m["content"]) for m in prompt + completion)
        return ChatExample(prompt, completion, full_ids, mask, truncated, control_text=control)


class ConversationFormatter:
    """A row holding a whole conversation -> an example learning its last reply or every reply."""

    def __init__(self, recipe, tokenizer):
        data = recipe.data
        self.column = data.conversation_column
        self.shape = data.conversation_format
        self.system_prompt = data.system_prompt
        self.encoder = ConversationEncoder(tokenizer, data.train_on, data.max_tokens, data.on_too_long)

    def format(self, row: dict[str, str | None]) -> ChatExample | Dropped:
        read = read_conversation(row.get(self.column), self.shape, row.get(SHAREGPT_SYSTEM_FIELD), self.system_prompt)
        conversation = for_training(read) if not isinstance(read, Dropped) else read
        if isinstance(conversation, Dropped):
            return conversation
        return self.encoder.example(conversation.messages, list(conversation.notes))
