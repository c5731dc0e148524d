"""``code`` rows -> examples: an instruction (with its signature and context) -> the reference program.

:func:`prompt_messages` builds the prompt for training, evaluation and ``predict`` alike; :func:`reply_of` the
reply learned (the program in a ```python fence). A row whose reference program does not parse is kept and
counted (``note: reference does not parse``): the data is the user's, the note says where to look. The tests and
the entry point travel in the split file, for the sandbox.
"""

from __future__ import annotations

from adapterlab.generative.examples import ChatExample
from adapterlab.metrics.code import syntax_valid
from adapterlab.rendering import encode_chat, encode_prompt, has_control_strings
from adapterlab.task import Dropped

REFERENCE_DOES_NOT_PARSE = "reference does not parse"


def prompt_messages(row: dict[str, str | None], prompt: dict) -> list[dict[str, str]]:
    """The prompt of one task; ``prompt`` is the recipe's ``prompt_info`` (stored with the adapter)."""
    parts = [(row.get(prompt["instruction_column"]) or "").strip()]
    signature = (row.get(prompt["signature_column"]) or "").strip() if prompt.get("signature_column") else ""
    context = (row.get(prompt["context_column"]) or "").strip() if prompt.get("context_column") else ""
    if signature:
        parts.append(f"Signature:\n```python\n{signature}\n```")
    if context:
        parts.append(f"Context:\n{context}")
    system = prompt.get("system_prompt")
    messages = [{"role": "system", "content": system}] if system else []
    return [*messages, {"role": "user", "content": "\n\n".join(parts)}]


def reply_of(solution: str, fence: bool) -> str:
    program = solution.strip("\n")
    return f"```python\n{program}\n```" if fence else program


class CodeFormatter:
    """Renders, tokenises and length-checks rows for the ``code`` task."""

    def __init__(self, recipe, tokenizer):
        data = recipe.data
        self.tokenizer = tokenizer
        self.prompt = data.prompt_info()
        self.instruction, self.solution = data.instruction_column, data.solution_column
        self.tests, self.entry_point = data.tests_column, data.entry_point_column
        self.max_tokens, self.on_too_long, self.fence = data.max_tokens, data.on_too_long, data.fence

    def format(self, row: dict[str, str | None]) -> ChatExample | Dropped:
        for column in (self.instruction, self.solution):
            value = row.get(column)
            if value is None:
                return Dropped("missing_field", f"column '{column}' has no value")
            if not value.strip():
                return Dropped("empty_field", f"column '{column}' is empty")
        prompt = prompt_messages(row, self.prompt)
        solution = (row[self.solution] or "").strip("\n")
        completion = [{"role": "assistant", "content": reply_of(solution, self.fence)}]
        prompt_ids = encode_prompt(self.tokenizer, prompt)
        full_ids = encode_chat(self.tokenizer, prompt + completion)
        if full_ids[: len(prompt_ids)] != prompt_ids:
            return Dropped("template_mismatch", "the chat template renders the prompt differently with and without "
                           "the reply")  # fmt: skip
        if len(full_ids) > self.max_tokens:
            # A program cut short teaches broken code: never truncated, always counted.
            detail = f"{len(full_ids)} tokens > data.max_tokens={self.max_tokens} (a program is never cut)"
            return Dropped("over_token_limit", detail, fatal=False)
        mask = [0] * len(prompt_ids) + [1] * (len(full_ids) - len(prompt_ids))
        control = any(has_control_strings(self.tokenizer, m["content"]) for m in prompt + completion)
        notes = [] if syntax_valid(solution) else [REFERENCE_DOES_NOT_PARSE]
        example = ChatExample(prompt, completion, full_ids, mask, False, control_text=control, notes=notes)
        example.meta["fields"] = {
            "solution": solution,
            "tests": (row.get(self.tests) or "") if self.tests else "",
            "entry_point": (row.get(self.entry_point) or "").strip() if self.entry_point else "",
        }
        return example
