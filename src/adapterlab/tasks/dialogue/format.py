"""Script lines -> examples of one character's replies, in the scene's context.

The formatter reads the script in order (by scene and ``data.order_column`` when given, else file order) and keeps
the current scene's lines. A line of the character with at least one other speaker's line before it in the window
becomes an example: the persona system prompt, then the window (up to ``data.context_turns`` earlier lines) as
turns -- other speakers' lines as user turns, consecutive ones merged into one turn with each line prefixed by its
speaker's name, the character's own earlier lines as assistant turns -- then the line itself as the reply. Other
speakers' lines are context (counted as such). Every line ends up counted: ``no_context`` (the character speaks
first in the scene: nothing to answer), ``empty_after_stripping`` (only a stage direction), ``unknown_speaker``
(a name outside ``data.cast`` and ``data.aliases``), ``missing_field`` / ``empty_field``, ``over_token_limit``.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from typing import Any

from adapterlab.generative.examples import ChatExample, ConversationEncoder
from adapterlab.task import Context, Dropped
from adapterlab.tasks.dialogue.config import DialogueData

CHARACTER = "assistant"


class ScriptReader:
    """How a script's rows are read, the same at prepare and at evaluation: order, scene, speaker, stage directions."""

    def __init__(self, data: DialogueData):
        self.data = data
        self.character = data.canonical(data.character)
        self.cast = {data.canonical(name) for name in data.cast} | ({self.character} if data.cast else set())
        self.patterns = [re.compile(p) for p in data.stage_directions]

    def arrange(self, numbers: list[int], rows: list[dict[str, str | None]]):
        """With ``data.order_column``: the rows by scene (first appearance) and that order; else as they are."""
        column = self.data.order_column
        if not column:
            return numbers, rows
        first: dict[tuple, int] = {}
        keys = []
        for position, row in enumerate(rows):
            scene = first.setdefault(self.scene_key(row), position)
            keys.append((scene, _order(row.get(column)), position))
        ordered = sorted(range(len(rows)), key=keys.__getitem__)
        return [numbers[i] for i in ordered], [rows[i] for i in ordered]

    def scene_key(self, row: dict[str, str | None]) -> tuple[str, ...]:
        columns = [c for c in (self.data.episode_column, self.data.scene_column) if c]
        return tuple((row.get(c) or "").strip() for c in columns)

    def strip(self, text: str) -> str:
        for pattern in self.patterns:
            text = pattern.sub(" ", text)
        return " ".join(text.split())

    def lines(self, rows: list[dict[str, str | None]]) -> list[tuple[str, str, str]]:
        """(scene, canonical speaker, text) of every usable line, in order: what prepare keeps or uses as context."""
        found = []
        for row in rows:
            speaker = self.data.canonical(row.get(self.data.speaker_column) or "")
            text = self.strip(row.get(self.data.line_column) or "")
            if speaker and text and (not self.cast or speaker in self.cast):
                found.append((scene_name(self.scene_key(row)), speaker, text))
        return found


def scene_name(key: tuple[str, ...]) -> str:
    return " / ".join(key)


class ScriptFormatter(ScriptReader):
    def __init__(self, recipe, tokenizer):
        super().__init__(recipe.data)
        data = self.data
        self.encoder = ConversationEncoder(tokenizer, data.train_on, data.max_tokens, data.on_too_long)
        self.scene: tuple[str, ...] | None = None
        self.window: list[tuple[str, str]] = []  # (canonical speaker, text) of the scene so far
        self.spellings: dict[str, Counter] = {}
        self.lines_by_speaker: Counter = Counter()

    def format(self, row: dict[str, str | None]) -> ChatExample | Dropped | Context:
        read = self.read_line(row, line_required=True)
        if isinstance(read, Dropped):
            return read
        speaker, text = read
        if not text:
            return Dropped("empty_after_stripping", "the line is only a stage direction", fatal=False)
        self.lines_by_speaker[speaker] += 1
        window = self.window[-self.data.context_turns :]
        self.window.append((speaker, text))
        if speaker != self.character:
            return Context()
        messages = self.messages(window, text)
        if messages is None:
            return Dropped("no_context", "the character speaks first in the scene: nothing to answer", fatal=False)
        example = self.encoder.example(messages)
        if not isinstance(example, Dropped):
            example.meta["group"] = scene_name(self.scene)
        return example

    def read_line(self, row: dict[str, str | None], line_required: bool) -> tuple[str, str] | Dropped:
        """(canonical speaker, line without stage directions) of a row, the scene window reset at a new scene; the
        same reading at prepare and at predict (where the character's line may be empty: a slot to fill)."""
        data = self.data
        required = (data.speaker_column, data.line_column if line_required else None, data.scene_column,
                    data.episode_column)  # fmt: skip
        for column in required:
            if column and not (row.get(column) or "").strip():
                return Dropped("missing_field" if row.get(column) is None else "empty_field",
                               f"column '{column}' is empty")  # fmt: skip
        scene = self.scene_key(row)
        if scene != self.scene:
            self.scene, self.window = scene, []
        raw_speaker = row[data.speaker_column] or ""
        speaker = data.canonical(raw_speaker)
        if self.cast and speaker not in self.cast:
            return Dropped("unknown_speaker", f"speaker '{raw_speaker.strip()}' is not in data.cast or data.aliases",
                           fatal=False)  # fmt: skip
        text = self.strip(row.get(data.line_column) or "")
        if text:
            self.spellings.setdefault(speaker, Counter())[" ".join(raw_speaker.split())] += 1
        return speaker, text

    def messages(self, window: list[tuple[str, str]], reply: str) -> list[dict[str, str]] | None:
        turns: list[dict[str, str]] = []
        for speaker, text in window:
            if speaker == self.character:
                if turns:  # the character's lines before anyone spoke to them in the window: no turn to answer
                    turns.append({"role": CHARACTER, "content": text})
                continue
            line = f"{self.name(speaker)}: {text}" if self.data.speaker_names else text
            if turns and turns[-1]["role"] == "user":
                turns[-1]["content"] += "\n" + line
            else:
                turns.append({"role": "user", "content": line})
        if not turns:
            return None
        merged: list[dict[str, str]] = []
        for turn in turns:  # two lines of the character in a row are one reply
            if merged and merged[-1]["role"] == turn["role"] == CHARACTER:
                merged[-1]["content"] += " " + turn["content"]
            else:
                merged.append(turn)
        system = [{"role": "system", "content": self.data.system_prompt}] if self.data.system_prompt else []
        if merged[-1]["role"] == CHARACTER:  # the reply continues the character's own turn
            merged[-1] = {"role": CHARACTER, "content": merged[-1]["content"] + " " + reply}
            return system + merged if len(merged) > 1 else None
        return [*system, *merged, {"role": CHARACTER, "content": reply}]

    def name(self, speaker: str) -> str:
        spellings = self.spellings.get(speaker)
        return spellings.most_common(1)[0][0] if spellings else speaker.upper()

    def report(self) -> dict[str, Any]:
        """Lines per speaker and names that look like the character but are not mapped to it."""
        speakers = {self.name(s): n for s, n in self.lines_by_speaker.most_common()}
        return {"speakers": speakers, "character": self.name(self.character)}

    def warnings(self) -> list[str]:
        near = [s for s in self.lines_by_speaker if s != self.character and looks_like(s, self.character)]
        groups = [s for s in near if len(group_names(s)) > 1]
        out = [
            f"speaker '{self.name(s)}' ({self.lines_by_speaker[s]} lines) looks like the character "
            f"'{self.data.character}' but is treated as someone else; if it is them, add it to data.aliases"
            for s in near
            if s not in groups
        ]
        if groups:  # "MONICA, PHOEBE": lines said together stay context, one warning for all of them
            lines = sum(self.lines_by_speaker[s] for s in groups)
            shown = ", ".join(f"'{self.name(s)}'" for s in groups[:3]) + (", ..." if len(groups) > 3 else "")
            out.append(
                f"{len(groups)} speaker(s) name '{self.data.character}' with others ({shown}: {lines} lines said "
                f"together): they stay context; add one to data.aliases to learn from its lines too"
            )
        return out


