"""The ``chat`` trainer: TRL's SFTTrainer on the prepared ``input_ids`` + ``completion_mask``, LoRA / DoRA / QLoRA.

TRL 1.x scores every position through a chunked, fused LM-head kernel that also computes entropy and top-1
accuracy; on a CPU (no Triton) it scores prompt and padding positions too and recomputes the logits in the
backward pass. :class:`CompletionSFTTrainer` uses :func:`adapterlab.training.losses.completion_loss`, which
projects the completion positions only: the same loss value at ~2x the step speed on the embedded model
(benchmarks/train_throughput.py). Everything else (collation, optimiser, scheduler, checkpoints, resume) is TRL's
and transformers' own. The prepared data is used as is: the trainer never re-tokenises.
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from peft.helpers import disable_input_dtype_casting
from transformers import Trainer
from trl import SFTTrainer

from adapterlab.console import console
from adapterlab.data.tokenized import load_tokenized
from adapterlab.errors import TrainingError
from adapterlab.generation import Decoding, TransformersGenerator, stop_token_ids
from adapterlab.memory import tune_cpu_memory
from adapterlab.runs import read_jsonl
from adapterlab.task import TrainContext
from adapterlab.training import distributed, packed_attention
from adapterlab.training.arguments import trainer_arguments
from adapterlab.training.callbacks import standard_callbacks
from adapterlab.training.distributed import GradientAveraging, sharded
from adapterlab.training.losses import completion_loss, scored_tokens
from adapterlab.training.progress import TrainingProgress
from adapterlab.training.samplers import SeededLengthGrouping


class CompletionSFTTrainer(TrainingProgress, GradientAveraging, SeededLengthGrouping, SFTTrainer):
    """Completion-only loss; logs ``num_tokens`` (non-padding tokens) and ``completion_tokens`` (scored)."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if sharded(self):
            # FSDP / DeepSpeed gather the weights in each wrapped module's forward, so the loss goes through the
            # model's own forward and loss (transformers' Trainer; the labels mask all but the completion). Not
            # TRL's: its fused LM head projects through lm_head's weight without calling lm_head, which FSDP2
            # (lm_head sharded together with the tied embeddings) does not follow: on a GPU the first evaluation
            # after training then failed (benchmarks/gpu_check.py).
            if model.training:
                self.progress["completion_tokens"] += scored_tokens(inputs)
            inputs = {**inputs, "use_cache": False}
            return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module  # the loss calls the decoder and head itself; GradientAveraging syncs the ranks
        # The Trainer leaves mixed precision to accelerate, which wraps ``model.forward`` in autocast; the loss
        # calls the decoder and the head directly, so it enters the same autocast itself. Without it the fp32
        # LoRA weights made every adapter matmul run in fp32 behind a cast of its input, off the bf16 units.
        with self.accelerator.autocast():
            # Under autocast PEFT's cast of every LoRA input to the fp32 adapter dtype is undone by autocast at
            # once (bf16 in, fp32 copy, bf16 copy): pure memory traffic. Without autocast it is needed.
            autocast = torch.is_autocast_enabled(inputs["input_ids"].device.type)
            with disable_input_dtype_casting(model, active=autocast):
                loss, scored = completion_loss(model, inputs, num_items_in_batch)
        if num_items_in_batch is not None and self.args.average_tokens_across_devices:
            # num_items_in_batch counts every rank's tokens and DDP averages the ranks' gradients: scale back up
            # so N processes take the step one process takes on the same global batch (as Trainer.compute_loss).
            loss = loss * self.accelerator.num_processes
        if model.training:
            self.progress["completion_tokens"] += scored
        return (loss, {"loss": loss}) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.model.training and "loss" in logs:
            # Every rank logs the training loss at the same step (the Trainer averages it over the ranks first), so
            # the ranks' counts are summed here: the log of N processes reads as the one process's would.
            counts = {"tokens": self.progress["tokens"], "completion_tokens": self.progress["completion_tokens"]}
            if self.args.world_size > 1:
                counts = distributed.sum_over_ranks(distributed.current(), counts)
            logs["num_tokens"] = int(counts["tokens"])
            logs["completion_tokens"] = int(counts["completion_tokens"])
        super().log(logs, start_time)


def sft_config(recipe, run, precision: str, has_val: bool, padding_free: bool = False):
    from trl import SFTConfig

    return SFTConfig(
        **trainer_arguments(recipe, run, precision, has_val, padded=not padding_free),
        max_length=None,  # prepare already truncated (and counted); TRL must not cut or filter again
        completion_only_loss=True,
        padding_free=padding_free,
        packing=False,
    )


