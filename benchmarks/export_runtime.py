"""Export runtimes against ``adapterlab serve`` on the same model, one run, same prompts and machine.

    python benchmarks/export_runtime.py [--part gguf|onnx|all] [--run runs/support-tickets] [--prompts 32]
        [--max-tokens 64] [--classifier-run runs/review-classify] [--single 200]

One function per part. Results go to ``benchmarks/results/export_runtime.json`` under the part's name.

GGUF part: the run's adapter exported to GGUF f16 and q8_0 (``adapterlab export --format gguf``, or the files
already in ``RUN/export/gguf``) and run by llama.cpp (node-llama-cpp's prebuilt CPU build, in process, through
adapterlab's runner) against ``adapterlab serve RUN`` (the base + the PEFT adapter, precision auto) driven over HTTP
exactly as ``serve_throughput.py`` drives it. The same user messages (the first N support tickets), rendered with
the adapter's chat template and system prompt into the same token ids, greedy, the same reply budget, replies cut at
the adapter's stop tokens (not counted):

- batch 1: one client, the prompts one after the other: decode tokens/s of a single stream (prompt processing
  included, as a user waits for it);
- 8 clients: 8 concurrent workers, each sending its share one request at a time; llama.cpp runs them as 8
  sequences of one context (batched like ``llama-server --parallel 8``), the server with continuous batching.

llama.cpp gets ``--threads`` threads (default: all cores, like torch); it is driven in process, not over HTTP (the
npm package ships no llama-server): the server pays for HTTP and JSON, a few ms per request. Without ``--run`` a
support-ticket adapter is trained for 2 steps first (the speed does not depend on what it learned).

ONNX part: the review classifier's ONNX export (``adapterlab export RUN --format onnx --quant int8``; made here if
missing) against the run's classifier in PyTorch, on the same cleaned review texts, with the same tokenisation and
length-grouped batches (16 texts):

- ``torch_fp32`` / ``torch_bf16``: ``adapterlab.tasks.classify.infer.Classifier`` (LoRA merged), eager;
- ``onnx_fp32`` / ``onnx_int8``: ``ONNXClassifier`` on ``model.onnx`` / ``model.int8.onnx``, onnxruntime's CPU
  provider with as many intra-op threads as torch uses.

Latency at batch 1 (p50/p95 over ``--single`` texts) and batched throughput over every text (best of 3), the
predictors taking turns (``classify_latency.timed_single`` / ``timed_batch``: this VM's speed drifts), and each
one's weighted F1 on the test split (batches of 16; int8's dynamic activation scales depend on the batch).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # serve_throughput's server driver and prompts

import serve_throughput as serving  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "export_runtime.json"


def trained_run(tmp: Path) -> Path:
    from adapterlab.registry import load_recipe
    from adapterlab.stages.train import train

    overrides = ["train.max_steps=2", "train.batch_size=4", "train.eval_every=2", "train.save_every=2",
                 "data.max_tokens=256", "train.golden_prompts=1", f"output_dir={tmp}"]  # fmt: skip
    return train(load_recipe(str(ROOT / "recipes" / "support-tickets.yaml"), overrides)).run.root


def gguf_files(run: Path) -> Path:
    from adapterlab.stages.export import export

    folder = run / "export" / "gguf"
    if not ((folder / "model-f16.gguf").is_file() and (folder / "model-q8_0.gguf").is_file()):
        export(run, "gguf", dtype="fp16", quant=["q8_0"], cases=1)
    return folder


def prompt_ids(run: Path, prompts: list) -> tuple[list[list[int]], list[int]]:
    """The messages as the server renders them: the adapter's system prompt and chat template; its stop tokens."""
    from transformers import AutoTokenizer

    from adapterlab.rendering import encode_prompt
    from adapterlab.runs import AdapterInfo

    info = AdapterInfo.read(run)
    tokenizer = AutoTokenizer.from_pretrained(info.path)
    system = info.task_info["prompt"].get("system_prompt")
    head = [{"role": "system", "content": system}] if system else []
    return [encode_prompt(tokenizer, head + m) for m in prompts], info.task_info["stop"]["token_ids"]


