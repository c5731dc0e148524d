"""The Trainer arguments every task's trainer shares, from the recipe's ``train`` section."""

from __future__ import annotations

from typing import Any

from adapterlab.config import RecipeBase
from adapterlab.runs import RunDir


def optimizer_name(recipe: RecipeBase, *, cuda: bool) -> str:
    """``train.optimizer: auto``: bitsandbytes' paged 8-bit AdamW for QLoRA where it can page (CUDA), else AdamW. A
    named optimizer is used as named (``adamw_torch`` too)."""
    if recipe.train.optimizer != "auto":
        return recipe.train.optimizer
    return "paged_adamw_8bit" if recipe.model.quantization == "4bit" and cuda else "adamw_torch"


def trainer_arguments(
    recipe: RecipeBase, run: RunDir, precision: str, has_val: bool, padded: bool = True
) -> dict[str, Any]:
    """The TrainingArguments both recipes share (SFTConfig for chat, TrainingArguments for classify).

    ``padded``: whether batches are padded to their longest row (not padding-free), which is when grouping rows
    of similar length pays (``train.group_by_length: auto``).
    """
    import torch

    t = recipe.train
    group = padded if t.group_by_length == "auto" else t.group_by_length
    early = t.early_stopping_patience is not None and has_val
    return {
        "output_dir": str(run.checkpoints),
        "num_train_epochs": t.epochs,
        "max_steps": t.max_steps or -1,
        "per_device_train_batch_size": t.batch_size,
        "per_device_eval_batch_size": t.eval_batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "learning_rate": t.learning_rate,
        "lr_scheduler_type": t.lr_scheduler,
        "warmup_steps": t.warmup_ratio,
        "weight_decay": t.weight_decay,
        "max_grad_norm": t.max_grad_norm,
        "optim": optimizer_name(recipe, cuda=torch.cuda.is_available()),
        "bf16": precision == "bf16",
        "fp16": precision == "fp16",
        "use_cpu": not torch.cuda.is_available(),
        "gradient_checkpointing": t.gradient_checkpointing,
        "eval_strategy": ("epoch" if t.eval_every == "epoch" else "steps") if has_val else "no",
        "eval_steps": None if t.eval_every == "epoch" else t.eval_every,
        "save_strategy": "epoch" if t.save_every == "epoch" else "steps",
        "save_steps": None if t.save_every == "epoch" else t.save_every,
        "save_total_limit": t.keep_checkpoints,
        "load_best_model_at_end": early,
        "metric_for_best_model": "eval_loss" if early else None,
        "greater_is_better": False if early else None,
        "logging_steps": t.log_every,
        "logging_first_step": True,
        "logging_nan_inf_filter": False,  # we count non-finite losses instead of hiding them
        "report_to": [],
        "disable_tqdm": True,
        "seed": recipe.seed,
        "data_seed": recipe.seed,
        "train_sampling_strategy": "group_by_length" if group else "random",
        "dataloader_num_workers": 0,
        "save_only_model": False,
        "ddp_timeout": t.ddp_timeout,
    }


def describe(model) -> str:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return f"{trainable / 1e6:.2f}M trainable of {total / 1e6:.1f}M parameters"
