"""The recipe sections every generative task shares: training (padding-free packing, golden prompts) and the
base-vs-adapter evaluation (decoding and text metrics). A task's recipe uses them as they are or subclasses them."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from adapterlab import metrics
from adapterlab.config import DataConfig, EvalConfig, TrainConfig


class GenerativeData(DataConfig):
    system_prompt: str | None = Field(None, description="the system message of every example")

    def prompt_info(self) -> dict:
        """How prompts are built, stored with the adapter (adapterlab.json ``task_info.prompt``): chat, serve,
        predict and export render prompts from it as training did."""
        return {"system_prompt": self.system_prompt, "max_tokens": self.max_tokens}


class GenerativeTrain(TrainConfig):
    padding_free: bool | Literal["auto"] = Field(
        "auto", description="pack each batch into one row without padding; auto: when the model's attention allows"
    )
    golden_prompts: int = Field(3, ge=0, description="val prompts stored with the adapter with their outputs")


class GenerativeEval(EvalConfig):
    """Base vs adapter on the test split: the same prompts, decoding and metrics for both."""

    metrics: list[str] = Field(default_factory=lambda: metrics.defaults("text"))
    max_new_tokens: int = Field(256, gt=0, le=8192)
    do_sample: bool = False
    temperature: float = Field(0.7, gt=0, le=5)
    top_p: float = Field(0.95, gt=0, le=1)
    stop: list[str] = Field(default_factory=list, description="extra stop strings")
    repetition_penalty: float = Field(1.0, ge=1.0, le=2.0, description=">1 discourages loops (both models alike)")
    seed: int | None = Field(None, description="sampling seed; the top-level seed by default")
    bertscore_model: str = Field("default-encoder", description="an encoder for BERTScore: alias, dir or hub id")
    bertscore_layers: int | None = Field(None, gt=0, description="layer whose embeddings are compared; last if unset")
    language_column: str | None = Field(None, description="the input's language code; detected when unset")
    clarify_column: str | None = Field(None, description="true/false: the input lacks details")
    backend: Literal["transformers", "openai", "vllm"] = Field(
        "transformers",
        description="transformers: the base + adapter loaded here; openai: an OpenAI-compatible server at "
        "eval.endpoint; vllm: a vLLM server started for this evaluation with the run's adapter, stopped after",
    )
    endpoint: str | None = Field(None, description="openai backend: the server's base URL (http://host:port/v1)")
    api_key_env: str = Field("OPENAI_API_KEY", description="openai backend: the environment variable holding the key")
    base_model_name: str = Field("base", description="openai backend: the base model's name on the server")
    adapter_model_name: str | None = Field(
        None, description="openai backend: the adapter's name on the server; the run directory's name by default"
    )
    vllm_python: str | None = Field(
        None,
        description="vllm backend: the python of vLLM's environment (default: $ADAPTERLAB_VLLM_PYTHON, this "
        "environment if it has vllm, else .venv-vllm as `make vllm` installs it)",
    )
    vllm_args: list[str] = Field(
        default_factory=list, description="vllm backend: extra arguments for vLLM's server (e.g. --max-model-len 4096)"
    )
    examples_in_report: int = Field(3, ge=0, description="best and worst examples (by ROUGE-L delta) shown")

    @model_validator(mode="after")
    def _endpoint_for_openai(self) -> GenerativeEval:
        if self.backend == "openai" and not self.endpoint:
            raise ValueError(
                "eval.backend openai needs eval.endpoint (the server's base URL, e.g. http://host:8000/v1)"
            )
        if self.endpoint and not self.endpoint.startswith(("http://", "https://")):
            raise ValueError(f"eval.endpoint {self.endpoint!r}: give an http:// or https:// URL")
        return self

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, value: list[str]) -> list[str]:
        known = metrics.families("text")
        for name in value:
            if name not in known:
                raise ValueError(f"unknown metric '{name}'; choose from {', '.join(known)}")
        return value
