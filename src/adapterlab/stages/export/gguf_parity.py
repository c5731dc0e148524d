"""The GGUF export's parity check by llama.cpp, and its README (how to run the files with llama.cpp and Ollama)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapterlab.console import console
from adapterlab.stages.export import ExportJob, llamacpp
from adapterlab.stages.export import parity as p
from adapterlab.stages.export.merged import reference_cases

GREEDY_TOKENS = 32  # as many as the adapter's own greedy continuation (parity.greedy_cases)


@dataclass
class Target:
    """One thing llama.cpp runs in the parity check: a GGUF, or the base GGUF with the LoRA GGUF on it."""

    name: str
    model: Path
    tolerance: str
    lora: Path | None = None


def llama_cpp_parity(job: ExportJob, targets: list[Target], base_gguf: Path, threads: int) -> dict[str, Any]:
    """Each target scored by llama.cpp against the adapter in transformers; the base alone gives the scale."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    model, tokenizer, cases = reference_cases(job)
    reference = [p.teacher_forced(model, c.prompt_ids, c.continuation_ids) for c in cases]
    del model
    stops = (job.info.task_info.get("stop") or {}).get("token_ids") or [tokenizer.eos_token_id]
    # The rendered prompt text through the adapter's tokenizer: what llama.cpp's tokenizer must reproduce.
    expected = [tokenizer(c.prompt, add_special_tokens=False)["input_ids"] for c in cases]
    base = Target("base alone (scale)", base_gguf, targets[0].tolerance)
    files, replies = {}, {}
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console) as progress:
        for target in [*targets, base]:
            task = progress.add_task(f"llama.cpp parity: {target.name}", total=len(cases))
            files[target.name], replies[target.name] = run_target(
                target, cases, reference, expected, stops, threads, lambda t=task: progress.advance(t)
            )
    effect = files.pop(base.name)
    replies.pop(base.name)
    for result in files.values():
        result["resolves_adapter"] = result["mean_abs_logprob_diff"] < effect["mean_abs_logprob_diff"]
    passed = all(r["passed"] for r in files.values())
    figures = ("max_abs_logprob_diff", "mean_abs_logprob_diff", "top1_agreement_clear", "tokens")
    return {
        "passed": passed,
        "summary": summary(files, effect),
        "runtime": f"llama.cpp (node-llama-cpp {llamacpp.NODE_LLAMA_CPP} prebuilt CPU binaries), {threads} thread(s)",
        "files": files,
        "adapter_effect": {k: effect[k] for k in figures},
        "cases": [side_by_side(c, i, replies) for i, c in enumerate(cases)],
    }


def side_by_side(case, index: int, replies: dict[str, list[str]]) -> dict[str, Any]:
    greedy = {name: texts[index] for name, texts in replies.items()}
    return {"id": case.id, "prompt": case.prompt, "adapter_greedy": case.reference_text, "llama_cpp_greedy": greedy}


def run_target(target, cases, reference, expected, stops, threads, advance) -> tuple[dict[str, Any], list[str]]:
    scores, texts, tokens_equal, greedy_equal = [], [], 0, 0
    context = max(len(c.prompt_ids) + max(len(c.continuation_ids), GREEDY_TOKENS) for c in cases) + 16
    with llamacpp.LlamaCpp(target.model, target.lora, threads=threads, context=max(context, 256)) as runtime:
        for case, tokens in zip(cases, expected, strict=True):
            scores.append(runtime.score(case.prompt_ids, case.continuation_ids))
            greedy, text = runtime.greedy(case.prompt_ids, GREEDY_TOKENS, stops)
            texts.append(text)
            greedy_equal += greedy == case.continuation_ids
            tokens_equal += runtime.tokenize(case.prompt) == tokens
            advance()
    result = p.compare(reference, scores, target.tolerance)
    result |= {"prompt_tokens_equal": tokens_equal, "greedy_equal": greedy_equal, "cases": len(cases)}
    result["passed"] = result["passed"] and tokens_equal == len(cases)
    return result, texts


