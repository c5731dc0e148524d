"""What vLLM refuses in a LoRA adapter, checked from ``adapter_config.json`` before vLLM is started.

vLLM serves LoRA weights only: it refuses DoRA, a rank above its ``--max-lora-rank``, ``modules_to_save`` (a
trained ``lm_head`` or embeddings, or a classifier head) and bias terms, and says so with a 500 at the first
request that names the adapter. :func:`refusals` lists every reason for one adapter; :func:`check_adapters`
raises one line per refused adapter, so ``serve --engine vllm`` and ``eval.backend: vllm`` can refuse up front.
"""

from __future__ import annotations

import json
from pathlib import Path

from adapterlab.errors import ModelError

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
