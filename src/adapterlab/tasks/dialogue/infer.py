"""``adapterlab predict`` for a character adapter: the character's line wherever they speak in a script, prompted
exactly as in training.

The script is read as prepare read it (the same columns, aliases, cast, stage directions, scene order and
``context_turns`` window, saved with the adapter in ``adapterlab.json``). Every row of the character gets a
``reply``: what the adapter says there, given the scene's earlier lines from the file. The character's line in the
file may be empty: a slot to fill in a draft scene. Its text, when there is one, stays in the scene for the lines
that follow, as in training. Other speakers' rows are the scenes' context; each row without a reply is counted with
its reason (``context``, ``no_context``: the character speaks first in the scene, ``unknown_speaker`` ...).

An adapter trained on a conversation column continues each row's conversation like a chat adapter, within the same
window of turns as in training.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from adapterlab.errors import ModelError
from adapterlab.generation import TransformersGenerator
from adapterlab.generative.infer import ChatPredictor, predict_decoding
from adapterlab.runs import AdapterInfo
from adapterlab.task import Dropped, Skipped
from adapterlab.tasks.dialogue.config import SCRIPT_KEYS, DialogueData
from adapterlab.tasks.dialogue.format import ScriptFormatter

ADAPTER = "adapter"
CONTEXT = "context"  # the reason given for another speaker's row: it is context, no reply is asked of it
# What the script predictor reads from the adapter's prompt recipe besides DialogueData.prompt_info's own keys.
SCRIPT_PROMPT_KEYS = (*SCRIPT_KEYS, "stage_directions")


def predictor(info: AdapterInfo, precision: str, **options: Any):
    prompt = info.task_info["prompt"]
    if prompt.get("conversation_column"):
        return ConversationPredictor(info, precision, **options)
    missing = [key for key in SCRIPT_PROMPT_KEYS if key not in prompt]
    if missing:
        raise ModelError(f"predict: this dialogue adapter was trained before adapterlab saved how it reads a script "
                         f"({', '.join(missing)} missing from adapterlab.json); train it again to predict, or talk "
                         "to it with adapterlab chat RUN")  # fmt: skip
    return ScriptPredictor(info, precision, **options)


def script_data(prompt: dict[str, Any]) -> DialogueData:
    """The recipe's reading of a script, from the prompt recipe saved with the adapter (validated when trained)."""
    keys = (*SCRIPT_PROMPT_KEYS, "character", "context_turns", "system_prompt")
    return DialogueData.model_construct(**{key: prompt[key] for key in keys})


class ScriptPrompter(ScriptFormatter):
    """The training formatter's reading of a script, giving each of the character's rows its prompt instead of an
    example (no tokenizer: the generator renders the prompt with the base's chat template)."""

    def __init__(self, data: DialogueData):
        super(ScriptFormatter, self).__init__(data)  # the reader's state only: no encoder
        self.scene: tuple[str, ...] | None = None
        self.window: list[tuple[str, str]] = []
        self.spellings: dict[str, Counter] = {}

    def prompt(self, row: dict[str, str | None]) -> list[dict[str, str]] | Skipped:
        read = self.read_line(row, line_required=False)
        if isinstance(read, Dropped):
            return Skipped(read.reason)
        speaker, text = read
        window = self.window[-self.data.context_turns :]
        if speaker != self.character:
            if not text:
                return Skipped("empty_after_stripping")
            self.window.append((speaker, text))
            return Skipped(CONTEXT)
        messages = self.messages(window, "")
        if text:  # the file's line stays in the scene for the lines after it, as in training
            self.window.append((speaker, text))
        if messages is None:
            return Skipped("no_context")
        return messages[:-1]  # the prompt of the example training would have made of this row


class ScriptPredictor:
    def __init__(self, info: AdapterInfo, precision: str, batch_size: int | None = None, max_new_tokens: int = 96,
                 **_options: Any):  # fmt: skip
        from adapterlab.models import load_with_adapter

        self.data = script_data(info.task_info["prompt"])
        self.columns = [c for c in (self.data.speaker_column, self.data.line_column) if c]
        self.columns += [c for c in (self.data.scene_column, self.data.episode_column, self.data.order_column) if c]
        self.output_columns = ["reply"]
        model, tokenizer = load_with_adapter(info, precision, adapter_name=ADAPTER)
        self.generator = TransformersGenerator(model, tokenizer, batch_size or 8)
        self.decoding = predict_decoding(info, max_new_tokens)

    def predict(self, rows: Sequence[dict[str, str | None]]) -> list[dict[str, str] | Skipped]:
        prompter = ScriptPrompter(self.data)
        numbers, ordered = self.data_order(rows)
        prompts: list[Any] = [None] * len(rows)
        for number, row in zip(numbers, ordered, strict=True):
            prompts[number] = prompter.prompt(row)
        usable = [i for i, p in enumerate(prompts) if not isinstance(p, Skipped)]
        replies = self.generator.generate([prompts[i] for i in usable], ADAPTER, self.decoding, label="reply")
        by_row = {i: {"reply": g.text} for i, g in zip(usable, replies, strict=True)}
        return [by_row.get(i, prompts[i]) for i in range(len(rows))]

    def data_order(self, rows: Sequence[dict[str, str | None]]) -> tuple[list[int], list[dict[str, str | None]]]:
        """The rows as prepare reads them: by scene and ``data.order_column`` when the recipe named one."""
        return ScriptPrompter(self.data).arrange(list(range(len(rows))), list(rows))

    def describe(self, rows, outputs) -> dict[str, Any]:
        context = sum(isinstance(o, Skipped) and o.reason == CONTEXT for o in outputs)
        note = (f"{context} rows are other speakers' lines, read as the scenes' context; "
                f"{self.data.character}'s rows get a reply")  # fmt: skip
        return {"columns": self.columns, "character": self.data.character, "notes": [note]}


class ConversationPredictor(ChatPredictor):
    """A conversation per row, continued as the character, within the training window of ``context_turns``."""

    def __init__(self, info: AdapterInfo, precision: str, max_new_tokens: int = 96, **options: Any):
        super().__init__(info, precision, max_new_tokens=max_new_tokens, **options)
        self.context_turns = info.task_info["prompt"].get("context_turns")

    def conversation(self, row: dict[str, str | None]) -> list[dict[str, str]] | Skipped:
        messages = super().conversation(row)
        if isinstance(messages, Skipped) or not self.context_turns:
            return messages
        head = messages[:1] if messages[0]["role"] == "system" else []
        window = messages[len(head) :][-self.context_turns :]
        while window and window[0]["role"] != "user":
            window = window[1:]
        return head + window
