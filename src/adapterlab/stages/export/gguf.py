"""``--format gguf``: the adapter for llama.cpp and Ollama, checked by llama.cpp itself.

Writes into ``RUN/export/gguf/``:

- ``model-f16.gguf`` (or ``model-bf16.gguf``): the adapter merged into its base (``Task.merged_model``, fp32), saved
  as safetensors with the adapter's tokenizer and converted by llama.cpp's own ``convert_hf_to_gguf.py``, so the
  GGUF carries the tokenizer, the chat template and the end-of-turn token as llama.cpp expects them;
- ``model-q8_0.gguf``, ``model-q4_0.gguf`` ... one per ``--quant``, quantised from that file in pure Python
  (:mod:`.gguf_quant`);
- ``base-f16.gguf`` + ``adapter-lora-f16.gguf``: the base alone and the adapter as a GGUF LoRA for ``--lora``
  (``convert_lora_to_gguf.py``); not for DoRA or ``modules_to_save`` adapters, which llama.cpp's LoRA cannot hold;
- ``Modelfile`` for Ollama, ``adapterlab-export.json``, and the driver's ``parity.json`` and ``README.md``.

Every weight is read from safetensors; nothing is unpickled. Parity: llama.cpp (:mod:`.llamacpp`) scores the
adapter's greedy continuations teacher-forced in every file (and in the base + LoRA pair), compared with the
adapter in transformers within the file type's tolerance; it also tokenises each prompt (equal token ids to the
adapter's tokenizer, or llama.cpp users would feed the model other tokens than training did) and writes its own
greedy replies beside the adapter's. The base GGUF alone is scored too: how far the adapter moved the model, the
scale against which a quantised file's error reads (a file whose error exceeds it cannot show the adapter's effect).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from adapterlab.console import console
from adapterlab.runs import write_json, write_text
from adapterlab.stages.export import ExportError, ExportJob, llamacpp
from adapterlab.stages.export.gguf_parity import Target, llama_cpp_parity, readme
from adapterlab.stages.export.gguf_quant import QUANTS

GGUF_TYPES = {"fp16": "f16", "bf16": "bf16"}
TOLERANCE = {"f16": "fp16", "bf16": "bf16", **{q: q for q in QUANTS}}


def gguf_type(job: ExportJob) -> str:
    """``--dtype``: f16 (fp16, and auto unless the base declares bf16) or bf16."""
    wanted = job.options.get("dtype") or "auto"
    if wanted == "auto":
        from adapterlab.stages.export.merged import export_dtype

        wanted = export_dtype(job)
        return "bf16" if wanted == "bf16" else "f16"
    if wanted not in GGUF_TYPES:
        raise ExportError(f"--dtype {wanted}: a GGUF export is written in fp16 or bf16 (or auto), then quantised")
    return GGUF_TYPES[wanted]


def requested_quants(job: ExportJob) -> list[str]:
    quants = list(dict.fromkeys(q.lower() for q in job.options.get("quant") or []))
    unknown = [q for q in quants if q not in QUANTS]
    if unknown:
        raise ExportError(
            f"--quant {unknown[0]}: choose from {', '.join(QUANTS)} (K-quants need llama.cpp's compiled "
            "llama-quantize; run it on model-f16.gguf)"
        )
    return quants


def lora_refusal(job: ExportJob) -> str | None:
    """Why llama.cpp's LoRA format cannot hold this adapter (the merged GGUF still can), or None."""
    config = json.loads((job.info.path / "adapter_config.json").read_text(encoding="utf-8"))
    if config.get("use_dora"):
        return "a DoRA adapter (llama.cpp's LoRA has no magnitude vectors)"
    if config.get("modules_to_save"):
        return "an adapter with modules_to_save (fully trained layers, not low-rank)"
    return None


def names(job: ExportJob) -> dict[str, str]:
    ftype = job.options["gguf_type"]
    return {"model": f"model-{ftype}.gguf", "base": f"base-{ftype}.gguf", "lora": f"adapter-lora-{ftype}.gguf"}


