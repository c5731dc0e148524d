"""The metric registry: name -> label, direction, the function, what it needs.

A :class:`Family` is what a recipe selects (``eval.metrics: [rouge, bleu]``) and what is computed in one pass; it
reports one or more :class:`Metric` values (``rouge`` -> ROUGE-1/2/L/Lsum). Adding a metric is one
:func:`register` call: evaluation, the report, its chart and the recipe validation read everything from here.

Every family computes, for one system's outputs, a :class:`~adapterlab.metrics.stats.MetricStats` per metric
(per-example sufficient statistics and a reduce), so the paired bootstrap recomputes corpus-level values (BLEU,
chrF, perplexity, weighted F1) exactly like their point value. ``ctx`` carries what a family needs (``needs``
says which attributes): the references, the inputs, the source rows, reference log-likelihoods per system, the
task's eval settings; a family that cannot be computed raises :class:`NotComputed` with the reason, which the
report lists instead of a 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from adapterlab.errors import ModelError
from adapterlab.metrics import classification, code, text
from adapterlab.metrics.stats import MetricStats, mean_stats

TRUE = {"true", "1", "yes", "y", "t"}


class NotComputed(Exception):
    """A metric cannot be computed for this evaluation (missing setting, model or data); the message says why."""


@dataclass(frozen=True)
class Metric:
    name: str
    label: str
    higher_is_better: bool | None  # None: shown, never called better or worse
    percent: bool = False  # a 0-1 value, drawn x100 beside 0-100 metrics in charts


@dataclass(frozen=True)
class Family:
    name: str
    kind: Literal["text", "classification"]  # what the outputs are: replies, or predicted label ids
    metrics: tuple[Metric, ...]
    # (outputs of one system, ctx, system name) -> one MetricStats per metric name
    compute: Callable[[Sequence[Any], Any, str], dict[str, MetricStats]]
    needs: tuple[str, ...] = ("references",)
    level: Literal["example", "corpus"] = "example"  # a mean of per-example values, or a corpus statistic
    # The examples it applies to (default: all), e.g. only the inputs flagged as lacking details.
    subset: Callable[[Any], list[int]] | None = None
    # A label detail from the settings (BERTScore's encoder).
    detail: Callable[[Any], str] | None = None
    # In the default metric list of every task of its kind; False for a task's own metrics (a summary's
    # faithfulness, a program's tests), which that task's recipe lists by default instead.
    default: bool = True


REGISTRY: dict[str, Family] = {}


def register(family: Family) -> Family:
    if family.name in REGISTRY:
        raise ValueError(f"a metric family named '{family.name}' is already registered")
    REGISTRY[family.name] = family
    return family


def families(kind: str) -> list[str]:
    return [name for name, family in REGISTRY.items() if family.kind == kind]


COMPARES_TO_REFERENCE = ("references", "nll", "code")


def reference_free(selected: Sequence[str]) -> list[str]:
    """The selected text families that judge a text on its own or against its input or document (length, a
    summary's invented figures, ...) and can therefore score the references themselves: what the adapter was
    trained to imitate, shown beside the base and the adapter."""
    return [
        n for n in selected if REGISTRY[n].kind == "text" and not set(REGISTRY[n].needs) & set(COMPARES_TO_REFERENCE)
    ]


def defaults(kind: str) -> list[str]:
    """The families a recipe of this kind computes when it names none."""
    return [name for name, family in REGISTRY.items() if family.kind == kind and family.default]


def metric(name: str) -> Metric:
    """A reported metric by name (``rougeL``, ``weighted_f1`` ...)."""
    for family in REGISTRY.values():
        for entry in family.metrics:
            if entry.name == name:
                return entry
    raise KeyError(name)


def family_of(name: str) -> str:
    """The family that reports a metric (``rougeL`` -> ``rouge``)."""
    return next(f.name for f in REGISTRY.values() if any(m.name == name for m in f.metrics))


def label_of(name: str, options: Any = None) -> str:
    """The metric's label, with its detail from the eval settings (``BERTScore F1 (all-MiniLM-L6-v2)``)."""
    family = next(f for f in REGISTRY.values() if any(m.name == name for m in f.metrics))
    base = metric(name).label
    return f"{base} ({family.detail(options)})" if family.detail and options is not None else base


@dataclass
class Scored:
    """One metric for every system compared, on the same examples."""

    indices: list[int]
    systems: dict[str, MetricStats] = field(default_factory=dict)


def score(
    selected: Sequence[str], outputs: dict[str, Sequence[Any]], ctx: Any
) -> tuple[dict[str, Scored], dict[str, str]]:
    """Every selected family for every system in ``outputs``; (scored metrics, reason per metric not computed)."""
    scored: dict[str, Scored] = {}
    not_computed: dict[str, str] = {}
    for name in selected:
        family = REGISTRY[name]
        try:
            indices = family.subset(ctx) if family.subset else list(range(len(next(iter(outputs.values())))))
            per_system = {
                system: family.compute([values[i] for i in indices], _Subset(ctx, indices), system)
                for system, values in outputs.items()
            }
        except NotComputed as exc:
            not_computed[name] = str(exc)
            continue
        except (ImportError, OSError, ValueError) as exc:  # a library or model that is missing or refuses
            not_computed[name] = f"{type(exc).__name__}: {exc}".splitlines()[0]
            continue
        for entry in family.metrics:  # a family may report some of its metrics only (pass@k where n >= k)
            if all(entry.name in stats for stats in per_system.values()):
                by_system = {system: stats[entry.name] for system, stats in per_system.items()}
                scored[entry.name] = Scored(indices, by_system)
    return scored, not_computed


class _Subset:
    """``ctx`` seen through the examples a family applies to: list attributes are taken at ``indices``."""

    def __init__(self, ctx: Any, indices: list[int]):
        self._ctx, self._indices = ctx, indices

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._ctx, name)
        if isinstance(value, list):
            return [value[i] for i in self._indices]
        return value

    @property
    def indices(self) -> list[int]:
        return self._indices


