"""The ``classify`` recipe: text columns -> one label, with cleaning, weak labels, augmentation and quotas."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from adapterlab.config import DataConfig, LoraConfig, RecipeBase, Section, TrainConfig, one_or_more_columns
from adapterlab.data.clean import STEPS

PARTS = ("finetuned", "embedding", "tfidf")  # what a classify run can train and ship (tasks/classify/select.py)


class CleanConfig(Section):
    """Text cleaning, step by step; the same steps run at training and at prediction (they travel with the adapter).

    Unset steps are on: reviews, tickets and posts carry links, markup, contacts and emoji that say nothing about
    their category; switch a step off with ``false``.
    """

    urls: bool | None = None
    html_tags: bool | None = None
    html_entities: bool | None = Field(None, description="&#039; -> ', &amp; -> &")
    emails: bool | None = None
    phones: bool | None = None
    emoji: bool | None = None
    whitespace: bool | None = Field(None, description="collapse runs of spaces and blank lines")
    lowercase: bool = False

    def steps(self) -> dict[str, bool]:
        chosen = {name: True if getattr(self, name) is None else bool(getattr(self, name)) for name in STEPS}
        return {**chosen, "lowercase": self.lowercase}


class ClassifyData(DataConfig):
    max_tokens: Annotated[int, Field(gt=16)] | Literal["auto"] = Field(
        "auto", description="auto: the training texts' 90th-percentile length, within 128 and the encoder's limit"
    )
    truncation: Literal["head", "head_tail"] = Field(
        "head_tail", description="what a longer text keeps: its start, or its start and its end (half each)"
    )
    text_columns: list[str] | None = Field(None, description="columns joined into the text")
    label_column: str | None = Field(None, description="the label")
    labels: list[str] | None = Field(None, description="fix the label set and order")
    label_descriptions: dict[str, str] = Field(default_factory=dict, description="label -> description")
    clean: CleanConfig = Field(default_factory=CleanConfig)

    @field_validator("text_columns", mode="before")
    @classmethod
    def _one_or_more(cls, value):
        return None if value is None else one_or_more_columns(value, "text")


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


class ClassifyLora(LoraConfig):
    full_finetune: bool = Field(False, description="train every weight instead of LoRA")


class ClassifyTrain(TrainConfig):
    epochs: Annotated[float, Field(gt=0)] | Literal["auto"] = Field(
        "auto", description="auto: about 1200 example passes, 3 to 10 epochs (train.py auto_epochs)"
    )
    class_weights: Literal["balanced"] | dict[str, float] | None = None
    focal_gamma: float = Field(0.0, ge=0, le=10, description="0 = plain cross-entropy")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    metric_for_best: Literal["weighted_f1", "macro_f1", "accuracy", "loss"] = "weighted_f1"


class SelectConfig(Section):
    """What the run may ship, chosen on the validation split (tasks/classify/select.py); the test split decides
    nothing. ``finetuned``: the fine-tuned encoder; ``embedding``: logistic regression on the base's embeddings
    (after a contrastive stage, ``contrastive_pairs``); ``tfidf``: TF-IDF + logistic regression; ``ensemble``: the
    equal-weight averages of two or three of them. ``[finetuned]`` ships the fine-tuned encoder whatever the scores."""

    candidates: list[str] = Field(
        default_factory=lambda: ["embedding+tfidf", "ensemble", "finetuned", "embedding", "tfidf"],
        min_length=1,
        description="in order of preference on equal scores: finetuned, embedding, tfidf, a mix of two or three "
        "of them joined by + (embedding+tfidf), or ensemble (every mix)",
    )
    tolerance: float = Field(
        0.02, ge=0, le=0.2, description="an option this close to the best validation score counts as equal to it"
    )
    contrastive_pairs: int = Field(
        4,
        ge=0,
        le=64,
        description="the embedding part's encoder is first tuned on this many same-label and as many "
        "other-label pairs per training text (SetFit); 0: the frozen base's embeddings",
    )
    contrastive_max_pairs: int = Field(
        4000,
        ge=2,
        description="at most this many pairs in all: a larger training split gets fewer per text "
        "(about 0.03-0.12 s a pair on a 2-core CPU)",
    )

    @field_validator("candidates")
    @classmethod
    def _each_once(cls, value: list[str]) -> list[str]:
        for candidate in value:
            named = candidate.split("+")
            if candidate == "ensemble" or candidate in PARTS:
                continue
            if len(named) < 2 or len(set(named)) != len(named) or not set(named) <= set(PARTS):
                raise ValueError(
                    f"select.candidates: '{candidate}' is not finetuned, embedding, tfidf, ensemble or a mix of two "
                    "or three different parts joined by + (embedding+tfidf)"
                )
        if len(set(value)) != len(value):
            raise ValueError("select.candidates: each candidate once")
        return value


class ClassifyRecipe(RecipeBase):
    default_base = "default-encoder"

    task: Literal["classify"] = "classify"
    data: ClassifyData
    lora: ClassifyLora = Field(default_factory=ClassifyLora)
    train: ClassifyTrain = Field(default_factory=ClassifyTrain)
    weak_label: WeakLabelConfig | None = None
    augment: AugmentConfig | None = None
    rebalance: RebalanceConfig | None = None
    select: SelectConfig = Field(default_factory=SelectConfig)

    @model_validator(mode="after")
    def _needs_text_and_label(self) -> ClassifyRecipe:
        missing = [k for k in ("text_columns", "label_column") if getattr(self.data, k) is None]
        if missing:
            raise ValueError(f"task 'classify' needs data.{missing[0]} (e.g. text_columns: [text])")
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
        return self.split.stratify_by or self.data.label_column

    def column_roles(self) -> dict[str, str]:
        text = {c: "text" for c in self.data.text_columns or []}
        return {**text, **super().column_roles(), self.data.label_column or "": "label"}

    def data_columns(self) -> dict[str, str]:
        columns = {c: "data.text_columns" for c in self.data.text_columns or []}
        return {**columns, self.data.label_column or "": "data.label_column", **super().data_columns()}

    def prepare_sections(self) -> list[Any]:
        return [*super().prepare_sections(), self.weak_label, self.augment, self.rebalance, self._weak_source()]

    def _weak_source(self) -> str:
        """The bytes of weak_label.path matter to the prepared data: its digest is part of the fingerprint."""
        import hashlib

        if self.weak_label is None or self.weak_label.path is None:
            return ""
        path = Path(self.resolve_path(self.weak_label.path))
        return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