def use_padding_free(recipe, model) -> bool:
    """Resolve ``train.padding_free`` for a loaded model, switching SDPA to packed per-sequence attention.

    ``auto`` packs when the attention can take packed rows without a (total x total) mask: flash-attention's
    varlen kernel, or SDPA through :mod:`adapterlab.training.packed_attention` for plain causal attention.
    """
    wanted = recipe.train.padding_free
    implementation = model.config._attn_implementation
    if implementation.startswith("flash_attention"):
        return wanted in ("auto", True)
    packable = (
        implementation == "sdpa"
        and packed_attention.supports_packed_attention(model.config)
        and model._can_set_attn_implementation()
    )
    if packable and wanted in ("auto", True):
        model.set_attn_implementation(packed_attention.register())
        return True
    if wanted is True:  # the model's own masks keep packed rows apart, at the cost of a full-size mask
        console.print(
            f"[yellow]warning:[/yellow] train.padding_free with {implementation} attention builds a mask over the "
            "whole packed batch; expect it to be slower than padded batches",
            soft_wrap=True,
        )
    return wanted is True


def build_trainer(ctx: TrainContext):
    from transformers import PrinterCallback

    from adapterlab.models import load_causal_lm, peft_lora_config

    recipe, run = ctx.recipe, ctx.run
    warn_if_unservable(recipe)
    data = load_tokenized(run.tokenized)
    if data["train"] is None:
        raise TrainingError(f"{run.data_report}: no training examples left after preparation")
    val = data["val"]
    tune_cpu_memory(recipe.train.keep_freed_memory)
    model = load_causal_lm(ctx.base, recipe.model, ctx.precision, training=True)
    padding_free = use_padding_free(recipe, model)
    args = sft_config(recipe, run, ctx.precision, has_val=val is not None, padding_free=padding_free)
    callbacks, guard = standard_callbacks(recipe, run, ctx.prepared, args.load_best_model_at_end)
    trainer = CompletionSFTTrainer(
        model=model,
        args=args,
        train_dataset=data["train"],
        eval_dataset=val,
        processing_class=ctx.tokenizer,
        peft_config=peft_lora_config(recipe.lora),
        callbacks=[*callbacks, *ctx.callbacks],
    )
    trainer.remove_callback(PrinterCallback)
    if len(trainer.train_dataset) != len(data["train"]):  # TRL filters rows it cannot learn from; we never should
        raise TrainingError(
            f"the trainer dropped {len(data['train']) - len(trainer.train_dataset)} prepared rows; "
            "this is a bug in adapterlab's preparation, please report it"
        )
    return trainer, guard


def warn_if_unservable(recipe) -> None:
    """vLLM serves LoRA weights only; an adapter that trains whole modules (lm_head, embeddings) is refused there."""
    full = [m for m in recipe.lora.modules_to_save if any(k in m for k in ("lm_head", "embed", "wte", "wpe"))]
    if full:
        console.print(
            f"[yellow]warning:[/yellow] lora.modules_to_save={full} trains these modules in full; such adapters "
            "work here and in transformers, but vLLM refuses them (it serves LoRA weights only)",
            soft_wrap=True,
        )


def evaluate_base(trainer, ctx: TrainContext, resume_from: Path | None) -> dict[str, float]:
    """Validation loss of the base model (adapter disabled) on the same split, once per run."""
    if trainer.eval_dataset is None:
        return {}
    if resume_from is not None and ctx.run.metrics.is_file():
        earlier = [r for r in read_jsonl(ctx.run.metrics) if "base_loss" in r]
        if earlier:
            return {k: v for k, v in earlier[0].items() if k.startswith("base_")}
    console.print("[dim]Validation loss of the base model ...[/dim]")
    with base_only(trainer):
        return trainer.evaluate(metric_key_prefix="base")


def base_only(trainer):
    """The adapter out of the model's outputs for the duration.

    One process: PEFT's ``disable_adapter``. Under FSDP or DeepSpeed (measured after training: see the train
    stage) the LoRA layers instead keep their forward, with every scaling set to 0 (``B(A(x)) * 0`` adds exactly
    nothing): that is the forward the in-training evaluations ran, while ``disable_adapter`` takes another path in
    each layer and switches the adapter weights' ``requires_grad`` off and on, which on a GPU failed under each
    engine (FSDP2, FSDP1 + QLoRA, ZeRO-3; ``benchmarks/gpu_check.py``). See :func:`adapter_switched_off`."""
    model = trainer.model
    if not sharded(trainer):
        return model.disable_adapter()
    return adapter_switched_off(model)


