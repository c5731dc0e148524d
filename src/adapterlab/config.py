"""The typed recipe: YAML + dotted overrides, validated before any model loads.

A recipe has one section per pipeline stage (``model``, ``data``, ``split``, ``lora``, ``train``). Unknown keys
are rejected with a suggestion, wrong types and impossible values become one-line :class:`RecipeError`
messages that name the key. The resolved recipe is written next to every artefact.
"""

from __future__ import annotations

import difflib
import math
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from adapterlab.errors import RecipeError

TASKS = ("chat", "classify")
CLEAN_STEPS = ("urls", "html_tags", "html_entities", "emails", "phones", "emoji", "whitespace")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Section):
    base: str = Field(
        "default",
        description="'default' (embedded SmolLM2-135M-Instruct), 'default-encoder' (embedded all-MiniLM-L6-v2), "
        "a local dir or a hub id; a classify recipe without it uses 'default-encoder'",
    )
    revision: str | None = None
    trust_remote_code: bool = False
    quantization: Literal["none", "4bit"] = "none"
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"


class CleanConfig(Section):
    """Text cleaning, step by step; the same steps run at training and at prediction (they travel with the adapter).

    Unset steps take the task's default: all on for ``classify``, all off for ``chat`` (a ticket keeps its URLs).
    """

    urls: bool | None = None
    html_tags: bool | None = None
    html_entities: bool | None = Field(None, description="&#039; -> ', &amp; -> &")
    emails: bool | None = None
    phones: bool | None = None
    emoji: bool | None = None
    whitespace: bool | None = Field(None, description="collapse runs of spaces and blank lines")
    lowercase: bool = False

    def steps(self, task: str) -> dict[str, bool]:
        default = task == "classify"
        chosen = {name: default if getattr(self, name) is None else bool(getattr(self, name)) for name in CLEAN_STEPS}
        return {**chosen, "lowercase": self.lowercase}


class DataConfig(Section):
    path: str
    format: Literal["auto", "csv", "tsv", "jsonl", "json", "parquet"] = "auto"
    encoding: str = "utf-8"
    id_column: str | None = None
    system_prompt: str | None = None
    prompt_template: str | None = None
    target_column: str | None = None
    text_columns: list[str] | None = Field(None, description="classify: columns joined into the text")
    label_column: str | None = Field(None, description="classify: the label")
    labels: list[str] | None = Field(None, description="classify: fix the label set and order")
    label_descriptions: dict[str, str] = Field(default_factory=dict, description="label -> description")
    clean: CleanConfig = Field(default_factory=CleanConfig)
    max_tokens: int = Field(1024, gt=16)
    on_too_long: Literal["truncate", "drop"] = "truncate"
    on_bad_rows: Literal["drop", "error"] = "drop"
    dedupe: bool = True

    @field_validator("prompt_template")
    @classmethod
    def _template_parses(cls, value: str | None) -> str | None:
        if value is not None:
            template_columns(value)
        return value


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


class WeakLabelConfig(Section):
    """Zero-shot labels for unlabeled rows, kept only above a confidence threshold (training split only)."""

    path: str | None = Field(None, description="a file of unlabeled rows; without it, rows with an empty label")
    method: Literal["embedding", "nli"] = "embedding"
    model: str = Field("default-encoder", description="sentence encoder (embedding) or an NLI model (nli)")
    threshold: float = Field(0.5, gt=0, lt=1, description="minimum confidence to keep a weak label")
    grey_zone: float = Field(0.15, ge=0, lt=1, description="confidences this far below the threshold are reported")
    temperature: float = Field(0.05, gt=0, description="softmax temperature over cosine similarities")
    hypothesis: str = Field("This text is about {}.", description="nli: the hypothesis template")


