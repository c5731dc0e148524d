"""The ``dialogue`` recipe: a script table (speaker, line, scene) -> one character's voice.

Each line of ``data.character`` becomes an example whose prompt is the scene so far (up to
``data.context_turns`` earlier lines): other speakers' lines as user turns (consecutive ones merged into one
turn, each line prefixed with its speaker's name), the character's own earlier lines as assistant turns, after the
persona ``data.system_prompt``. Stage directions are stripped and speaker names normalised (case, spaces,
``data.aliases``) first. The split keeps every scene whole.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from adapterlab.config import RecipeBase
from adapterlab.generative.config import GenerativeData, GenerativeEval, GenerativeTrain

STAGE_DIRECTIONS = [r"\([^()]*\)", r"\[[^\[\]]*\]"]  # (sighs), [door slams]


def speaker_key(name: str) -> str:
    """A speaker name as compared: case and runs of spaces do not matter."""
    return " ".join(name.split()).casefold()


# The keys that describe a script table; with data.conversation_column they stay at their defaults.
SCRIPT_KEYS = ("speaker_column", "line_column", "scene_column", "episode_column", "order_column", "aliases", "cast",
               "speaker_names")  # fmt: skip


class DialogueData(GenerativeData):
    character: str = Field(..., description="the speaker whose voice the adapter learns, as the script names them")
    speaker_column: str = Field("speaker", description="the column naming who speaks")
    line_column: str = Field("line", description="the column with what they say")
    scene_column: str = Field(
        "scene", description="the scene a line belongs to (with episode_column if numbered per episode)"
    )
    episode_column: str | None = Field(None, description="the episode, where scene numbers restart per episode")
    order_column: str | None = Field(None, description="the line's position in its scene (file order if unset)")
    aliases: dict[str, str] = Field(default_factory=dict, description="name variant -> the name it stands for")
    cast: list[str] = Field(default_factory=list, description="the known speakers; others' lines are dropped, counted")
    context_turns: int = Field(8, ge=1, le=64, description="earlier lines of the scene in each prompt")
    speaker_names: bool = Field(True, description="prefix other speakers' lines with their name ('DEV: ...')")
    stage_directions: list[str] = Field(
        default_factory=lambda: list(STAGE_DIRECTIONS), description="regular expressions removed from every line"
    )
    conversation_column: str | None = Field(
        None, description="instead of a script: a column holding a conversation per row, the assistant the character"
    )
    conversation_format: Literal["auto", "messages", "sharegpt"] = Field(
        "auto", description="messages: role/content; sharegpt: from/value; auto: by the keys of each message"
    )
    train_on: Literal["last", "all"] = Field(
        "last", description="loss on the character's line only, or on every line of theirs in the window too"
    )

    @field_validator("stage_directions")
    @classmethod
    def _patterns_compile(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"'{pattern}' is not a regular expression ({exc})") from exc
        return value

    @field_validator("character")
    @classmethod
    def _named(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("name the character whose voice to learn, as the script's speaker column spells it")
        return value

    def canonical(self, name: str) -> str:
        """The name a speaker cell stands for: aliases applied, compared without case or extra spaces."""
        aliases = {speaker_key(k): v for k, v in self.aliases.items()}
        key = speaker_key(name)
        return speaker_key(aliases.get(key, name)) if key in aliases else key

    def prompt_info(self) -> dict:
        keys = ("character", "context_turns", "train_on", "conversation_column", "conversation_format")
        # How predict reads a script as prepare did (tasks/dialogue/infer.py).
        keys += (*SCRIPT_KEYS, "stage_directions")
        return {**super().prompt_info(), **{k: getattr(self, k) for k in keys}}


class DialogueEval(GenerativeEval):
    metrics: list[str] = Field(default_factory=lambda: ["perplexity", "rouge", "chrf", "bertscore", "length"])
    max_new_tokens: int = Field(96, gt=0, le=8192, description="script lines are short")
    style_encoder: str = Field(
        "default-encoder", description="the encoder of the style judge and the speaker centroids: alias, dir or hub id"
    )
    judge_epochs: int = Field(4, ge=1, le=50, description="epochs of the style judge (trained once per run)")


class DialogueRecipe(RecipeBase):
    task: Literal["dialogue"] = "dialogue"
    data: DialogueData
    train: GenerativeTrain = Field(default_factory=GenerativeTrain)
    eval: DialogueEval = Field(default_factory=DialogueEval)

    @model_validator(mode="after")
    def _one_source(self) -> DialogueRecipe:
        """A script or a conversation column; script keys beside a conversation column are an error (by value: a
        resolved recipe spells out every default)."""
        data = self.data
        if data.conversation_column is None:
            if data.conversation_format != "auto":
                raise ValueError("data.conversation_format applies to data.conversation_column only; remove it")
            return self
        script = [
            k
            for k in SCRIPT_KEYS
            if getattr(data, k) != DialogueData.model_fields[k].get_default(call_default_factory=True)
        ]
        if script:
            raise ValueError(
                f"data.conversation_column and data.{script[0]} are two ways to give the character's lines; keep "
                "either the conversation column or the script's columns"
            )
        return self

    @model_validator(mode="after")
    def _scene_split(self) -> DialogueRecipe:
        if self.split.column or self.split.from_ids:
            return self
        if self.stratify_column:
            raise ValueError("split.stratify_by: a dialogue split keeps scenes whole and is not stratified; remove it")
        return self

    def data_columns(self) -> dict[str, str]:
        data = self.data
        if data.conversation_column is not None:
            return {data.conversation_column: "data.conversation_column", **super().data_columns()}
        columns = {data.speaker_column: "data.speaker_column", data.line_column: "data.line_column",
                   data.scene_column: "data.scene_column"}  # fmt: skip
        for key in ("episode_column", "order_column"):
            if getattr(data, key):
                columns[getattr(data, key)] = f"data.{key}"
        return {**columns, **super().data_columns()}

    def column_roles(self) -> dict[str, str]:
        data = self.data
        if data.conversation_column is not None:  # lists: the formatter judges each conversation itself
            return super().column_roles()
        ids = {c: "id" for c in (data.scene_column, data.episode_column, data.order_column) if c}
        return {data.line_column: "text", data.speaker_column: "text", **ids, **super().column_roles()}
