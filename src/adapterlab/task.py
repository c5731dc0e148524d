"""The shape of a task: what the stages ask of it.

A task is one folder, ``tasks/<name>/``, with the same modules in each (``config.py`` its recipe class,
``format.py`` its row formatter and prepared-data writer, ``train.py`` its trainer, ``evaluate.py`` its scoring
and report, ``infer.py`` its inference on new rows) and an ``__init__.py`` holding a :class:`Task` subclass that
wires them; :mod:`adapterlab.registry` lists it in one line. The stages (prepare, train, evaluate, predict,
serve) read top to bottom and call these hooks; none of them branches on a task's name.

``docs/tasks.md`` walks through adding one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from adapterlab.config import RecipeBase
from adapterlab.runs import AdapterInfo, RunDir

if TYPE_CHECKING:
    from adapterlab.data.load import RowLedger
    from adapterlab.generation import Generator
    from adapterlab.report import Report


# ------------------------------------------------------------------------------------------------ prepare


@dataclass
class Dropped:
    """Why a row is not used: a stable ``reason`` counted in data_report.json and a one-line ``detail``."""

    reason: str
    detail: str
    fatal: bool = True  # bad data (honours data.on_bad_rows: error) vs. a policy drop (duplicate, too long)


@dataclass
class Context:
    """A row used as context for other rows' examples but not an example itself (another speaker's line in a
    script): counted in data_report.json as ``context``, neither kept nor dropped."""

    reason: str = "context"


class Example(Protocol):
    """A formatted row. ``meta`` gets ``id``, ``row`` and ``source`` from prepare."""

    meta: dict[str, Any]
    truncated: bool

    @property
    def pending(self) -> bool:
        """Kept aside for the task's ``finish`` (a classification row without a label, for weak labelling)."""
        ...

    def dedupe_key(self) -> tuple[str, Any]:
        """(what makes two rows the same, what they are trained to produce)."""
        ...

    def lengths(self) -> dict[str, int]:
        """Token counts for the data report (``total_tokens`` is the one every task has)."""
        ...


class Formatter(Protocol):
    """Turns rows into examples, one row at a time, in file order (a formatter may keep state across rows, e.g. a
    scene's earlier lines). Optional: ``arrange(numbers, rows) -> (numbers, rows)`` reorders the rows first (by an
    order column); an example may set ``meta["group"]``, the unit the split keeps together (a scene)."""

    def format(self, row: dict[str, str | None]) -> Example | Dropped | Context: ...


# -------------------------------------------------------------------------------------------------- train


@dataclass
class TrainContext:
    """What a task's trainer is built from."""

    recipe: Any  # the task's recipe class
    run: RunDir
    base: str  # the resolved base model (a directory or a hub id)
    tokenizer: Any
    precision: str
    prepared: dict[str, Any]  # data/meta.json with the data report under "report"
    callbacks: list = field(default_factory=list)  # extra Trainer callbacks from the caller


# --------------------------------------------------------------------------------------------------- eval


@dataclass
class EvalContext:
    recipe: Any
    run: RunDir
    info: AdapterInfo
    rows: list[dict[str, Any]]  # the test rows as prepare wrote them (data/test.jsonl), possibly the first N
    test_split_size: int
    precision: str
    generator: Generator | None = None  # set by the caller to evaluate through another backend
    tasks: TaskRunner | None = None  # other tasks' models this evaluation may train and use (set by the stage)

    def report_header(self, evaluated: int) -> dict[str, Any]:
        """What every evaluation report starts with: which recipe and run, when, on how many test examples."""
        from datetime import UTC, datetime

        return {
            "name": self.recipe.name,
            "task": self.recipe.task,
            "run": str(self.run.root),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "n_examples": evaluated,
            "test_split_size": self.test_split_size,
        }


class TaskRunner(Protocol):
    """What an evaluation may ask of other tasks (a style judge trained by ``classify``), given by the evaluate
    stage: a task never imports another task, the stage asks the registry."""

    def train(self, recipe: dict[str, Any]) -> RunDir:
        """Prepare and train a recipe of any registered task; its run directory."""
        ...

    def predictor(self, run_dir: Path, precision: str, **options: Any) -> Predictor: ...


@dataclass
class Evaluation:
    report: Report
    predictions: list[dict[str, Any]]


# ---------------------------------------------------------------------------------------------- inference


@dataclass
class Skipped:
    """A row a predictor gives no output for, and why (counted in the prediction report)."""

    reason: str