class AugmentConfig(Section):
    """EDA-style augmentation of training rows (random swap, deletion, insertion of the row's own words)."""

    copies: int = Field(1, ge=1, le=20, description="augmented copies per selected row")
    below_count: int | None = Field(None, gt=0, description="augment only classes with fewer training rows")
    classes: list[str] | None = Field(None, description="augment only these classes")
    p_swap: float = Field(0.1, ge=0, le=0.5)
    p_delete: float = Field(0.1, ge=0, le=0.5)
    p_insert: float = Field(0.1, ge=0, le=0.5)
    paraphrase_model: str | None = Field(None, description="a local seq2seq model directory that paraphrases")
    backtranslate: list[str] | None = Field(None, description="[to-pivot model dir, back model dir]")

    @field_validator("backtranslate")
    @classmethod
    def _two_models(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(value) != 2:
            raise ValueError("augment.backtranslate takes two model directories: [to_pivot, back]")
        return value


class RebalanceConfig(Section):
    """Quotas on the training split per class: oversample (duplicate) up to min, undersample down to max."""

    min_per_class: int | None = Field(None, gt=0)
    max_per_class: int | None = Field(None, gt=0)


class LoraConfig(Section):
    r: int = Field(16, gt=0)
    alpha: float = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: str | list[str] = "all-linear"
    dora: bool = False
    modules_to_save: list[str] = Field(default_factory=list)
    full_finetune: bool = Field(False, description="train every weight instead of LoRA (classify)")


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
    optimizer: str = "adamw_torch"
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    gradient_checkpointing: bool = False
    padding_free: bool | Literal["auto"] = Field(
        "auto", description="pack each batch into one row without padding; auto: when the model's attention allows"
    )
    group_by_length: bool | Literal["auto"] = Field(
        "auto", description="batches of similar length (less padding); auto: only when batches are padded"
    )
    keep_freed_memory: bool = Field(
        True, description="CPU: keep freed memory for the next step instead of page-faulting it in again"
    )
    eval_every: int | Literal["epoch"] = Field(25, description="steps between validation passes, or 'epoch'")
    save_every: int | Literal["epoch"] = Field(25, description="steps between checkpoints, or 'epoch'")
    keep_checkpoints: int = Field(2, gt=0)
    log_every: int = Field(5, gt=0)
    early_stopping_patience: int | None = Field(None, gt=0, description="evals without improvement")
    max_nan_logs: int = Field(3, gt=0, description="stop after this many non-finite losses in a row")
    report_to: Literal["none", "tensorboard", "mlflow"] = "none"
    golden_prompts: int = Field(3, ge=0, description="val prompts stored with the adapter with their outputs")
    # Classification
    class_weights: Literal["balanced"] | dict[str, float] | None = None
    focal_gamma: float = Field(0.0, ge=0, le=10, description="0 = plain cross-entropy")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    metric_for_best: Literal["weighted_f1", "macro_f1", "accuracy", "loss"] = "weighted_f1"

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


METRICS = ("perplexity", "rouge", "bleu", "chrf", "bertscore", "language", "clarify", "length")


class EvalConfig(Section):
    """Base vs adapter on the test split: the same prompts, decoding and metrics for both."""

    metrics: list[Literal[METRICS]] = Field(default_factory=lambda: list(METRICS))  # type: ignore[valid-type]
    max_new_tokens: int = Field(256, gt=0, le=8192)
    batch_size: int = Field(16, gt=0)
    do_sample: bool = False
    temperature: float = Field(0.7, gt=0, le=5)
    top_p: float = Field(0.95, gt=0, le=1)
    stop: list[str] = Field(default_factory=list, description="extra stop strings")
    repetition_penalty: float = Field(1.0, ge=1.0, le=2.0, description=">1 discourages loops (both models alike)")
    seed: int | None = Field(None, description="sampling seed; the top-level seed by default")
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    max_examples: int | None = Field(None, gt=0, description="evaluate the first N test examples only")
    bertscore_model: str = Field("default-encoder", description="an encoder for BERTScore: alias, dir or hub id")
    bertscore_layers: int | None = Field(None, gt=0, description="layer whose embeddings are compared; last if unset")
    language_column: str | None = Field(None, description="the input's language code; detected when unset")
    clarify_column: str | None = Field(None, description="true/false: the input lacks details")
    bootstrap: int = Field(1000, ge=100, description="paired bootstrap resamples for the 95% intervals")
    backend: Literal["transformers"] = "transformers"
    examples_in_report: int = Field(3, ge=0, description="best and worst examples (by ROUGE-L delta) shown")


class Recipe(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    task: Literal["chat", "classify"] = "chat"
    output_dir: str = "runs"
    seed: int = 42
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig
    split: SplitConfig = Field(default_factory=SplitConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    weak_label: WeakLabelConfig | None = None
    augment: AugmentConfig | None = None
    rebalance: RebalanceConfig | None = None

    # Where the recipe file lives; relative data paths fall back to it. Not part of the saved recipe.
    source_dir: str | None = Field(None, exclude=True)

    @model_validator(mode="after")
    def _task_fields(self) -> Recipe:
        if self.task == "chat":
            missing = [k for k in ("prompt_template", "target_column") if getattr(self.data, k) is None]
            if missing:
                raise ValueError(f"task 'chat' needs data.{missing[0]} (e.g. prompt_template: '{{question}}')")
            extra = [k for k in ("weak_label", "augment", "rebalance") if getattr(self, k) is not None]
            if extra:
                raise ValueError(f"{extra[0]} applies to task 'classify' only")
        else:
            missing = [k for k in ("text_columns", "label_column") if getattr(self.data, k) is None]
            if missing:
                raise ValueError(f"task 'classify' needs data.{missing[0]} (e.g. text_columns: [text])")
            if "base" not in self.model.model_fields_set:
                self.model.base = "default-encoder"
            if not self.train.saves_align_with_evals():
                raise ValueError(
                    f"train.save_every ({self.train.save_every}) must be a multiple of train.eval_every "
                    f"({self.train.eval_every}): classification keeps the checkpoint with the best "
                    f"{self.train.metric_for_best}"
                )
        return self

    @property
    def stratify_column(self) -> str | None:
        """Classification splits are stratified by label unless the recipe says otherwise."""
        if self.split.stratify_by or self.task != "classify":
            return self.split.stratify_by
        return self.data.label_column

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


def template_columns(template: str) -> list[str]:
    """The column names a ``str.format`` template refers to, in order."""
    import string

    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise ValueError(f"prompt_template is not a valid format string ({exc}); write columns as {{name}}") from exc
    for name in fields:
        if not name or not name.isidentifier():
            raise ValueError(
                f"prompt_template refers to {{{name}}}; use plain column names such as {{subject}} "
                "(write literal braces as {{ and }})"
            )
    return list(dict.fromkeys(fields))


# ----------------------------------------------------------------------------------------------- loading


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


def load_recipe(path: str | Path, overrides: list[str] | dict[str, Any] | None = None) -> Recipe:
    """Read, override and validate a recipe; raise :class:`RecipeError` with a one-line message."""
    path = Path(path)
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
    return recipe_from_dict(raw, overrides, source=str(path))


def recipe_from_dict(
    raw: dict[str, Any], overrides: list[str] | dict[str, Any] | None = None, source: str = "recipe"
) -> Recipe:
    over = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
    raw = apply_overrides(dict(raw), over)
    raw.pop("source_dir", None)
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        raise RecipeError(format_validation_error(exc, source, over)) from None
    if source != "recipe":
        recipe.source_dir = str(Path(source).parent)
    return recipe


def _known_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        dotted = f"{prefix}{name}"
        keys.append(dotted)
        for ann in typing.get_args(field.annotation) or (field.annotation,):  # X | None -> X
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                keys.extend(_known_keys(ann, dotted + "."))
    return keys


def suggest_key(dotted: str) -> str | None:
    """The closest known recipe key, e.g. ``lora.alpah`` -> ``lora.alpha``, ``lora.lr`` -> ``train.learning_rate``."""
    known = _known_keys(Recipe)
    close = difflib.get_close_matches(dotted, known, n=1, cutoff=0.6)
    if close:
        return close[0]
    leaf = dotted.rsplit(".", 1)[-1]
    by_leaf = {k.rsplit(".", 1)[-1]: k for k in known}
    close = difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.6)
    return by_leaf[close[0]] if close else None


def format_validation_error(exc: ValidationError, source: str, overrides: dict[str, Any]) -> str:
    messages = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"] if not isinstance(p, int)]
        key = ".".join(loc)
        origin = f"override {key}={overrides[key]!r}" if key in overrides else key
        if err["type"] == "extra_forbidden":
            hint = suggest_key(key)
            did_you_mean = f"; did you mean {hint}?" if hint else ""
            messages.append(f"unknown key '{key}'{did_you_mean}")
        elif err["type"] == "missing":
            messages.append(f"missing required key '{key}'")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            got = err.get("input")
            shown = "" if isinstance(got, dict) or err["type"].startswith("value_error") else f" (got {got!r})"
            messages.append(f"{origin}: {msg}{shown}" if key else msg)
    return f"{source}: " + "; ".join(messages)


def as_recipe(recipe: Recipe | str | Path, overrides: list[str] | dict[str, Any] | None = None) -> Recipe:
    """Accept a Recipe or a path to one, so every verb works from Python and from the CLI alike."""
    if isinstance(recipe, Recipe):
        if not overrides:
            return recipe
        merged = recipe_from_dict(recipe.model_dump(mode="json"), overrides)
        merged.source_dir = recipe.source_dir
        return merged
    return load_recipe(recipe, overrides)
