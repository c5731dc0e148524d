"""Serving throughput: ``adapterlab serve`` (continuous batching) vs plain ``generate()`` one at a time, one run.

    python benchmarks/serve_throughput.py [--prompts 32] [--max-tokens 64] [--clients 1,4,8] [--run PATH]

The same user messages (the first N support tickets of ``examples/data/support_tickets.csv``, rendered as
``Subject: {subject}\\n\\n{body}``), greedy decoding, the same reply budget, the same precision and stop tokens:

- ``generate()``: the peer, in this process: each prompt rendered with the chat template
  (``adapterlab.rendering.encode_prompt``) and ``model.generate`` on it alone, batch 1, one after the other.
- ``server``: ``adapterlab serve`` started as a subprocess (``--max-batch 8``), driven over HTTP by 1, 4 and 8
  concurrent clients (threads, one ``httpx.Client`` each); every client sends its share of the prompt list one
  request at a time, non-streamed, ``temperature: 0``. Generated tokens are the server's
  ``usage.completion_tokens``.
- ``server (stream)``: one more round at the largest client count with ``stream: true``; time to first token is
  measured per request, from sending it to the first non-empty content delta (p50 and p95 over the round).

Without ``--run`` the embedded default base (SmolLM2-135M-Instruct) is served as model ``base``; with
``--run runs/support-tickets`` the run's adapter is served (model name = the run directory's name) and the peer
loads the same base + adapter, with the adapter's tokenizer and default system prompt, as the server does.

Tokens/s = generated tokens / wall time of the round. Greedy replies of the server and of ``generate()`` may
differ slightly in bf16 (a batched, left-padded step rounds some logits differently, and a greedy decoder follows
the first different arg-max); how many replies are identical is counted per round.
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data" / "support_tickets.csv"
TEMPLATE = "Subject: {subject}\n\n{body}"


def read_prompts(count: int) -> list[list[dict[str, str]]]:
    with DATA.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if count > len(rows):
        raise SystemExit(f"--prompts {count}: {DATA.name} has only {len(rows)} tickets")
    return [[{"role": "user", "content": TEMPLATE.format(**row)}] for row in rows[:count]]


def served_name(run: str | None) -> str:
    if run is None:
        return "base"
    path = Path(run)
    return path.parent.name if path.name == "adapter" else path.name


# ------------------------------------------------------------------------------------------- the peer


def one_at_a_time(run: str | None, prompts: list[list[dict[str, str]]], max_tokens: int) -> dict:
    """``model.generate`` per prompt, loaded and prompted exactly as the server does it."""
    import torch

    from adapterlab.config import ModelConfig
    from adapterlab.generation import stop_token_ids
    from adapterlab.models import load_causal_lm, load_tokenizer, pick_precision, resolve_base
    from adapterlab.rendering import encode_prompt

    precision = pick_precision("auto")
    system_prompt = None
    if run is None:
        base = resolve_base("default")
        model = load_causal_lm(base, ModelConfig(base="default"), precision)
        tokenizer = load_tokenizer(base)
    else:
        from peft import PeftModel
        from transformers import AutoTokenizer

        from adapterlab.runs import AdapterInfo

        info = AdapterInfo.read(run)
        spec = info.base_model.spec
        model = load_causal_lm(resolve_base(spec), ModelConfig(base=spec), precision)
        model = PeftModel.from_pretrained(model, str(info.path))
        tokenizer = AutoTokenizer.from_pretrained(info.path)
        system_prompt = info.task_info.get("prompt", {}).get("system_prompt")
    model.eval()
    stops = stop_token_ids(tokenizer, model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device

    def generate(messages: list[dict[str, str]], budget: int) -> tuple[str, int]:
        if system_prompt and not any(m["role"] == "system" for m in messages):
            messages = [{"role": "system", "content": system_prompt}, *messages]
        ids = torch.tensor([encode_prompt(tokenizer, messages)], device=device)
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=budget,
                do_sample=False,
                eos_token_id=stops,
                pad_token_id=pad,
            )
        new = out[0, ids.shape[1] :].tolist()
        cut = next((i for i, t in enumerate(new) if t in stops), len(new))  # the stop token is not a reply token
        return tokenizer.decode(new[:cut], skip_special_tokens=True), cut

    generate(prompts[0], 4)  # warm-up, untimed
    texts, tokens = [], 0
    began = time.perf_counter()
    for messages in prompts:
        text, count = generate(messages, max_tokens)
        texts.append(text)
        tokens += count
    seconds = time.perf_counter() - began
    return {"texts": texts, "tokens": tokens, "seconds": seconds, "precision": precision}


# ------------------------------------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run: str | None, port: int, max_batch: int, log_file, *options: str) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("adapterlab")
    command = [str(exe), "serve", *([run] if run else ["--base", "default"])]
    command += ["--port", str(port), "--max-batch", str(max_batch), "--no-ui", *options]
    env = {k: v for k, v in os.environ.items() if k != "ADAPTERLAB_API_KEY"}  # no key: the benchmark sends none
    return subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def wait_ready(url: str, process: subprocess.Popen, log_path: Path, timeout: float = 600) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            response = httpx.get(f"{url}/health", timeout=5)
            if response.status_code == 200:
                return
            if response.json().get("status") == "error":
                raise SystemExit(f"the server could not load: {response.json().get('error')}")
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the server was not ready after {timeout:.0f} s:\n{log_path.read_text()[-3000:]}")


def stop_server(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()  # SIGTERM: drains (nothing is in flight by now) and exits
        try:
            process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# ------------------------------------------------------------------------------------------- the clients


def ask(client, url: str, body: dict) -> dict:
    """One request; the reply text, its generated tokens and, when streamed, the time to the first token."""
    began = time.perf_counter()
    if not body.get("stream"):
        response = client.post(f"{url}/v1/chat/completions", json=body)
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:500]}")
        data = response.json()
        return {
            "text": data["choices"][0]["message"]["content"],
            "tokens": data["usage"]["completion_tokens"],
            "ttft": None,
            "latency": time.perf_counter() - began,
        }
    text, tokens, ttft = "", None, None
    with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {response.read().decode()[:500]}")
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            payload = line.removeprefix("data: ")
            if payload == "[DONE]":
                break
            chunk = json.loads(payload)
            if "error" in chunk:
                raise RuntimeError(f"stream error: {chunk['error']}")
            for choice in chunk.get("choices") or []:
                delta = choice.get("delta", {}).get("content")
                if delta:
                    ttft = ttft if ttft is not None else time.perf_counter() - began
                    text += delta
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    if tokens is None:
        raise RuntimeError("the stream ended without a usage chunk")
    return {"text": text, "tokens": tokens, "ttft": ttft, "latency": time.perf_counter() - began}


def drive(url: str, model: str, prompts: list, clients: int, max_tokens: int, stream: bool = False) -> dict:
    """``clients`` threads, each sending its share of the prompts one request at a time; wall time of the round."""
    import httpx

    results: list[dict | None] = [None] * len(prompts)
    errors: list[BaseException] = []
    start = threading.Barrier(clients + 1)

    def client_loop(share: list[int]) -> None:
        with httpx.Client(timeout=httpx.Timeout(900.0)) as client:
            start.wait()
            try:
                for i in share:
                    body = {"model": model, "messages": prompts[i], "max_tokens": max_tokens, "temperature": 0}
                    if stream:
                        body |= {"stream": True, "stream_options": {"include_usage": True}}
                    results[i] = ask(client, url, body)
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

    threads = [
        threading.Thread(target=client_loop, args=(list(range(c, len(prompts), clients)),)) for c in range(clients)
    ]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - began
    if errors:
        raise SystemExit(f"a client failed ({clients} clients, stream={stream}): {errors[0]}")
    return {"results": results, "seconds": seconds, "tokens": sum(r["tokens"] for r in results)}


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


# ------------------------------------------------------------------------------------------- report


def environment(precision: str) -> dict:
    import httpx
    import peft
    import torch
    import transformers

    import adapterlab

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "precision": precision,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "httpx": httpx.__version__,
        "adapterlab": adapterlab.__version__,
        "load_average_at_start": os.getloadavg(),
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| mode | clients | requests | generated tokens | wall s | tokens/s | vs generate() "
        "| identical to generate() |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['clients']} | {r['requests']} | {r['tokens']} | {r['seconds']:.1f} | "
            f"{r['tokens_per_s']:.1f} | {r['ratio']:.2f}x | {r['identical']}/{r['requests']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--clients", default="1,4,8")
    parser.add_argument("--run", default=None, help="serve this run's adapter instead of the plain default base")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    clients = [int(c) for c in args.clients.split(",") if c.strip()]
    if not clients or min(clients) < 1:
        raise SystemExit("--clients: give positive numbers, e.g. 1,4,8")

    prompts = read_prompts(args.prompts)
    busy = os.getloadavg()[0]
    if busy > 0.5 * (os.cpu_count() or 1):
        print(
            f"warning: 1-minute load average {busy:.1f} on {os.cpu_count()} cores; other work will distort the timings"
        )
    model = served_name(args.run)

    print(f"generate(): {len(prompts)} prompts one at a time, up to {args.max_tokens} new tokens ...", flush=True)
    peer = one_at_a_time(args.run, prompts, args.max_tokens)
    gc.collect()  # the peer's model is gone before the server starts
    env = environment(peer["precision"])
    peer_rate = peer["tokens"] / peer["seconds"]
    rows = [
        {
            "mode": "generate() one at a time",
            "clients": 1,
            "requests": len(prompts),
            "tokens": peer["tokens"],
            "seconds": peer["seconds"],
            "tokens_per_s": peer_rate,
            "ratio": 1.0,
            "identical": len(prompts),
        }
    ]
    print(f"  {peer['tokens']} tokens in {peer['seconds']:.1f} s = {peer_rate:.1f} tok/s", flush=True)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    rounds: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        log_path = Path(tmp) / "server.log"
        with log_path.open("w") as log_file:
            process = start_server(args.run, port, args.max_batch, log_file)
            try:
                began = time.perf_counter()
                wait_ready(url, process, log_path)
                print(f"server ready on port {port} after {time.perf_counter() - began:.1f} s", flush=True)
                drive(url, model, prompts[:1], 1, 4)  # warm-up, untimed
                plan = [(c, False) for c in clients] + [(max(clients), True)]
                for count, stream in plan:
                    key = f"{count}{'-stream' if stream else ''}"
                    rounds[key] = done = drive(url, model, prompts, count, args.max_tokens, stream)
                    done.update(clients=count, stream=stream)
                    rate = done["tokens"] / done["seconds"]
                    label = f"{count} client(s){' streamed' if stream else ''}"
                    speed = f"{rate:.1f} tok/s ({rate / peer_rate:.2f}x)"
                    print(f"  {label}: {done['tokens']} tokens in {done['seconds']:.1f} s = {speed}", flush=True)
            finally:
                stop_server(process)
            server_exit = process.returncode

    for done in rounds.values():
        texts = [r["text"] for r in done["results"]]
        rows.append(
            {
                "mode": "server, streamed" if done["stream"] else "server",
                "clients": done["clients"],
                "requests": len(texts),
                "tokens": done["tokens"],
                "seconds": done["seconds"],
                "tokens_per_s": done["tokens"] / done["seconds"],
                "ratio": done["tokens"] / done["seconds"] / peer_rate,
                "identical": sum(a.strip() == b.strip() for a, b in zip(texts, peer["texts"], strict=True)),
            }
        )
    streamed = rounds[f"{max(clients)}-stream"]
    ttfts = [r["ttft"] for r in streamed["results"] if r["ttft"] is not None]
    ttft = {
        "clients": max(clients),
        "requests": len(ttfts),
        "p50_s": percentile(ttfts, 50) if ttfts else None,
        "p95_s": percentile(ttfts, 95) if ttfts else None,
        "max_s": max(ttfts) if ttfts else None,
    }
    one = next((r for r in rows[1:] if r["clients"] == 1 and r["mode"] == "server"), None)

    summary = {
        "model": model,
        "run": args.run,
        "prompts": len(prompts),
        "max_tokens": args.max_tokens,
        "max_batch": args.max_batch,
        "clients": clients,
        "environment": env | {"load_average_at_end": os.getloadavg()},
        "rows": rows,
        "ttft": ttft,
        "identical_replies_1_client": one["identical"] if one else None,
        "server_exit_code": server_exit,
        "replies": {"generate": peer["texts"], **{k: [r["text"] for r in v["results"]] for k, v in rounds.items()}},
        "latencies_s": {k: [r["latency"] for r in v["results"]] for k, v in rounds.items()},
        "ttfts_s": ttfts,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "serve_throughput.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))

    print()
    machine = f"{env['cpu']} ({env['cpu_count']} cores, {env['torch_threads']} torch threads)"
    print(f"model `{model}`, {len(prompts)} prompts, up to {args.max_tokens} new tokens, greedy, {env['precision']}")
    print(f"machine: {machine}")
    print()
    print(table(rows))
    print()
    if ttft["p50_s"] is not None:
        print(
            f"time to first token at {ttft['clients']} clients (streamed, {ttft['requests']} requests): "
            f"p50 {ttft['p50_s'] * 1000:.0f} ms, p95 {ttft['p95_s'] * 1000:.0f} ms"
        )
    if one:
        print(
            f"server replies identical to generate() at 1 client: {one['identical']}/{one['requests']} "
            "(bf16 rounding in a differently shaped step can change a greedy arg-max)"
        )
    print(f"wrote {out / 'serve_throughput.json'}")


if __name__ == "__main__":
    main()
