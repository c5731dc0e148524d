"""``--format merged``: the adapter merged into a full-precision copy of its base, as a plain transformers model.

The task builds the merged model (``Task.merged_model``): LoRA / DoRA merged into fp32, bf16 or fp16 weights; a
QLoRA adapter's 4-bit base is de-quantised first (the weights it was trained against, never a re-quantised
merge). Saved as safetensors (sharded above 2 GB) with the tokenizer and chat template, a generation config whose
end-of-sequence ids are the adapter's stop tokens, and, for classifiers, the label map in the config and the
cleaning steps in ``adapterlab-export.json``. It loads with ``AutoModelForCausalLM`` /
``AutoModelForSequenceClassification`` and needs no PEFT.

Parity (transformers): teacher-forced log-probabilities of the adapter's greedy continuations for a generative
adapter, class probabilities and labels on test texts for a classifier.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adapterlab.runs import read_jsonl, write_json
from adapterlab.stages.export import ExportJob
from adapterlab.stages.export import parity as p

# Largest |difference| of a class probability between the classifier and its merged export, per precision.
PROBABILITY_TOLERANCE = {"fp32": 1e-4, "fp16": 5e-3, "bf16": 3e-2}


def export_dtype(job: ExportJob) -> str:
    """``--dtype auto``: the dtype the base declares when it is a 16-bit one, else fp32."""
    wanted = job.options.get("dtype") or "auto"
    if wanted != "auto":
        return wanted
    from transformers import AutoConfig

    from adapterlab.models import adapter_base

    declared = str(getattr(AutoConfig.from_pretrained(adapter_base(job.info)), "dtype", "") or "")
    return {"torch.bfloat16": "bf16", "bfloat16": "bf16", "torch.float16": "fp16", "float16": "fp16"}.get(
        declared, "fp32"
    )


class MergedExporter:
    name = "merged"

    def write(self, job: ExportJob) -> list[Path]:
        dtype = export_dtype(job)
        job.options["dtype"] = dtype
        model, tokenizer = job.task.merged_model(job.info, dtype)
        model.save_pretrained(str(job.folder), safe_serialization=True, max_shard_size="2GB")
        tokenizer.save_pretrained(str(job.folder))
        write_json(job.folder / "adapterlab-export.json", {
            "format": "merged", "dtype": dtype, "task": job.info.task, "base_model": job.info.base_model.spec,
            "adapter": str(job.info.path), "data_fingerprint": job.info.data_fingerprint,
            **{k: job.info.task_info[k] for k in ("labels", "clean", "text_columns", "max_tokens", "truncation",
                                                  "prompt", "shipped", "weights", "encoder_weight")
                                                  if k in job.info.task_info},
        })  # fmt: skip
        return sorted(p for p in job.folder.iterdir() if p.is_file())

    def check(self, job: ExportJob) -> dict[str, Any]:
        if job.task.generative:
            return generative_parity(job, load_merged_causal(job.folder, job.options["dtype"]))
        return classifier_parity(job)

    def readme(self, job: ExportJob) -> str:
        auto = "AutoModelForCausalLM" if job.task.generative else "AutoModelForSequenceClassification"
        lines = [
            f"# {job.run.root.name}: merged {job.options['dtype']} weights",
            "",
            f"The adapter of `{job.info.path}` merged into its base ({job.info.base_model.spec}); no PEFT needed.",
            "`parity.json` holds the comparison with the adapter.",
            "",
            "```python",
            f"from transformers import AutoTokenizer, {auto}",
            "",
            f'model = {auto}.from_pretrained("{job.run.export_dir("merged")}")',
            f'tokenizer = AutoTokenizer.from_pretrained("{job.run.export_dir("merged")}")',
            "```",
            "",
        ]
        if job.task.generative:
            lines += [
                "The chat template and stop tokens travel with it: `tokenizer.apply_chat_template(...)` renders",
                "prompts as in training, and `model.generate` stops at the adapter's end-of-turn token. Any server",
                "that loads Hugging Face directories serves it, e.g. `vllm serve <this folder>`.",
            ]
        else:
            lines += [
                "Clean texts as in training before classifying them: the steps are in `adapterlab-export.json`",
                "(`clean`); `config.json` holds the label map (`id2label`).",
            ]
        return "\n".join(lines) + "\n"


def load_merged_causal(folder: Path, dtype: str):
    from transformers import AutoModelForCausalLM

    from adapterlab.models import torch_dtype

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch_dtype(dtype), use_safetensors=True)
    return model.eval()


def parity_prompts(job: ExportJob, tokenizer, count: int) -> list[tuple[str, list[int]]]:
    """The golden prompts stored with the adapter, then the test split's first prompts, as token ids."""
    from adapterlab.rendering import encode_prompt

    messages = [(g["id"], g["messages"]) for g in job.info.task_info.get("golden", [])]
    test = job.run.split_file("test")
    if test.is_file():
        messages += [(r["id"], r["messages"]) for r in read_jsonl(test)[:count]]
    return [(str(case_id), encode_prompt(tokenizer, m)) for case_id, m in messages]