def summary(files: dict[str, dict[str, Any]], effect: dict[str, Any]) -> str:
    """One line: every failing file with its figures against the bounds, or each file's figures in short."""
    failed = [name for name, r in files.items() if not r["passed"]]
    if failed:
        return "; ".join(f"{name}: {p.summary_line(files[name])}{tokens_note(files[name])}" for name in failed)
    short = [f"{name} max {r['max_abs_logprob_diff']:.3g} mean {r['mean_abs_logprob_diff']:.3g} top-1 "
             f"{r['top1_agreement_clear']:.0%}" for name, r in files.items()]  # fmt: skip
    coarse = [name for name, r in files.items() if not r["resolves_adapter"]]
    note = f" ({', '.join(coarse)}: error above the adapter's own effect)" if coarse else ""
    return f"{'; '.join(short)}; adapter effect mean {effect['mean_abs_logprob_diff']:.3g}{note}"


def tokens_note(result: dict[str, Any]) -> str:
    if result["prompt_tokens_equal"] == result["cases"]:
        return ""
    return f", llama.cpp tokenises {result['cases'] - result['prompt_tokens_equal']} prompt(s) differently"


def readme(job: ExportJob, names: dict[str, str]) -> str:
    model, base, lora = names["model"], names["base"], names["lora"]
    quant = f"model-{job.options['quant'][0]}.gguf" if job.options["quant"] else model
    system = job.info.task_info["prompt"].get("system_prompt")
    sys_flag = f" -sys {shell_quote(system)}" if system else ""
    lines = [
        f"# {job.run.root.name}: GGUF for llama.cpp and Ollama",
        "",
        f"The adapter of `{job.info.path}` merged into its base ({job.info.base_model.spec}) as `{model}`, "
        "with the tokenizer, chat template and end-of-turn token in its metadata, and quantised copies "
        f"({', '.join(job.options['quant']) or 'none requested'}). `parity.json` holds llama.cpp's comparison with "
        "the adapter, file by file, and its greedy replies beside the adapter's.",
        "",
        "## llama.cpp",
        "",
        "```bash",
        f"llama-cli -m {quant} --jinja{sys_flag} --temp 0 -t 4        # chat in the terminal",
        f"llama-server -m {quant} --jinja --port 8080 -t 4           # OpenAI-compatible API on :8080",
        "```",
        "",
        "`--jinja` applies the chat template stored in the file, so prompts are rendered as in training. The server "
        "takes the system prompt as the first message of each request.",
    ]
    if (job.folder / lora).is_file():
        lines += ["", f"The adapter alone, on its base (`{lora}` on `{base}`):", "", "```bash",
                  f"llama-cli -m {base} --lora {lora} --jinja{sys_flag} --temp 0", "```"]  # fmt: skip
    lines += ["", "## Ollama", "", "```bash", f"ollama create {job.run.root.name} -f Modelfile",
              f"ollama run {job.run.root.name}", "```", "",
              f"`Modelfile` takes `{model}`; point its FROM line at a quantised file for a smaller model. It sets the "
              "adapter's system prompt and its stop tokens."]  # fmt: skip
    return "\n".join(lines) + "\n" + figures(job)


def figures(job: ExportJob) -> str:
    result = job.options.get("parity_result")
    if not result:
        return ""
    header = "| file | max \\|d log-prob\\| | mean | top-1 agreement | passed |"
    rows = ["", "## Parity (llama.cpp against the adapter)", "", header, "|---|---:|---:|---:|---|"]
    for name, r in result["files"].items():
        rows.append(f"| {name} | {r['max_abs_logprob_diff']:.3g} | {r['mean_abs_logprob_diff']:.3g} | "
                    f"{r['top1_agreement_clear']:.1%} | {'yes' if r['passed'] else 'NO'} |")  # fmt: skip
    effect = result["adapter_effect"]["mean_abs_logprob_diff"]
    rows += ["", f"The base without the adapter differs from the adapter by {effect:.3g} (mean): a file whose error "
             "is above that is too coarse to show what the adapter learned."]  # fmt: skip
    return "\n".join(rows) + "\n"


def shell_quote(text: str) -> str:
    import shlex

    return shlex.quote(text)
