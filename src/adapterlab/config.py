"""The typed recipe: YAML + dotted overrides, validated before any model loads.

A recipe has one section per pipeline stage (``model``, ``data``, ``split``, ``lora``, ``train``, ``eval``). This
module holds what every task shares: the sections and keys all tasks use, :class:`RecipeBase`, and the parsing
and error formatting. Each task subclasses the base with its own sections (``tasks/<name>/config.py``), and
:mod:`adapterlab.registry` validates a recipe against the class of its ``task:``, so a task validates only its
own keys: a classify key in a chat recipe is an unknown key. Unknown keys are rejected with a suggestion, wrong
types and impossible values become one-line :class:`RecipeError` messages that name the key. The resolved
recipe is written next to every artefact.
"""

from __future__ import annotations

import difflib
import math
import typing
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from adapterlab.errors import RecipeError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Section):
    base: str = Field(
        "default",
        description="'default' (embedded SmolLM2-135M-Instruct), 'default-encoder' (embedded all-MiniLM-L6-v2), "
        "a local dir or a hub id",
    )
    revision: str | None = None
    trust_remote_code: bool = False
    quantization: Literal["none", "4bit"] = "none"
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"


class DataConfig(Section):
    """Where the rows come from and how bad or long rows are handled; a task adds the columns it reads."""

    path: str
    format: Literal["auto", "csv", "tsv", "jsonl", "json", "parquet"] = "auto"
    encoding: str = "utf-8"
    id_column: str | None = None
    max_tokens: int = Field(1024, gt=16)
    on_too_long: Literal["truncate", "drop"] = "truncate"
    on_bad_rows: Literal["drop", "error"] = "drop"
    dedupe: bool = True


class SplitConfig(Section):
    train: float = Field(0.8, ge=0, le=1)
    val: float = Field(0.1, ge=0, le=1)
    test: float = Field(0.1, ge=0, le=1)
    seed: int | None = None
    column: str | None = Field(None, description="an existing column with train/val/test values")
    stratify_by: str | None = None
    group_by: str | None = None
    from_ids: str | None = Field(None, description="a splits.json written by an earlier prepare")

    @model_validator(mode="after")
    def _fractions_sum_to_one(self) -> SplitConfig:
        total = self.train + self.val + self.test
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ValueError(
                f"split fractions train+val+test sum to {total:g}; they must sum to 1 "
                f"(e.g. train: 0.8, val: 0.1, test: 0.1)"
            )
        if self.train <= 0:
            raise ValueError("split.train must be above 0: nothing would be left to train on")
        return self

    @property
    def fractions(self) -> dict[str, float]:
        return {"train": self.train, "val": self.val, "test": self.test}


class LoraConfig(Section):
    r: int = Field(16, gt=0)
    alpha: float = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: str | list[str] = "all-linear"
    dora: bool = False
    modules_to_save: list[str] = Field(default_factory=list)


