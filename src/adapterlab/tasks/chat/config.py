"""The ``chat`` recipe: a prompt rendered from columns and the reply from another column, or whole conversations.

Two ways to give examples, one per recipe: ``data.prompt_template`` + ``data.target_column`` (a single-turn prompt
from columns), or ``data.conversation_column`` (a column holding a multi-turn conversation per row, in the OpenAI
``messages`` or the ShareGPT shape).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from adapterlab.config import RecipeBase
from adapterlab.generative.config import GenerativeData, GenerativeEval, GenerativeTrain
from adapterlab.rendering import template_columns


class ChatData(GenerativeData):
    system_prompt: str | None = Field(None, description="the system message (conversations: where they carry none)")
    prompt_template: str | None = Field(None, description="the user message, columns in braces")
    target_column: str | None = Field(None, description="the column with the reply to learn")
    conversation_column: str | None = Field(None, description="a column holding a whole conversation per row")
    conversation_format: Literal["auto", "messages", "sharegpt"] = Field(
        "auto", description="messages: role/content; sharegpt: from/value; auto: by the keys of each message"
    )
    train_on: Literal["last", "all"] = Field("all", description="conversations: loss on the last or every reply")

    def prompt_info(self) -> dict:
        keys = ("prompt_template", "target_column", "conversation_column", "conversation_format", "train_on")
        return {**super().prompt_info(), **{k: getattr(self, k) for k in keys}}

    @field_validator("prompt_template")
    @classmethod
    def _template_parses(cls, value: str | None) -> str | None:
        if value is not None:
            template_columns(value)
        return value


# Keys that only mean something with data.conversation_column.
CONVERSATION_KEYS = ("conversation_format", "train_on")


class ChatRecipe(RecipeBase):
    task: Literal["chat"] = "chat"
    data: ChatData
    train: GenerativeTrain = Field(default_factory=GenerativeTrain)
    eval: GenerativeEval = Field(default_factory=GenerativeEval)

    @model_validator(mode="after")
    def _one_way_to_give_examples(self) -> ChatRecipe:
        data = self.data
        by_columns = [k for k in ("prompt_template", "target_column") if getattr(data, k) is not None]
        if data.conversation_column is not None:
            if by_columns:
                raise ValueError(
                    f"data.conversation_column and data.{by_columns[0]} are two ways to give examples; keep either "
                    "data.conversation_column or data.prompt_template with data.target_column"
                )
            return self
        if not by_columns:
            raise ValueError(
                "task 'chat' needs data.prompt_template and data.target_column (a prompt and a reply from columns), "
                "or data.conversation_column (a conversation per row)"
            )
        missing = [k for k in ("prompt_template", "target_column") if k not in by_columns]
        if missing:
            raise ValueError(f"task 'chat' needs data.{missing[0]} (e.g. prompt_template: '{{question}}')")
        # By value, not by presence: a resolved recipe (recipe.resolved.yaml) spells out every default.
        stray = [k for k in CONVERSATION_KEYS if getattr(data, k) != ChatData.model_fields[k].default]
        if stray:
            raise ValueError(
                f"data.{stray[0]} applies to conversations only; set data.conversation_column or remove it"
            )
        return self

    def column_roles(self) -> dict[str, str]:
        # A conversation column holds lists: the formatter reads and judges each one (kind and shape) itself.
        text = {c: "text" for c in [*template_columns(self.data.prompt_template or ""), self.data.target_column] if c}
        return {**text, **super().column_roles()}

    def data_columns(self) -> dict[str, str]:
        data = self.data
        if data.conversation_column is not None:
            return {data.conversation_column: "data.conversation_column", **super().data_columns()}
        columns = {c: "data.prompt_template" for c in template_columns(data.prompt_template or "")}
        return {**columns, data.target_column or "": "data.target_column", **super().data_columns()}
