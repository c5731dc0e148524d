"""The settings of ``adapterlab serve``, declared once.

:class:`ServeSettings` is the single definition of every server option: its type, default, bounds and help
text. The ``adapterlab serve`` command builds its options from these fields (:func:`cli_options`) and the Python
function :func:`adapterlab.serve.serve` validates its keyword arguments with the model, so adding an option is
one field here.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from adapterlab.errors import AdapterlabError


class ServeSettings(BaseModel):
    """Options of ``adapterlab serve`` (the CLI flag of a field is its name with dashes: ``--max-batch``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field("127.0.0.1", description="Address to bind; 127.0.0.1 keeps the server local.")
    port: int = Field(8000, ge=0, le=65535, description="Port to listen on.")
    base: str | None = Field(
        None, description="Base model (default: the chat runs' base; 'default' = embedded SmolLM2)."
    )
    api_key: str | None = Field(
        None,
        description="Require 'Authorization: Bearer KEY' on every model route (or set ADAPTERLAB_API_KEY).",
    )
    adapter_root: str | None = Field(
        None, description="Allow POST /admin/adapters to load adapters from directories under this root only."
    )
    engine: Literal["transformers", "vllm"] = Field(
        "transformers",
        description="transformers: generate in this process; vllm: start a vLLM server for the chat "
        "adapters (checked against what vLLM refuses first) and generate there.",
    )
    vllm_python: str | None = Field(
        None,
        description="--engine vllm: the python of vLLM's environment (default: $ADAPTERLAB_VLLM_PYTHON, this "
        "environment if it has vllm, else .venv-vllm from `make vllm`).",
    )
    vllm_args: list[str] = Field(
        default_factory=list, description="--engine vllm: one extra argument for vLLM's server (repeatable)."
    )
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field("auto", description="auto | bf16 | fp16 | fp32.")
    compile: bool = Field(
        False,
        description="Classifiers: torch.compile each one and warm it up while loading (20-50 s each at start, "
        "then faster per request); stays eager if compiling fails.",
    )
    max_batch: int = Field(8, ge=1, le=256, description="Rows (choices of requests) decoded together in one batch.")
    max_queue: int = Field(64, ge=0, le=100000, description="Rows allowed to wait for a batch slot; beyond it: 429.")
    max_body_kb: int = Field(1024, ge=1, le=1 << 20, description="Largest request body in KiB; beyond it: 413.")
    max_n: int = Field(4, ge=1, le=64, description="Most choices (n) per request.")
    max_tokens: int = Field(256, ge=1, le=1 << 20, description="Reply budget when a request gives no max_tokens.")
    temperature: float = Field(
        0.0, ge=0.0, le=2.0, description="Temperature when a request gives none (0 = greedy, as in eval)."
    )
    cors_origin: list[str] = Field(
        default_factory=list, description="Allow browser calls from this origin (repeatable); none by default."
    )
    ui: bool = Field(True, description="Serve the web UI at /ui.")
    drain_seconds: int = Field(
        30,
        ge=0,
        le=3600,
        description="On SIGTERM, wait this long for in-flight requests; then they end with 503 shutting_down.",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field("info", description="Server log level.")

    @field_validator("cors_origin", "vllm_args", mode="before")
    @classmethod
    def _no_origins(cls, value: Any) -> Any:
        return [] if value is None else value  # what the CLI passes when the flag is not given

    @property
    def max_body_bytes(self) -> int:
        return self.max_body_kb * 1024

    @property
    def capacity(self) -> int:
        """Rows the server holds at once: running plus waiting. Every choice of an ``n > 1`` request is a row."""
        return self.max_batch + self.max_queue


def settings_from(options: dict[str, Any]) -> ServeSettings:
    """Validated settings, or an AdapterlabError naming the first bad option (as its CLI flag)."""
    try:
        return ServeSettings(**options)
    except ValidationError as exc:
        first = exc.errors()[0]
        flag = "--" + "-".join(str(p) for p in first["loc"][:1]).replace("_", "-")
        raise AdapterlabError(f"serve option {flag}: {first['msg']}") from None


# ---------------------------------------------------------------------------------------------- CLI


def cli_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Give a typer command one option per :class:`ServeSettings` field, after the command's own parameters.

    The command receives them as keyword arguments named like the fields. Help texts, defaults and numeric
    bounds come from the fields.
    """
    own = list(inspect.signature(func, eval_str=True).parameters.values())
    own = [p for p in own if p.kind is not inspect.Parameter.VAR_KEYWORD]
    options = [_cli_parameter(name, field) for name, field in ServeSettings.model_fields.items()]

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    wrapper.__signature__ = inspect.Signature([*own, *options])  # type: ignore[attr-defined]
    return wrapper


def _cli_parameter(name: str, field: Any) -> inspect.Parameter:
    import typer

    bounds = {type(m).__name__: m for m in field.metadata}
    kwargs: dict[str, Any] = {"help": field.description, "show_default": True}
    if "Ge" in bounds:
        kwargs["min"] = bounds["Ge"].ge
    if "Le" in bounds:
        kwargs["max"] = bounds["Le"].le
    annotation = field.annotation  # typer reads Literal as a choice, X | None as optional
    default = field.get_default(call_default_factory=True)
    if isinstance(default, list):
        default = None  # typer wants None for an empty repeatable option; the settings model fills in []
        annotation = list[str] | None
    decls = (f"--{name.replace('_', '-')}/--no-{name.replace('_', '-')}",) if annotation is bool else ()
    option = typer.Option(*decls, **kwargs)
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[annotation, option]
    )
