"""The ``summarize`` recipe: document column(s) -> a summary column.

The prompt is an instruction, the document's title when there is one, and the document (several columns are joined
with blank lines). Over ``data.max_tokens`` the document is cut, never the summary: from its end (the lead is
kept, as news is written), from its start, or from its middle (lead and conclusion kept), by ``data.truncate``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from adapterlab.config import RecipeBase, one_or_more_columns
from adapterlab.generative.config import GenerativeData, GenerativeEval, GenerativeTrain

METRICS = ("rouge", "bertscore", "bleu", "length", "compression", "novelty", "faithfulness", "perplexity")
INSTRUCTION = "Summarise the following article in one to three sentences."


class SummarizeData(GenerativeData):
    document_columns: list[str] = Field(..., description="the column(s) holding the document, joined in order")
    summary_column: str = Field(..., description="the column with the summary to learn")
    title_column: str | None = Field(None, description="a title shown above the document")
    instruction: str = Field(INSTRUCTION, description="what the user message asks, above the document")
    truncate: Literal["end", "start", "middle"] = Field(
        "end", description="which part of an over-long document is cut: end (keeps the lead), start, middle"
    )
    max_unsupported_figures: float | None = Field(
        None, ge=0, le=1,
        description="drop a row whose summary names a larger share of numbers and names than this that its "
        "(cut) document does not contain; counted as unsupported_summary. Off by default",
    )  # fmt: skip

    @field_validator("document_columns", mode="before")
    @classmethod
    def _one_or_more(cls, value):
        return one_or_more_columns(value, "document")

    def prompt_info(self) -> dict:
        keys = ("document_columns", "title_column", "instruction", "truncate")
        # user_prefix: chat and serve lead a bare document with the instruction, as every training prompt was.
        prefix = f"{self.instruction}\n\n" if self.instruction else None
        return {**super().prompt_info(), **{k: getattr(self, k) for k in keys}, "user_prefix": prefix}


class SummarizeEval(GenerativeEval):
    metrics: list[str] = Field(default_factory=lambda: list(METRICS))
    max_new_tokens: int = Field(128, gt=0, le=8192)


class SummarizeRecipe(RecipeBase):
    task: Literal["summarize"] = "summarize"
    data: SummarizeData
    train: GenerativeTrain = Field(default_factory=GenerativeTrain)
    eval: SummarizeEval = Field(default_factory=SummarizeEval)

    def column_roles(self) -> dict[str, str]:
        text = {c: "text" for c in [*self.data.document_columns, self.data.summary_column, self.data.title_column] if c}
        return {**text, **super().column_roles()}

    def data_columns(self) -> dict[str, str]:
        data = self.data
        columns = {c: "data.document_columns" for c in data.document_columns}
        if data.title_column:
            columns[data.title_column] = "data.title_column"
        return {**columns, data.summary_column: "data.summary_column", **super().data_columns()}
