"""The CUDA paths in one short run, for a machine with a GPU: what CI (CPU only) cannot exercise.

    python benchmarks/gpu_check.py --base DIR --out DIR [--steps 12] [--random-base-from CONFIG_DIR]

Each step runs as its own process, the way a user runs it, on the base at ``--base`` (any local HF model
directory; ``--random-base-from`` first writes one there: the architecture and tokenizer of CONFIG_DIR with seeded
random weights, for a machine that cannot fetch or receive real weights):

1. ``adapterlab train`` bf16 LoRA on one GPU, alone (its tokens/s is the 1-GPU training figure);
2. QLoRA (NF4 through bitsandbytes on CUDA);
3. ``adapterlab train --nproc N`` (DDP over NCCL), when the machine has N >= 2 GPUs;
4. ``accelerate launch`` with each shipped config file (``configs/accelerate/``: FSDP2, FSDP1 + QLoRA, DeepSpeed
   ZeRO-2, ZeRO-3) on every GPU (``--num_processes`` = GPUs; one GPU still starts the sharded engine: NCCL, the
   wrapping, the sharded checkpoints and the gathered adapter);
5. ``adapterlab eval`` on the GPU (transformers backend), and ``adapterlab serve`` with two adapters on one base:
   8 clients, each adapter asked by name;
6. ``resume-*``: bf16 LoRA, FSDP2 and ZeRO-2 runs killed (the whole process group, SIGKILL) once checkpoint 4 is
   complete, then ``--resume``d: each must finish from that checkpoint in its engine's own format;
7. ``raw-speed``: the same LoRA model in plain PyTorch + PEFT, no Trainer: ms per training step (8 x 320 tokens)
   and per generated token (16 prompts), with a profiler table of one step; set beside step 1's tokens/s it
   says how much of a training step is the model and how much is around it.

Steps 2-4 and 6 run at the same time (one GPU has room for all of them; their speed is not the point). Each
training is checked: the run finished, on CUDA, with a plain PEFT adapter file and a validation loss below the
base's. Writes ``OUT/gpu_check.json`` (per step: ok, seconds, figures or the error's tail) and ``OUT/logs/``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = "recipes/support-tickets.yaml"
PY = sys.executable
CONFIGS = {  # step name -> (config file, extra overrides)
    "fsdp2": ("fsdp.yaml", []),
    "fsdp1-qlora": ("fsdp-qlora.yaml", ["model.quantization=4bit", "train.precision=bf16"]),
    "deepspeed-zero2": ("deepspeed-zero2.yaml", []),
    "deepspeed-zero3": ("deepspeed-zero3.yaml", []),
    # DoRA and a trained whole module: the base's loss switches them off by PEFT's flag (not scaling), unrun on a GPU
    "fsdp2-dora": ("fsdp.yaml", ["lora.dora=true", "lora.modules_to_save=[norm]"]),
}


def random_base(config_dir: Path, target: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(config_dir)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(config_dir).save_pretrained(target)
    for extra in ("generation_config.json", "chat_template.jinja"):
        if (config_dir / extra).is_file():
            (target / extra).write_bytes((config_dir / extra).read_bytes())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def execute(name: str, command: list[str], logs: Path, timeout: float) -> dict:
    log = logs / f"{name}.log"
    began = time.perf_counter()
    with log.open("w") as handle:
        try:
            rc = subprocess.run(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    return {"rc": rc, "seconds": round(time.perf_counter() - began, 1), "log": str(log)}


def train_command(base: Path, runs: Path, name: str, steps: int, extra: list[str]) -> list[str]:
    return ["-m", "adapterlab", "--debug", "train", RECIPE, f"model.base={base}", f"output_dir={runs}", f"name={name}",
            f"train.max_steps={steps}", f"train.save_every={max(1, steps // 2)}", f"train.eval_every={steps}",
            "--overwrite", *extra]  # fmt: skip


def kill_and_resume(name: str, prefix: list[str], base: Path, runs: Path, steps: int, extra: list[str], logs: Path,
                    timeout: float) -> dict:  # fmt: skip
    """Train; once a checkpoint at step 4 or later is complete, kill every process of the run at once (a crash, a
    preempted node), then ``--resume``: the run must finish from that checkpoint."""
    from adapterlab.training import checkpoints

    command = prefix + train_command(base, runs, name, steps, [*extra, "train.save_every=2"])
    began = time.perf_counter()
    killed_at = None
    with (logs / f"{name}.log").open("w") as handle:
        process = subprocess.Popen(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while process.poll() is None and time.monotonic() < deadline:
            latest = checkpoints.latest_complete(runs / name / "checkpoints")
            if latest is not None and checkpoints.step_of(latest) >= 4:
                os.killpg(process.pid, signal.SIGKILL)
                killed_at = latest.name
                break
            time.sleep(0.2)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    if killed_at is None:
        return {"ok": False, "error": "the run ended or ran out of time before a checkpoint at step 4 was complete",
                "log": tail(logs / f"{name}.log")}  # fmt: skip
    resumed = execute(f"{name}-resumed", [c for c in command if c != "--overwrite"] + ["--resume"], logs, timeout)
    result = check_training(resumed, runs / name)
    summary_file = runs / name / "summary.json"
    resumed_from = json.loads(summary_file.read_text()).get("resumed_from") if summary_file.is_file() else None
    if result.get("ok") and not str(resumed_from).endswith(killed_at):
        result |= {"ok": False, "problems": [*result.get("problems", []), f"resumed from {resumed_from}"]}
    return result | {"killed_at": killed_at, "resumed_from": resumed_from,
                     "seconds": round(time.perf_counter() - began, 1)}  # fmt: skip


def check_training(result: dict, run: Path) -> dict:
    summary_file = run / "summary.json"
    if result["rc"] != 0 or not summary_file.is_file():
        return result | {"ok": False, "error": tail(Path(result["log"]))}
    summary = json.loads(summary_file.read_text())
    keep = ("device", "precision", "steps", "train_tokens_per_s", "train_runtime_s", "base_val_loss", "val_loss",
            "processes", "global_batch", "trainable_params")  # fmt: skip
    figures = {k: summary.get(k) for k in keep}
    checkpoints = sorted(p.name for p in run.glob("checkpoints/*/*"))[:20]
    problems = []
    if summary.get("device") != "cuda":
        problems.append(f"device {summary.get('device')}")
    if not (run / "adapter" / "adapter_model.safetensors").is_file():
        problems.append("no adapter/adapter_model.safetensors")
    if not (summary.get("val_loss") or 1e9) < (summary.get("base_val_loss") or 0):
        problems.append("validation loss not below the base's")
    text = Path(result["log"]).read_text(errors="replace")
    if "which accelerate runs only on GPUs" in text:
        problems.append("accelerate fell back to plain data parallel")
    return result | {"ok": not problems, "problems": problems, "summary": figures, "checkpoint_files": checkpoints}


def tail(log: Path, chars: int = 2500) -> str:
    return log.read_text(errors="replace")[-chars:] if log.is_file() else ""


def serve_two(base_runs: list[Path], logs: Path, clients: int = 8, prompts: int = 16) -> dict:
    import httpx

    port = free_port()
    log = (logs / "serve.log").open("w")
    command = [
        PY,
        "-m",
        "adapterlab",
        "serve",
        *map(str, base_runs),
        "--port",
        str(port),
        "--max-batch",
        "8",
        "--no-ui",
    ]
    server = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if server.poll() is not None:
                return {"ok": False, "error": tail(logs / "serve.log")}
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        models = [m["id"] for m in httpx.get(f"{url}/v1/models", timeout=10).json()["data"]]
        names = [run.name for run in base_runs]
        answers: dict[str, list] = {n: [] for n in names}
        errors: list[str] = []

        def client(index: int) -> None:
            with httpx.Client(timeout=300) as http:
                for i in range(index, prompts, clients):
                    model = names[i % len(names)]
                    ask = f"My laptop (ticket {i}) will not connect to the VPN."
                    body = {"model": model, "max_tokens": 32, "temperature": 0,
                            "messages": [{"role": "user", "content": ask}]}  # fmt: skip
                    response = http.post(f"{url}/v1/chat/completions", json=body)
                    if response.status_code != 200:
                        errors.append(f"{model}: {response.status_code} {response.text[:300]}")
                        continue
                    data = response.json()
                    answers[model].append((data["model"], data["usage"]["completion_tokens"]))

        began = time.perf_counter()
        threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - began
        tokens = sum(t for replies in answers.values() for _, t in replies)
        ok = not errors and all(
            len(a) == prompts // len(names) and all(m == n for m, _ in a) for n, a in answers.items()
        )
        return {"ok": ok, "models": models, "replies": {n: len(a) for n, a in answers.items()}, "errors": errors[:5],
                "seconds": round(seconds, 2), "completion_tokens": tokens,
                "tokens_per_s": round(tokens / seconds, 1)}  # fmt: skip
    except Exception as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}", "log": tail(logs / "serve.log")}
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def environment() -> dict:
    import importlib.metadata as md

    import torch

    versions = {}
    for package in ("torch", "transformers", "peft", "trl", "accelerate", "bitsandbytes", "deepspeed", "datasets"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            versions[package] = None
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return {"gpus": gpus, "cuda": torch.version.cuda, "bf16": bf16, "versions": versions}


def raw_speed(base: Path, steps: int = 10) -> dict:
    """The model alone: bf16 + LoRA r=16 on all linear layers (the recipe's), AdamW, 8 x 320 random tokens."""
    import torch
    from peft import LoraConfig, get_peft_model
    from torch.profiler import ProfilerActivity, profile
    from transformers import AutoModelForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16).to(device)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(100, 40000, (8, 320), device=device)

    def step() -> None:
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    def synchronize() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(3):
        step()
    synchronize()
    began = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize()
    step_ms = (time.perf_counter() - began) / steps * 1000
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        step()
        synchronize()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)
    model.eval()
    prompts = torch.randint(100, 40000, (16, 64), device=device)
    new = 48
    with torch.inference_mode():
        model.generate(input_ids=prompts, max_new_tokens=4, min_new_tokens=4, do_sample=False)
        synchronize()
        began = time.perf_counter()
        model.generate(input_ids=prompts, max_new_tokens=new, min_new_tokens=new, do_sample=False)
        synchronize()
    token_ms = (time.perf_counter() - began) / new * 1000
    return {"ok": True, "device": device, "train_step_ms": round(step_ms, 1),
            "train_tokens_per_s": round(8 * 320 / step_ms * 1000), "generate_ms_per_token_batch16": round(token_ms, 2),
            "profile_one_step": table}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--random-base-from", type=Path)
    parser.add_argument("--timeout", type=float, default=400, help="seconds per step")
    parser.add_argument(
        "--only",
        help="comma-separated step names (lora-bf16, qlora, fsdp2, fsdp1-qlora, deepspeed-zero2, deepspeed-zero3, "
        "fsdp2-dora, resume-lora, resume-fsdp2, resume-deepspeed-zero2, eval, serve, raw-speed); all by default",
    )
    parser.add_argument("--raw-speed-only", action="store_true", help=argparse.SUPPRESS)  # the step's own process
    args = parser.parse_args()
    if args.raw_speed_only:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "raw_speed.json").write_text(json.dumps(raw_speed(args.base)))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    logs = args.out / "logs"
    logs.mkdir(exist_ok=True)
    runs = args.out / "runs"
    report: dict = {"environment": environment(), "steps": {}}
    out_json = args.out / "gpu_check.json"

    def save() -> None:
        out_json.write_text(json.dumps(report, indent=2))

    if args.random_base_from:
        began = time.perf_counter()
        random_base(args.random_base_from, args.base)
        report["random_base_seconds"] = round(time.perf_counter() - began, 1)
    gpus = len(report["environment"]["gpus"])
    save()

    wanted = set(args.only.split(",")) if args.only else None

    def chosen(step: str) -> bool:
        return wanted is None or step in wanted

    # 1. bf16 LoRA alone: the 1-GPU training figure.
    name = "lora-bf16"
    if chosen(name):
        result = execute(name, [PY, *train_command(args.base, runs, name, args.steps, [])], logs, args.timeout)
        report["steps"][name] = check_training(result, runs / name)
        save()

    # 2-4 at the same time.
    jobs: dict[str, list[str]] = {
        "qlora": [PY, *train_command(args.base, runs, "qlora", args.steps, ["model.quantization=4bit"])]
    }
    if gpus >= 2:
        jobs[f"ddp-nccl-{gpus}"] = [
            PY,
            *train_command(args.base, runs, f"ddp-nccl-{gpus}", args.steps, ["--nproc", str(gpus)]),
        ]
    else:
        report["steps"]["ddp-nccl"] = {"ok": None, "skipped": "one GPU: NCCL refuses two ranks on one device"}
    for name, (config, extra) in CONFIGS.items():
        launch = [PY, "-m", "accelerate.commands.launch", "--config_file", f"configs/accelerate/{config}",
                  "--num_processes", str(max(gpus, 1)), "--main_process_port", str(free_port())]  # fmt: skip
        jobs[name] = launch + train_command(args.base, runs, name, args.steps, extra)
    work = {n: (lambda n=n, c=c: check_training(execute(n, c, logs, args.timeout), runs / n))
            for n, c in jobs.items() if chosen(n)}  # fmt: skip
    accelerate = {name: [PY, "-m", "accelerate.commands.launch", "--config_file", f"configs/accelerate/{config}",
                         "--num_processes", str(max(gpus, 1)), "--main_process_port", str(free_port())]
                  for name, (config, _) in CONFIGS.items()}  # fmt: skip
    for name, prefix in (("resume-lora", [PY]), ("resume-fsdp2", accelerate["fsdp2"]),
                         ("resume-deepspeed-zero2", accelerate["deepspeed-zero2"])):  # fmt: skip
        if chosen(name):
            work[name] = lambda n=name, p=prefix: kill_and_resume(n, p, args.base, runs, args.steps, [], logs,
                                                                  args.timeout)  # fmt: skip
    results: dict[str, dict] = {}
    threads = [threading.Thread(target=lambda n=n, f=f: results.__setitem__(n, f())) for n, f in work.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    report["steps"].update(results)
    save()

    # 5. eval and serve on the GPU.
    trained = [runs / n for n in ("lora-bf16", "fsdp2", "deepspeed-zero3", "deepspeed-zero2", "fsdp1-qlora")
               if report["steps"].get(n, {}).get("ok")]  # fmt: skip
    if trained and chosen("eval"):
        command = [PY, "-m", "adapterlab", "eval", str(trained[0]), "eval.max_examples=16", "eval.max_new_tokens=48",
                   "eval.metrics=[rouge,length]"]  # fmt: skip
        result = execute("eval", command, logs, args.timeout)
        report_file = trained[0] / "eval" / "report.json"
        result["ok"] = result["rc"] == 0 and report_file.is_file()
        if result["ok"]:
            evaluation = json.loads(report_file.read_text())
            result["generation"] = evaluation.get("generation")
            result["precision"] = evaluation.get("precision")
        else:
            result["error"] = tail(logs / "eval.log")
        report["steps"]["eval"] = result
        save()
    if len(trained) >= 2 and chosen("serve"):
        report["steps"]["serve-two-adapters"] = serve_two(trained[:2], logs)
    save()
    if chosen("raw-speed"):  # in its own process: the GPU's memory as a fresh user would find it
        command = [PY, str(Path(__file__).resolve()), "--base", str(args.base), "--out", str(args.out),
                   "--raw-speed-only"]  # fmt: skip
        result = execute("raw-speed", command, logs, args.timeout)
        raw = args.out / "raw_speed.json"
        result |= json.loads(raw.read_text()) if result["rc"] == 0 and raw.is_file() else {"ok": False,
                  "error": tail(logs / "raw-speed.log")}  # fmt: skip
        report["steps"]["raw-speed"] = result
        save()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