def targets(job: ExportJob) -> list[Target]:
    folder, ftype, files = job.folder, job.options["gguf_type"], names(job)
    found = [Target(files["model"], folder / files["model"], TOLERANCE[ftype])]
    found += [Target(f"model-{q}.gguf", folder / f"model-{q}.gguf", TOLERANCE[q]) for q in job.options["quant"]]
    if (folder / files["lora"]).is_file():
        pair = f"{files['base']} + {files['lora']}"
        found.append(Target(pair, folder / files["base"], TOLERANCE[ftype], folder / files["lora"]))
    return found


def save_hf_models(job: ExportJob, tmp: Path):
    """The merged model and the base alone (de-quantised for QLoRA), fp32 safetensors with the adapter's tokenizer."""
    from adapterlab.models import load_with_adapter

    merged, tokenizer = job.task.merged_model(job.info, "fp32")
    merged.save_pretrained(str(tmp / "merged"), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp / "merged"))
    del merged
    # The same loading path as the merge, adapter removed: exactly the weights the LoRA applies to.
    with_adapter, _ = load_with_adapter(job.info, "fp32", dequantized=True)
    with_adapter.unload().save_pretrained(str(tmp / "base"), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp / "base"))
    return tmp / "merged", tmp / "base", tokenizer


class GGUFExporter:
    name = "gguf"

    def write(self, job: ExportJob) -> list[Path]:
        job.options |= {"gguf_type": gguf_type(job), "quant": requested_quants(job)}
        llamacpp.require()  # before minutes of work, the one-line install hint
        ftype, files, folder = job.options["gguf_type"], names(job), job.folder
        refusal = lora_refusal(job)
        with tempfile.TemporaryDirectory(prefix=".gguf-hf-", dir=folder.parent) as tmp:
            console.print("Merging the adapter and saving the merged model and its base as safetensors ...")
            merged_dir, base_dir, tokenizer = save_hf_models(job, Path(tmp))
            console.print(f"Converting both to {ftype} GGUF with llama.cpp's converter ...")
            llamacpp.convert_models([(merged_dir, folder / files["model"]), (base_dir, folder / files["base"])], ftype)
            if refusal is None:
                console.print("Converting the adapter to a GGUF LoRA ...")
                llamacpp.convert_lora(job.info.path, base_dir, folder / files["lora"], ftype)
            else:
                console.print(f"[yellow]No GGUF LoRA:[/yellow] {refusal}; the merged GGUF carries the adapter")
        from adapterlab.stages.export.gguf_quant import quantize
        from adapterlab.stages.export.ollama import modelfile

        for quant in job.options["quant"]:
            quantize(folder / files["model"], folder / f"model-{quant}.gguf", quant)
        write_text(folder / "Modelfile", modelfile(files["model"], tokenizer, job.info.task_info))
        write_json(folder / "adapterlab-export.json", {
            "format": "gguf", "type": ftype, "quant": job.options["quant"], "files": files,
            "lora": refusal or "written", "base_model": job.info.base_model.spec, "adapter": str(job.info.path),
            "stop": job.info.task_info.get("stop"), "system_prompt": job.info.task_info["prompt"].get("system_prompt"),
        })  # fmt: skip
        return sorted(path for path in folder.iterdir() if path.is_file())

    def check(self, job: ExportJob) -> dict[str, Any]:
        result = llama_cpp_parity(job, targets(job), job.folder / names(job)["base"], threads())
        job.options["parity_result"] = result  # the README shows the figures
        return result

    def readme(self, job: ExportJob) -> str:
        return readme(job, names(job))


def threads() -> int:
    """Half the cores (at least one): llama.cpp spin-waits on cores another process is using."""
    return int(os.environ.get("ADAPTERLAB_LLAMA_CPP_THREADS") or max(1, (os.cpu_count() or 2) // 2))