class Predictor(Protocol):
    """A trained adapter applied to new rows (``adapterlab predict``)."""

    columns: list[str]  # the input columns it reads
    output_columns: list[str]  # what it writes for each row, after the id

    def predict(self, rows: Sequence[dict[str, str | None]]) -> list[dict[str, str] | Skipped]: ...

    def describe(self, rows: Sequence[dict[str, str | None]], outputs: list[dict[str, str] | Skipped]) -> dict: ...


# ---------------------------------------------------------------------------------------------------- task


class Task:
    """A kind of job adapterlab trains, evaluates and serves adapters for; subclass it in ``tasks/<name>/``."""

    name: ClassVar[str]
    recipe: ClassVar[type[RecipeBase]]
    # Replies come from the causal base with its chat template: such adapters share one base when served, and
    # chat and generation work with them. A non-generative task serves its own model (see ``load_served``).
    generative: ClassVar[bool] = True
    summary: ClassVar[str] = ""
    # What ``adapterlab export`` can write for this task's adapters (merged, gguf, onnx).
    export_formats: ClassVar[tuple[str, ...]] = ()

    # -- prepare
    def formatter(self, recipe: Any, tokenizer: Any) -> Formatter:
        raise NotImplementedError

    def finish(self, recipe: Any, by_split: dict[str, list], pool: list, ledger: RowLedger, formatter: Any) -> dict:
        """After the split: settle pending rows, task-level accounting; returns the task's part of the report."""
        return {}

    def write_examples(self, run: RunDir, by_split: dict[str, list], report: dict[str, Any]) -> None:
        """``data/{split}.jsonl`` (readable) and ``data/tokenized`` (what the trainer reads)."""
        raise NotImplementedError

    def report_lines(self, report: dict[str, Any]) -> list[tuple[str, str]]:
        """Extra rows of prepare's terminal summary."""
        return []

    # -- train
    def build_trainer(self, ctx: TrainContext) -> tuple[Any, Any]:
        """(a transformers Trainer ready to train, its non-finite loss guard)."""
        raise NotImplementedError

    def before_training(self, trainer: Any, ctx: TrainContext, resume_from: Path | None) -> dict[str, Any]:
        """Anything measured before the first step (e.g. the base model's validation loss)."""
        return {}

    def adapter_info(self, trainer: Any, ctx: TrainContext) -> dict[str, Any]:
        """The task's part of adapterlab.json: what inference needs to rebuild its inputs exactly."""
        return {}

    def save_extras(self, trainer: Any, ctx: TrainContext) -> None:
        """Files the task ships beside the saved adapter (``ctx.run.adapter``), written after it."""

    def summarise(self, trainer: Any, ctx: TrainContext, final_eval: dict, before: dict) -> dict[str, Any]:
        """The task's part of summary.json."""
        return {}

    def print_outcome(self, summary: dict[str, Any]) -> None:
        pass

    def validation_score(self, summary: dict[str, Any]) -> tuple[str, float, bool]:
        """(name, value, higher is better) of a finished run's validation result, for ``adapterlab cv``."""
        return "validation loss", float(summary.get("val_loss", float("nan"))), False

    # -- cross-validation
    def ensemble(self, members: list[AdapterInfo], single: AdapterInfo, adapter_dir: Path) -> bool:
        """Write into ``adapter_dir`` an adapter that averages the fold models ``members`` (``single``: the run
        trained on the recipe's own split, for comparison); False when the task has no such ensemble."""
        return False

    # -- evaluate
    def evaluate(self, ctx: EvalContext) -> Evaluation:
        raise NotImplementedError

    # -- inference
    def predictor(self, info: AdapterInfo, precision: str, **options: Any) -> Predictor:
        """What ``adapterlab predict`` applies to every row of a file; a task without one says so in one line."""
        from adapterlab.errors import ModelError

        how = " talk to it with adapterlab chat RUN or serve it (adapterlab serve RUN)" if self.generative else ""
        raise ModelError(f"predict: a '{self.name}' adapter has no batch predictor;{how or ' nothing to predict'}")

    # -- export
    def merged_model(self, info: AdapterInfo, precision: str) -> tuple[Any, Any]:
        """(a plain transformers model with the adapter merged into full-precision weights, its tokenizer)."""
        raise NotImplementedError

    def load_served(self, info: AdapterInfo, precision: str, compiled: bool = False) -> Any:
        """A non-generative task's model for the server (generative adapters are attached to the shared base);
        ``compiled``: compiled and warmed up before the first request (``serve --compile``)."""
        raise NotImplementedError