def reference_cases(job: ExportJob):
    """The adapter (PEFT on its base, fp32) and its greedy continuations of the parity prompts."""
    from adapterlab.models import keep_4bit_layers_differentiable, load_with_adapter

    model, tokenizer = load_with_adapter(job.info, "fp32")
    if job.info.model.quantization == "4bit":
        # bitsandbytes' CPU inference layout is a speed-up we do not need here, and it breaks layers narrower than
        # its block size; the plain 4-bit path computes exactly what training computed.
        keep_4bit_layers_differentiable(model)
    prompts = parity_prompts(job, tokenizer, int(job.options.get("cases") or 8))
    return model, tokenizer, p.greedy_cases(model, tokenizer, prompts)


def generative_parity(job: ExportJob, exported) -> dict[str, Any]:
    """The adapter and a transformers export score the same continuations; figures within the dtype's bounds."""
    model, _, cases = reference_cases(job)
    reference = [p.teacher_forced(model, c.prompt_ids, c.continuation_ids) for c in cases]
    scores = [p.teacher_forced(exported, c.prompt_ids, c.continuation_ids) for c in cases]
    result = p.compare(reference, scores, job.options["dtype"])
    result |= {"runtime": "transformers", "cases": [{"id": c.id, "adapter_greedy": c.reference_text} for c in cases]}
    return result | {"summary": p.summary_line(result)}


def classifier_parity(job: ExportJob) -> dict[str, Any]:
    """The classifier (adapter, fp32) and the merged export label the same test texts alike. The merged model is
    the encoder: when the run ships TF-IDF mixed in (``shipped`` in the metadata), only the encoder's part is
    compared (the TF-IDF model stays with the adapter and the ONNX export)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from adapterlab.models import torch_dtype
    from adapterlab.tasks.classify.infer import Classifier

    texts = classifier_texts(job)
    reference = Classifier.load(job.info, "fp32", merge=False)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(job.folder), dtype=torch_dtype(job.options["dtype"]), use_safetensors=True
    ).eval()
    exported = Classifier(model, AutoTokenizer.from_pretrained(str(job.folder)), reference.meta)
    a, b = reference.encoder_proba(texts), exported.encoder_proba(texts)
    return probability_parity(a, b, job.options["dtype"], "transformers")


def classifier_texts(job: ExportJob, count: int = 64) -> list[str]:
    rows = read_jsonl(job.run.split_file("test")) if job.run.split_file("test").is_file() else []
    texts = [r["text"] for r in rows[:count] if r.get("text")]
    return texts or ["a short text to classify"]


def probability_parity(reference, exported, dtype: str, runtime: str) -> dict[str, Any]:
    import numpy as np

    diff = float(np.abs(reference - exported).max()) if len(reference) else 0.0
    same = int((reference.argmax(axis=1) == exported.argmax(axis=1)).sum())
    bound = PROBABILITY_TOLERANCE.get(dtype, 3e-2)
    result = {"passed": diff <= bound and same == len(reference), "runtime": runtime, "texts": len(reference),
              "labels_equal": same, "max_abs_probability_diff": diff,
              "tolerance": {"max_abs_probability_diff": bound, "labels_equal": "all"}}  # fmt: skip
    summary = f"labels equal on {same}/{len(reference)} texts, max |d probability| {diff:.3g} (<= {bound})"
    return result | {"summary": summary}
