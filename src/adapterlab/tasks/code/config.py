"""The ``code`` recipe: an instruction (+ optional signature and context columns) -> a program, with optional tests.

The reply learned is the reference program in a ```python fence, so the adapter answers with one block the
evaluation can take out (:func:`adapterlab.metrics.code.extract_code`). A tests column holds assert statements or a
``check(candidate)`` function (then ``data.entry_point_column`` names the function it is called with): evaluation
runs the extracted program with them in the sandbox when ``eval.execute_code`` is on (off by default: running
generated code is the user's decision; the shipped code recipe turns it on).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from adapterlab import metrics
from adapterlab.config import RecipeBase
from adapterlab.generative.config import GenerativeData, GenerativeEval, GenerativeTrain

SYSTEM_PROMPT = "You are a careful Python programmer. Answer with the complete code in one ```python block."


class CodeData(GenerativeData):
    system_prompt: str | None = Field(SYSTEM_PROMPT, description="the system message of every example")
    instruction_column: str = Field("instruction", description="the column with the task in words")
    solution_column: str = Field("solution", description="the column with the reference program to learn")
    signature_column: str | None = Field(None, description="a function signature shown with the instruction")
    context_column: str | None = Field(None, description="code or notes shown with the instruction")
    tests_column: str | None = Field(None, description="assert statements, or a check(candidate) function")
    entry_point_column: str | None = Field(None, description="the function check(candidate) is called with")
    fence: bool = Field(True, description="learn the reply as a ```python block (False: the bare program)")

    def prompt_info(self) -> dict:
        keys = ("instruction_column", "signature_column", "context_column", "fence")
        return {**super().prompt_info(), **{k: getattr(self, k) for k in keys}}


class CodeEval(GenerativeEval):
    metrics: list[str] = Field(
        default_factory=lambda: ["execution", "pass_at_k", "syntax", "codebleu", "bleu", "perplexity"]
    )
    max_new_tokens: int = Field(384, gt=0, le=8192)
    temperature: float = Field(0.8, gt=0, le=5, description="sampling temperature (pass@k samples, do_sample)")
    execute_code: bool = Field(False, description="run the generated programs with their tests in the sandbox")
    samples: int = Field(1, ge=1, le=200, description="programs sampled per problem for pass@k (1: greedy only)")
    pass_k: list[int] = Field(default_factory=lambda: [1, 5, 10], description="the k of pass@k reported where n >= k")
    timeout: float | Literal["auto"] = Field(
        "auto", description="seconds per program; auto: calibrated on the reference programs on this machine"
    )
    memory_mb: int = Field(1024, ge=64, description="address-space limit of a program")

    @field_validator("pass_k")
    @classmethod
    def _known_k(cls, value: list[int]) -> list[int]:
        for k in value:
            if k not in metrics.PASS_K:
                raise ValueError(f"pass@{k} is not reported; choose k from {', '.join(map(str, metrics.PASS_K))}")
        return sorted(set(value))


class CodeRecipe(RecipeBase):
    task: Literal["code"] = "code"
    data: CodeData
    train: GenerativeTrain = Field(default_factory=GenerativeTrain)
    eval: CodeEval = Field(default_factory=CodeEval)

    def columns(self) -> list[str]:
        data = self.data
        return [c for c in (data.instruction_column, data.solution_column, data.signature_column,
                            data.context_column, data.tests_column, data.entry_point_column) if c]  # fmt: skip

    def column_roles(self) -> dict[str, str]:
        return {**{c: "text" for c in self.columns()}, **super().column_roles()}

    def data_columns(self) -> dict[str, str]:
        data = self.data
        keys = ("instruction_column", "solution_column", "signature_column", "context_column", "tests_column",
                "entry_point_column")  # fmt: skip
        named = {getattr(data, k): f"data.{k}" for k in keys if getattr(data, k)}
        return {**named, **super().data_columns()}
