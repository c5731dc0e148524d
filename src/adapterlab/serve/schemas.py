"""Request bodies of the OpenAI-compatible API, validated with bounds so bad input is a 400, never a 500.

Unknown fields are ignored (SDKs send fields such as ``user`` or ``logprobs: null``); fields we accept but do
not honour are listed in ``docs/serving.md``. The bounds here are published in ``/openapi.json``; limits that
depend on the server's settings (``--max-n``, the context length) are checked per request in ``generation.py``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, field_validator

Number = StrictFloat  # strict float takes JSON integers too, but not booleans or numeric strings


MAX_STOP = 4
MAX_MESSAGES = 128
MAX_INPUTS = 256
MAX_N = 64  # the schema's bound; the server's own (--max-n, at most this) is checked per request
# torch.Generator takes any seed in [-2**63, 2**64 - 1]; one range covers clients that think int64 or uint64.
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1
TOKENS_MAX = 1 << 20


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: StrictStr


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: StrictStr | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: StrictBool = False


class SamplingFields(BaseModel):
    """The fields chat and text completions share."""

    model_config = ConfigDict(extra="ignore")
    model: StrictStr
    max_tokens: StrictInt | None = Field(default=None, ge=1, le=TOKENS_MAX)
    max_completion_tokens: StrictInt | None = Field(default=None, ge=1, le=TOKENS_MAX)
    temperature: Number | None = Field(default=None, ge=0, le=2, description="0 = greedy")
    top_p: Number | None = Field(default=None, gt=0, le=1)
    n: StrictInt = Field(default=1, ge=1, le=MAX_N, description="choices; at most the server's --max-n")
    stop: StrictStr | Annotated[list[StrictStr], Field(max_length=MAX_STOP)] | None = None
    repetition_penalty: Number | None = Field(
        default=None, gt=0, le=2, description="vLLM's extension: >1 discourages repeats; default: the model's own"
    )
    presence_penalty: Number | None = Field(default=None, ge=-2, le=2, description="taken once from a used token")
    frequency_penalty: Number | None = Field(default=None, ge=-2, le=2, description="taken per use of a token")
    seed: StrictInt | None = Field(default=None, ge=SEED_MIN, le=SEED_MAX)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None

    @field_validator("stop")
    @classmethod
    def _stops_not_empty(cls, v):
        stops = [v] if isinstance(v, str) else (v or [])
        if any(not s for s in stops):
            raise ValueError("stop strings must not be empty")
        return v

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def token_budget(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class ChatRequest(SamplingFields):
    messages: Annotated[list[Message], Field(min_length=1, max_length=MAX_MESSAGES)]


class CompletionRequest(SamplingFields):
    prompt: StrictStr | Annotated[list[StrictStr], Field(min_length=1, max_length=1)]

    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: StrictStr
    input: StrictStr | Annotated[list[StrictStr], Field(min_length=1, max_length=MAX_INPUTS)]
    top_k: StrictInt | None = Field(default=None, ge=1, le=1 << 16)

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class AdapterLoad(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: StrictStr = Field(max_length=64, description="the model name to serve it under")
    path: StrictStr = Field(max_length=1024, description="a directory relative to --adapter-root")