def llama_cpp_rounds(model: Path, ids, stops, max_tokens: int, threads: int) -> list[dict]:
    from adapterlab.stages.export.llamacpp import LlamaCpp

    rows = []
    for clients in (1, 8):
        context = clients * (max(len(p) for p in ids) + max_tokens + 16)
        with LlamaCpp(model, threads=threads, context=context, sequences=clients) as runtime:
            runtime.generate(ids[:clients], clients, 4, stops)  # warm-up, untimed
            done = runtime.generate(ids, clients, max_tokens, stops)
        tokens, seconds = sum(done["tokens"]), done["seconds"]
        rows.append({"runtime": f"llama.cpp {model.name}", "clients": clients, "requests": len(ids), "tokens": tokens,
                     "seconds": seconds, "tokens_per_s": tokens / seconds, "texts": done["texts"]})  # fmt: skip
        print(f"  llama.cpp {model.name}, {clients} client(s): {tokens} tokens in {done['seconds']:.1f} s "
              f"= {tokens / done['seconds']:.1f} tok/s", flush=True)  # fmt: skip
    return rows


def serve_rounds(run: Path, prompts: list, max_tokens: int) -> list[dict]:
    port = serving.free_port()
    url = f"http://127.0.0.1:{port}"
    name = serving.served_name(str(run))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        log_path = Path(tmp) / "server.log"
        with log_path.open("w") as log_file:
            process = serving.start_server(str(run), port, 8, log_file)
            try:
                serving.wait_ready(url, process, log_path)
                serving.drive(url, name, prompts[:1], 1, 4)  # warm-up, untimed
                for clients in (1, 8):
                    done = serving.drive(url, name, prompts, clients, max_tokens)
                    rate = done["tokens"] / done["seconds"]
                    rows.append({"runtime": "adapterlab serve", "clients": clients, "requests": len(prompts),
                                 "tokens": done["tokens"], "seconds": done["seconds"], "tokens_per_s": rate,
                                 "texts": [r["text"] for r in done["results"]]})  # fmt: skip
                    print(f"  adapterlab serve, {clients} client(s): {done['tokens']} tokens in "
                          f"{done['seconds']:.1f} s = {rate:.1f} tok/s", flush=True)  # fmt: skip
            finally:
                serving.stop_server(process)
    return rows


def gguf_part(args: argparse.Namespace) -> dict:
    from adapterlab.stages.export import llamacpp

    if llamacpp.missing():
        raise SystemExit(llamacpp.missing())
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(args.run) if args.run else trained_run(Path(tmp))
        folder = gguf_files(run)
        prompts = serving.read_prompts(args.prompts)
        ids, stops = prompt_ids(run, prompts)
        print(f"GGUF part: {len(prompts)} prompts, up to {args.max_tokens} tokens, llama.cpp {args.threads} threads")
        load_before = os.getloadavg()
        rows = serve_rounds(run, prompts, args.max_tokens)
        for name in ("model-f16.gguf", "model-q8_0.gguf"):
            rows += llama_cpp_rounds(folder / name, ids, stops, args.max_tokens, args.threads)
    reference = {r["clients"]: (r["tokens_per_s"], r["texts"]) for r in rows if r["runtime"] == "adapterlab serve"}
    for row in rows:
        rate, texts = reference[row["clients"]]
        row["vs_serve"] = row["tokens_per_s"] / rate
        pairs = zip(row.pop("texts"), texts, strict=True)
        row["identical_to_serve"] = sum(a.strip() == b.strip() for a, b in pairs)
    return {"prompts": len(prompts), "max_tokens": args.max_tokens, "llama_cpp_threads": args.threads,
            "node_llama_cpp": llamacpp.NODE_LLAMA_CPP, "serve_precision": "auto", "rows": rows,
            "environment": serving.environment("auto") | {"load_average_at_start": load_before,
                                                        "load_average_at_end": os.getloadavg()}}  # fmt: skip


def onnx_predictors(run: Path, threads: int) -> dict:
    """The four classifiers by name; the export is made first when the run has none with an int8 model."""
    from adapterlab.runs import RunDir
    from adapterlab.stages.export import export
    from adapterlab.tasks.classify.infer import Classifier, ONNXClassifier

    folder = RunDir(run).export_dir("onnx")
    if not (folder / "model.onnx").is_file() or not (folder / "model.int8.onnx").is_file():
        export(run, "onnx", quant=["int8"])
    found = {
        "torch_fp32": Classifier.load(run, "fp32"),
        "torch_bf16": Classifier.load(run, "bf16"),
        "onnx_fp32": ONNXClassifier.load(folder, threads=threads),
    }
    if (folder / "model.int8.onnx").is_file():  # absent when the F1 gate refused it
        found["onnx_int8"] = ONNXClassifier.load(folder, "model.int8.onnx", threads=threads)
    return found