@contextmanager
def adapter_switched_off(model):
    """The base model's outputs from a PEFT model, without touching any ``requires_grad``.

    Plain LoRA layers: every scaling at 0. The others take their own switched-off path, by PEFT's flag set directly
    (``enable_adapters`` would switch the weights' ``requires_grad`` too): a LoRA variant's layer (DoRA rescales the
    base weight by its trained magnitude even at scaling 0), any other adapter layer, and a fully trained module
    (``lora.modules_to_save``, e.g. a trained ``lm_head``), which has no scaling at all."""
    from peft.tuners.lora import LoraLayer
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    scaled, flagged = [], []
    for module in model.modules():
        if isinstance(module, LoraLayer) and not getattr(module, "lora_variant", None):  # plain LoRA
            scaled.append((module, dict(module.scaling)))
        elif isinstance(module, BaseTunerLayer | AuxiliaryTrainingWrapper):
            flagged.append((module, module._disable_adapters))
    try:
        for module, scaling in scaled:
            module.scaling.update(dict.fromkeys(scaling, 0.0))
        for module, _ in flagged:
            module._disable_adapters = True
        yield
    finally:
        for module, scaling in scaled:
            module.scaling.update(scaling)
        for module, was in flagged:
            module._disable_adapters = was


def adapter_info(trainer, ctx: TrainContext) -> dict[str, Any]:
    """The prompt recipe, chat template, stop tokens and golden replies: everything parity checks need."""
    data, tokenizer, model = ctx.recipe.data, ctx.tokenizer, trainer.model
    with root_weights_gathered(trainer):
        golden = golden_outputs(model, tokenizer, ctx, ctx.recipe.train.golden_prompts, sharded(trainer))
    return {
        "prompt": data.prompt_info(),
        "id_column": data.id_column,
        "chat_template": tokenizer.chat_template,
        "stop": {"eos_token": tokenizer.eos_token, "token_ids": stop_token_ids(tokenizer, model)},
        "golden": golden,
        # What predict decodes with, as the evaluation did (generative/infer.py predict_decoding).
        "decoding": {"repetition_penalty": ctx.recipe.eval.repetition_penalty, "stop": list(ctx.recipe.eval.stop)},
    }


def root_weights_gathered(trainer):
    """FSDP1 keeps the weights outside the wrapped decoder layers (embeddings, final norm, head) in the root
    wrapper, which unshards them only in its own forward; ``generate`` runs the inner model, so those weights are
    gathered for its duration (without writing back), as TRL does for generation under FSDP1. With one GPU FSDP1
    does not shard at all, so only a run on several GPUs depends on this (not yet run on one). FSDP2 and DeepSpeed
    gather in every submodule's own forward."""
    wrapped = getattr(trainer, "model_wrapped", None)
    if getattr(trainer, "is_fsdp_enabled", False) and wrapped is not None:
        from torch.distributed.fsdp import FullyShardedDataParallel

        if isinstance(wrapped, FullyShardedDataParallel):
            return FullyShardedDataParallel.summon_full_params(wrapped, recurse=False, writeback=False)
    return nullcontext()


def golden_outputs(model, tokenizer, ctx: TrainContext, count: int, gathered: bool = False) -> list[dict[str, Any]]:
    """A few validation prompts with the adapter's greedy reply: export and serve check parity against them."""
    if count == 0:
        return []
    source = ctx.run.split_file("val")
    rows = read_jsonl(source)[:count] if source.is_file() else []
    if not rows:
        rows = read_jsonl(ctx.run.split_file("train"))[:count]
    model.eval()
    # Sharded weights are gathered in each forward: under inference mode the gathered copies would be inference
    # tensors that the engines then update in place outside it.
    generator = TransformersGenerator(model, tokenizer, batch_size=8, inference_mode=not gathered,
                                      synced=gathered and distributed.current().distributed)  # fmt: skip
    outputs = generator.generate([r["messages"] for r in rows], model.active_adapter, Decoding(max_new_tokens=32))
    return [{"id": r["id"], "messages": r["messages"], "greedy_32": o.text} for r, o in zip(rows, outputs, strict=True)]


def summarise(trainer, ctx: TrainContext, final_eval: dict, before: dict) -> dict[str, Any]:
    summary = {
        "train_completion_tokens": int(trainer.progress["completion_tokens"]),
        "base_val_loss": before.get("base_loss"),
        "val_loss": final_eval.get("eval_loss"),
    }
    for key in ("base_val", "val"):
        loss = summary[f"{key}_loss"]
        summary[f"{key}_perplexity"] = math.exp(min(loss, 50.0)) if loss is not None else None
    return summary


def print_outcome(summary: dict[str, Any]) -> None:
    base, tuned = summary["base_val_loss"], summary["val_loss"]
    if base is None or tuned is None:
        console.print(f"[bold green]Adapter saved[/bold green] to {summary['adapter']} (no validation split)")
        return
    change = (tuned - base) / base * 100
    colour = "green" if tuned < base else "red"
    console.print(
        f"[bold]Validation loss[/bold]  base {base:.3f} (ppl {summary['base_val_perplexity']:.1f})  ->  "
        f"adapter [{colour}]{tuned:.3f} (ppl {summary['val_perplexity']:.1f})[/{colour}]  ({change:+.1f}%)"
    )
    console.print(f"[bold green]Adapter saved[/bold green] to {summary['adapter']}")