def group_names(speaker: str) -> list[str]:
    """The names of a line said together (``MONICA, PHOEBE``, ``ROSS & RACHEL``, ``JOEY AND CHANDLER``)."""
    return [n for n in re.split(r"\s*(?:,|&|/|\+|\band\b)\s*", speaker, flags=re.IGNORECASE) if n]


def looks_like(name: str, character: str) -> bool:
    """A spelling variant or a longer form of the character's name (``MARGO PIKE`` for ``MARGO``)."""
    words, target = set(name.split()), set(character.split())
    return bool(words & target) or difflib.SequenceMatcher(None, name, character).ratio() >= 0.8


def _order(value: str | None) -> tuple[int, float | str]:
    text = (value or "").strip()
    try:
        return (0, float(text))
    except ValueError:
        return (1, text)


OTHERS = "others"  # the speaker of every user turn when the character's lines come from conversations


class ConversationSource:
    """``data.conversation_column``: the character's lines from conversations (OpenAI messages or ShareGPT), the
    assistant being the character and every user turn someone else; each conversation is its own split unit."""

    def __init__(self, data: DialogueData):
        self.data = data
        self.character = data.canonical(data.character)

    def read(self, row: dict[str, str | None]):
        from adapterlab.generative.conversation import SHAREGPT_SYSTEM_FIELD, read_conversation

        data = self.data
        cell, system = row.get(data.conversation_column), row.get(SHAREGPT_SYSTEM_FIELD)
        return read_conversation(cell, data.conversation_format, system, data.system_prompt)

    def lines_of(self, row: dict[str, str | None], group: str) -> list[tuple[str, str, str]]:
        conversation = self.read(row)
        if isinstance(conversation, Dropped):
            return []
        return [(group, self.character if m["role"] == CHARACTER else OTHERS, m["content"])
                for m in conversation.messages if m["role"] != "system" and m["content"].strip()]  # fmt: skip


class ConversationDialogueFormatter(ConversationSource):
    def __init__(self, recipe, tokenizer):
        super().__init__(recipe.data)
        data = self.data
        self.encoder = ConversationEncoder(tokenizer, data.train_on, data.max_tokens, data.on_too_long)
        self.lines_by_speaker: Counter = Counter()

    def format(self, row: dict[str, str | None]) -> ChatExample | Dropped:
        from adapterlab.generative.conversation import for_training

        read = self.read(row)
        conversation = for_training(read) if not isinstance(read, Dropped) else read
        if isinstance(conversation, Dropped):
            return conversation
        for message in conversation.messages:
            if message["role"] != "system":
                self.lines_by_speaker[self.character if message["role"] == CHARACTER else OTHERS] += 1
        messages = conversation.messages
        if self.data.context_turns:  # the same window as a script's: the last turns before the reply
            head = messages[:1] if messages[0]["role"] == "system" else []
            body = messages[len(head) :]
            window = body[-(self.data.context_turns + 1) :]
            while window and window[0]["role"] != "user":
                window = window[1:]
            messages = head + window
        return self.encoder.example(messages, list(conversation.notes))

    def report(self) -> dict[str, Any]:
        return {"speakers": {name.upper(): n for name, n in self.lines_by_speaker.most_common()},
                "character": self.data.character}  # fmt: skip

    def warnings(self) -> list[str]:
        return []