class TrainConfig(Section):
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, gt=0, description="overrides epochs when set")
    batch_size: int = Field(8, gt=0)
    eval_batch_size: int = Field(8, gt=0)
    grad_accum: int = Field(1, gt=0)
    learning_rate: float = Field(2e-4, gt=0)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    optimizer: str = Field(
        "auto", description="a transformers optimizer name; auto: paged 8-bit AdamW for QLoRA on CUDA, else AdamW"
    )
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    gradient_checkpointing: bool = False
    group_by_length: bool | Literal["auto"] = Field(
        "auto", description="batches of similar length (less padding); auto: only when batches are padded"
    )
    keep_freed_memory: bool = Field(
        True, description="CPU: keep freed memory for the next step instead of page-faulting it in again"
    )
    ddp_timeout: int = Field(
        7200,
        ge=60,
        description="seconds a process of a distributed run waits for the others at a collective step (rank 0 "
        "prepares the data and chooses what ships alone while the others wait)",
    )
    eval_every: int | Literal["epoch"] = Field(25, description="steps between validation passes, or 'epoch'")
    save_every: int | Literal["epoch"] = Field(25, description="steps between checkpoints, or 'epoch'")
    keep_checkpoints: int = Field(2, gt=0)
    log_every: int = Field(5, gt=0)
    early_stopping_patience: int | None = Field(None, gt=0, description="evals without improvement")
    max_nan_logs: int = Field(3, gt=0, description="stop after this many non-finite losses in a row")
    report_to: Literal["none", "tensorboard", "mlflow"] = "none"

    @field_validator("eval_every", "save_every")
    @classmethod
    def _positive(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value <= 0:
            raise ValueError("must be above 0 (or 'epoch')")
        return value

    def saves_align_with_evals(self) -> bool:
        if "epoch" in (self.eval_every, self.save_every):
            return self.eval_every == self.save_every
        return self.save_every % self.eval_every == 0

    @model_validator(mode="after")
    def _early_stopping_needs_aligned_saves(self) -> TrainConfig:
        if self.early_stopping_patience and not self.saves_align_with_evals():
            raise ValueError(
                f"train.save_every ({self.save_every}) must be a multiple of train.eval_every "
                f"({self.eval_every}) when early_stopping_patience is set (the best checkpoint must be saved)"
            )
        return self


class EvalConfig(Section):
    """The held-out test split, scored the same way for every system compared."""

    batch_size: int = Field(16, gt=0)
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    max_examples: int | None = Field(None, gt=0, description="evaluate the first N test examples only")
    bootstrap: int = Field(1000, ge=100, description="paired bootstrap resamples for the 95% intervals")


class RecipeBase(Section):
    """What every recipe has; ``tasks/<name>/config.py`` narrows ``task`` and the sections to its own."""

    # The default base model of the task (a classifier defaults to the embedded encoder).
    default_base: ClassVar[str] = "default"

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    task: str
    output_dir: str = "runs"
    seed: int = 42
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig
    split: SplitConfig = Field(default_factory=SplitConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    export: list[Literal["merged", "gguf", "onnx"]] = Field(
        default_factory=list, description="formats `adapterlab run` exports after evaluating"
    )

    # Where the recipe file lives; relative data paths fall back to it. Not part of the saved recipe.
    source_dir: str | None = Field(None, exclude=True)

    @model_validator(mode="after")
    def _task_default_base(self) -> RecipeBase:
        if "base" not in self.model.model_fields_set and self.model.base != self.default_base:
            self.model.base = self.default_base
        return self

    def data_columns(self) -> dict[str, str]:
        """The columns of the data file this recipe reads, each with the recipe key that names it."""
        split = self.split
        named = {
            self.data.id_column: "data.id_column",
            split.column: "split.column",
            self.stratify_column: "split.stratify_by",
            split.group_by: "split.group_by",
        }
        return {column: key for column, key in named.items() if column}

    def column_roles(self) -> dict[str, str]:
        """How each used column is read (``text``, ``label`` or ``id``): the loader checks each cell's kind against
        it (a list in a text column, a bool among text labels are bad rows; see adapterlab.data.table)."""
        split = self.split
        roles = {c: "id" for c in (self.data.id_column, split.group_by) if c}
        return roles | {c: "label" for c in (split.column, self.stratify_column) if c}

    def prepare_sections(self) -> list[Any]:
        """Everything the prepared data depends on (its fingerprint): a task adds its own preparation sections."""
        return [self.data, self.split, self.model.base, self.split_seed, self.task, self.seed]

    @property
    def stratify_column(self) -> str | None:
        return self.split.stratify_by

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    @property
    def split_seed(self) -> int:
        return self.seed if self.split.seed is None else self.split.seed

    def resolve_path(self, value: str) -> Path:
        """A path from the recipe: relative to the working directory, else to the recipe file."""
        path = Path(value).expanduser()
        if path.is_absolute() or path.exists() or self.source_dir is None:
            return path
        beside_recipe = Path(self.source_dir) / path
        return beside_recipe if beside_recipe.exists() else path

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


# ----------------------------------------------------------------------------------------------- reading


def one_or_more_columns(value: Any, what: str) -> Any:
    """A column list key (``text_columns``, ``document_columns``): one name stands for a list of one; an empty
    list is refused (it would leave every row without text)."""
    value = [value] if isinstance(value, str) else value
    if isinstance(value, list) and not value:
        raise ValueError(f"name at least one {what} column")
    return value


def parse_overrides(overrides: list[str] | None) -> dict[str, Any]:
    """``["train.max_steps=20", "lora.r=8"]`` -> ``{"train.max_steps": 20, "lora.r": 8}`` (values as YAML)."""
    parsed: dict[str, Any] = {}
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise RecipeError(f"override '{item}' is not of the form key.path=value (e.g. train.max_steps=20)")
        try:
            parsed[key] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            parsed[key] = raw
    return parsed


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    for dotted, value in overrides.items():
        node = raw
        parts = dotted.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise RecipeError(f"override '{dotted}': '{part}' is a value, not a section")
            node = child
        node[parts[-1]] = value
    return raw


def read_recipe_file(path: str | Path) -> dict[str, Any]:
    """The raw mapping of a recipe file (``name`` defaults to the file's stem), or a one-line RecipeError."""
    path = Path(path)
    if path.is_dir():
        raise RecipeError(f"{path}: is a folder; give a recipe file (e.g. {path / 'chat.yaml'})")
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" line {where.line + 1}" if where is not None else ""
        raise RecipeError(f"{path}{line}: not valid YAML ({getattr(exc, 'problem', exc)})") from exc
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of sections (model:, data:, train: ...)")
    raw.setdefault("name", path.stem)
    return raw


def validate_as(
    cls: type[RecipeBase], raw: dict[str, Any], overrides: dict[str, Any], source: str, other_keys: dict[str, str]
) -> RecipeBase:
    """``raw`` (overrides applied) validated as ``cls``; ``other_keys`` maps keys of other tasks to their task."""
    try:
        recipe = cls.model_validate(raw)
    except ValidationError as exc:
        raise RecipeError(format_validation_error(exc, source, overrides, cls, other_keys)) from None
    if source != "recipe":
        recipe.source_dir = str(Path(source).parent)
    return recipe


def known_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        dotted = f"{prefix}{name}"
        keys.append(dotted)
        for ann in typing.get_args(field.annotation) or (field.annotation,):  # X | None -> X
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                keys.extend(known_keys(ann, dotted + "."))
    return keys


def suggest_key(dotted: str, model: type[BaseModel]) -> str | None:
    """The closest known key, e.g. ``lora.alpah`` -> ``lora.alpha``, ``lora.lr`` -> ``train.learning_rate``."""
    known = known_keys(model)
    close = difflib.get_close_matches(dotted, known, n=1, cutoff=0.6)
    if close:
        return close[0]
    leaf = dotted.rsplit(".", 1)[-1]
    by_leaf = {k.rsplit(".", 1)[-1]: k for k in known}
    close = difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.6)
    return by_leaf[close[0]] if close else None


def format_validation_error(
    exc: ValidationError,
    source: str,
    overrides: dict[str, Any],
    model: type[BaseModel],
    other_keys: dict[str, str] | None = None,
) -> str:
    messages: list[str] = []
    unions: dict[str, int] = {}  # key -> index in messages of a value that fits none of a union's types
    for err in exc.errors():
        loc = [str(p) for p in err["loc"] if not isinstance(p, int)]
        branch = bool(loc) and _union_branch(loc[-1])
        loc = [p for p in loc if not _union_branch(p)]  # pydantic names each type of a union it tried
        key = ".".join(loc)
        origin = f"override {key}={overrides[key]!r}" if key in overrides else key
        if err["type"] == "extra_forbidden":
            messages.append(unknown_key_message(key, model, other_keys or {}))
        elif err["type"] == "missing":
            messages.append(f"missing required key '{key}'")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            got = err.get("input")
            shown = "" if isinstance(got, dict) or err["type"].startswith("value_error") else f" (got {got!r})"
            if branch and key in unions:  # one message per key: "should be a number greater than 0, or 'auto'"
                index = unions[key]
                head, _, tail = messages[index].rpartition(" (got ")
                head, tail = (head, f" (got {tail}") if head else (messages[index], "")
                messages[index] = f"{head}, or {msg.removeprefix('Input should be ')}{tail}"
                continue
            if branch:
                unions[key] = len(messages)
            messages.append(f"{origin}: {msg}{shown}" if key else msg)
    return f"{source}: " + "; ".join(messages)


def _union_branch(part: str) -> bool:
    """Whether a part of a pydantic error location names a union's member type (``constrained-float``,
    ``literal['auto']``, ``int``, ``list[str]``), not a key."""
    return not part.isidentifier() or part in ("int", "float", "str", "bool", "list", "dict", "none")


def unknown_key_message(key: str, model: type[BaseModel], other_keys: dict[str, str]) -> str:
    """'unknown key ...' with the closest key of this task, or the task a key belongs to."""
    task = model.model_fields["task"].default if "task" in model.model_fields else None
    if key in other_keys:
        return f"unknown key '{key}' for task '{task}' (it belongs to task '{other_keys[key]}')"
    hint = suggest_key(key, model)
    return f"unknown key '{key}'" + (f"; did you mean {hint}?" if hint else "")