# ---------------------------------------------------------------------------------------- text metrics


@dataclass
class TextContext:
    """What text metrics may need, one entry per test example (lists) or per system (``nll``)."""

    references: list[str]
    inputs: list[str]  # the last user message of each prompt
    sources: list[dict[str, Any]]  # the source rows, for columns such as the input's language
    options: Any  # the task's eval section (bertscore_model, language_column, clarify_column ...)
    nll: dict[str, tuple[list[float], list[int]]] | None = None  # system -> (NLL sums, token counts)
    documents: list[str] | None = None  # what a summary is checked against: the document as the model saw it
    code: Any = None  # the code task's scoring context: tests, sandbox, sampled completions (adapterlab.tasks.code)


def _rouge(replies, ctx, _system):
    return text.rouge(replies, ctx.references)


def _perplexity(_replies, ctx, system):
    if not ctx.nll or system not in ctx.nll:
        raise NotComputed("the generator cannot score reference replies (no log-likelihoods)")
    sums, counts = ctx.nll[system]
    return {"perplexity": text.perplexity([sums[i] for i in ctx.indices], [counts[i] for i in ctx.indices])}


def _single(name: str, function: Callable[..., MetricStats]):
    def compute(replies, ctx, _system):
        return {name: function(replies, ctx)}

    return compute


def _bertscore(replies, ctx) -> MetricStats:
    from adapterlab.models import resolve_base  # core too, but it pulls in the model loaders: only when needed

    try:
        encoder = resolve_base(ctx.options.bertscore_model)
    except ModelError as exc:
        raise NotComputed(str(exc)) from None
    return text.bertscore(replies, ctx.references, encoder, ctx.options.bertscore_layers)


def _language(replies, ctx) -> MetricStats:
    column = ctx.options.language_column
    expected = [row.get(column) for row in ctx.sources] if column else [text.detect_language(t) for t in ctx.inputs]
    return text.language_kept(replies, expected)


def _clarify_subset(ctx) -> list[int]:
    column = ctx.options.clarify_column
    if not column:
        raise NotComputed("set eval.clarify_column to the column that flags inputs lacking details")
    flagged = [i for i, row in enumerate(ctx.sources) if str(row.get(column, "")).strip().lower() in TRUE]
    if not flagged:
        raise NotComputed(f"no test example has {column} set to true")
    return flagged


def _text(function_name: str) -> Callable[..., MetricStats]:
    def call(replies, ctx):
        return getattr(text, function_name)(replies, ctx.references)

    return call


def _replies_only(function_name: str) -> Callable[..., MetricStats]:
    def call(replies, _ctx):
        return getattr(text, function_name)(replies)

    return call


register(Family("perplexity", "text", (Metric("perplexity", "perplexity of the reference replies", False),),
                _perplexity, needs=("nll",), level="corpus"))  # fmt: skip
register(Family("rouge", "text", tuple(Metric(n, label, True, percent=True) for n, label in (
    ("rouge1", "ROUGE-1 F1"), ("rouge2", "ROUGE-2 F1"), ("rougeL", "ROUGE-L F1"), ("rougeLsum", "ROUGE-Lsum F1"))),
    _rouge))  # fmt: skip
register(Family("bleu", "text", (Metric("bleu", "BLEU", True),), _single("bleu", _text("bleu")), level="corpus"))
register(Family("chrf", "text", (Metric("chrf", "chrF", True),), _single("chrf", _text("chrf")), level="corpus"))
register(Family("bertscore", "text", (Metric("bertscore", "BERTScore F1", True, percent=True),),
                _single("bertscore", _bertscore), needs=("references", "options.bertscore_model"),
                detail=lambda options: Path(options.bertscore_model).name))  # fmt: skip