def split_f1(classifier, rows: list[dict]) -> float:
    from adapterlab.metrics.classification import classification_metrics

    labels = classifier.labels
    rows = [r for r in rows if r.get("text") and r.get("label") in labels]
    predicted = classifier.predict_proba([r["text"] for r in rows]).argmax(axis=1).tolist()
    return classification_metrics([labels.index(r["label"]) for r in rows], predicted, len(labels))["weighted_f1"]


def model_mb(run: Path, name: str) -> float:
    from adapterlab.runs import RunDir

    if name.startswith("onnx"):
        files = [RunDir(run).export_dir("onnx") / ("model.int8.onnx" if name == "onnx_int8" else "model.onnx")]
    else:
        files = list((run / "adapter").glob("*.safetensors"))
    size = sum(f.stat().st_size for f in files) / 2**20
    return size / 2 if name == "torch_bf16" else size  # bf16 halves the fp32 weights in memory


def onnx_part(args: argparse.Namespace) -> dict:
    import onnxruntime
    import torch

    from adapterlab.runs import RunDir, read_jsonl
    from classify_latency import timed_batch, timed_single

    run = Path(args.classifier_run)
    threads = torch.get_num_threads()
    models = onnx_predictors(run, threads)
    splits = {s: read_jsonl(RunDir(run).split_file(s)) for s in ("train", "val", "test")}
    texts = [r["text"] for rows in splits.values() for r in rows if r["text"]]
    single = texts[: args.single]
    print(f"ONNX part: {len(texts)} texts, {len(single)} at batch 1, {threads} threads; predictors taking turns")
    latencies = timed_single({n: (lambda b, c=c: c.predict_proba(b, batch_size=1)) for n, c in models.items()}, single)
    rates = timed_batch({n: (lambda b, c=c: c.predict_proba(b)) for n, c in models.items()}, texts)
    rows = []
    for name, classifier in models.items():
        f1 = split_f1(classifier, splits["test"])
        rows.append({"runtime": name, **latencies[name], "examples_per_s": rates[name], "test_weighted_f1": f1,
                     "model_mb": model_mb(run, name)})  # fmt: skip
    base = rows[0]
    for row in rows:
        row["p50_speedup_vs_torch_fp32"] = base["p50_ms"] / row["p50_ms"]
        row["throughput_vs_torch_fp32"] = row["examples_per_s"] / base["examples_per_s"]
    return {"run": str(run), "texts": len(texts), "single": len(single), "threads": threads, "rows": rows,
            "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__}}  # fmt: skip


PARTS = {"gguf": gguf_part, "onnx": onnx_part}


def table(rows: list[dict]) -> str:
    if "p50_ms" in rows[0]:
        lines = ["| runtime | p50 ms (batch 1) | examples/s (batched) | test weighted F1 | MB | p50 vs torch fp32 | "
                 "throughput vs torch fp32 |", "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        lines += [f"| {r['runtime']} | {r['p50_ms']:.1f} | {r['examples_per_s']:.0f} | {r['test_weighted_f1']:.3f} "
                  f"| {r['model_mb']:.0f} | {r['p50_speedup_vs_torch_fp32']:.2f}x "
                  f"| {r['throughput_vs_torch_fp32']:.2f}x |" for r in rows]  # fmt: skip
        return "\n".join(lines)
    lines = ["| runtime | clients | tokens | wall s | tokens/s | vs serve |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['runtime']} | {r['clients']} | {r['tokens']} | {r['seconds']:.1f} | {r['tokens_per_s']:.1f} | "
              f"{r['vs_serve']:.2f}x |" for r in rows]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=[*PARTS, "all"], default="all")
    parser.add_argument("--run", default=None, help="a chat run with an adapter (default: train one for 2 steps)")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="llama.cpp threads")
    parser.add_argument("--classifier-run", default="runs/review-classify", help="onnx part: a classifier run")
    parser.add_argument("--single", type=int, default=200, help="onnx part: texts timed at batch 1")
    args = parser.parse_args()
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    for name, part in PARTS.items():
        if args.part in (name, "all"):
            began = time.perf_counter()
            results[name] = part(args) | {"measured_at": time.strftime("%Y-%m-%d %H:%M"),
                                          "benchmark_seconds": time.perf_counter() - began}  # fmt: skip
            print(table(results[name]["rows"]))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