register(Family("language", "text", (Metric("language", "language kept", True, percent=True),),
                _single("language", _language), needs=("inputs", "sources", "options.language_column")))  # fmt: skip
register(Family("clarify", "text", (Metric("clarify", "asks when details are missing", True, percent=True),),
                _single("clarify", _replies_only("clarify_rate")), needs=("sources", "options.clarify_column"),
                subset=_clarify_subset))  # fmt: skip
register(Family("length", "text", (Metric("length", "reply length (words)", None),),
                _single("length", _replies_only("reply_length")), needs=()))  # fmt: skip


def _documents(ctx) -> list[str]:
    if ctx.documents is None:
        raise NotComputed("needs the source documents (the summarize task gives them)")
    return ctx.documents


def _novelty(replies, ctx, _system):
    documents = _documents(ctx)
    return {f"novel_{n}grams": text.novel_ngrams(replies, documents, n) for n in (1, 2)}


register(Family("compression", "text", (Metric("compression", "summary / document length (words)", None),),
                _single("compression", lambda r, ctx: text.compression(r, _documents(ctx))), needs=("documents",),
                default=False))  # fmt: skip
register(Family("novelty", "text", (Metric("novel_1grams", "novel words (not in the document)", None, percent=True),
                                    Metric("novel_2grams", "novel bigrams (not in the document)", None, percent=True)),
                _novelty, needs=("documents",), level="corpus", default=False))  # fmt: skip
register(Family("faithfulness", "text",
                (Metric("unsupported_figures", "numbers and names not in the document", False, percent=True),),
                _single("unsupported_figures", lambda r, ctx: text.unsupported_figures(r, _documents(ctx))),
                needs=("documents",), level="corpus", default=False))  # fmt: skip


# ----------------------------------------------------------------------------------------- code metrics
# The replies of a code task are scored as the programs taken from them (adapterlab.metrics.code.extract_code), the
# references as the reference programs. Execution needs ``ctx.code`` (the code task's ExecutionScoring): it runs
# programs with their tests in the sandbox and holds the sampled completions for pass@k.

PASS_K = (1, 2, 3, 4, 5, 8, 10, 16, 20, 25, 32, 50, 64, 100)


def _execution(ctx):
    if ctx.code is None:
        raise NotComputed("needs tests to run (the code task gives them)")
    if not ctx.code.executes:
        raise NotComputed(ctx.code.reason)
    return ctx.code


def _tested(ctx) -> list[int]:
    tested = _execution(ctx).tested
    if not tested:
        raise NotComputed("no test example has tests")
    return tested


def _pass_greedy(programs, ctx, system):
    return {"pass_rate": mean_stats_of(_execution(ctx).passed(system, list(programs), ctx.indices))}


def _pass_at_k(_programs, ctx, system):
    estimates = _execution(ctx).pass_at_k(system, ctx.indices)
    if not estimates:
        raise NotComputed("needs eval.samples > 1 (n sampled programs per problem)")
    return {f"pass@{k}": mean_stats_of(values) for k, values in estimates.items()}


def mean_stats_of(values) -> MetricStats:
    return mean_stats([float(v) for v in values])


register(Family("syntax", "text", (Metric("syntax_valid", "syntax-valid programs", True, percent=True),),
                _single("syntax_valid", lambda programs, _ctx: code.syntax_rate(programs)), needs=(),
                default=False))  # fmt: skip
register(
    Family(
        "codebleu",
        "text",
        (Metric("codebleu", "CodeBLEU", True, percent=True),),
        _single("codebleu", lambda programs, ctx: code.codebleu(programs, ctx.references)),
        default=False,
    )
)
register(Family("execution", "text", (Metric("pass_rate", "pass@1, greedy (all tests pass)", True, percent=True),),
                _pass_greedy, needs=("code",), subset=_tested, default=False))  # fmt: skip
register(Family("pass_at_k", "text",
                tuple(Metric(f"pass@{k}", f"pass@{k} (sampled, unbiased)", True, percent=True) for k in PASS_K),
                _pass_at_k, needs=("code",), subset=_tested, default=False))  # fmt: skip


# ------------------------------------------------------------------------------ classification metrics


@dataclass
class LabelContext:
    """The true label ids of the test examples and how many labels there are."""

    y_true: list[int]
    num_labels: int


CLASSIFICATION = (
    Metric("accuracy", "accuracy", True, percent=True),
    Metric("weighted_f1", "weighted F1", True, percent=True),
    Metric("macro_f1", "macro F1", True, percent=True),
    Metric("weighted_precision", "weighted precision", True, percent=True),
    Metric("weighted_recall", "weighted recall", True, percent=True),
)


def _classification(predicted, ctx, _system):
    predicted = list(predicted)
    return {m.name: classification.metric_stats(ctx.y_true, predicted, ctx.num_labels, m.name) for m in CLASSIFICATION}


register(Family("classification", "classification", CLASSIFICATION, _classification, needs=("y_true",),
                level="corpus"))  # fmt: skip
