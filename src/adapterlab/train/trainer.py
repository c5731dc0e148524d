"""TRL's SFTTrainer with two changes: the completion-only loss of :mod:`adapterlab.train.losses`, and
length-grouped batches whose order depends only on (seed, epoch).

TRL 1.x scores every position through a chunked, fused LM-head kernel that also computes entropy and top-1
accuracy; on a CPU (no Triton) it scores prompt and padding positions too and recomputes the logits in the
backward pass. Our loss projects the completion positions only: the same loss value at ~2x the step speed on
the embedded model (benchmarks/train_throughput.py).

transformers' ``LengthGroupedSampler`` draws from the global RNG, so a resumed run would see other batches
than the uninterrupted one; ours is seeded per epoch like accelerate's seedable random sampler. Everything
else (data collation, optimiser, scheduler, checkpointing, resume) is TRL's and transformers' own.
"""

from __future__ import annotations

import torch
from peft.helpers import disable_input_dtype_casting
from transformers import Trainer
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices
from trl import SFTTrainer

from adapterlab.train.losses import classification_loss, completion_loss


class SeededLengthGroupedSampler(LengthGroupedSampler):
    """Batches of similar length (less padding), in an order fixed by ``seed + epoch``."""

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        super().__init__(batch_size, lengths=lengths)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:  # called by the Trainer at the start of every epoch
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))


class SeededLengthGrouping:
    """Mixin for a Trainer: ``train_sampling_strategy='group_by_length'`` uses the seeded sampler above."""

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy != "group_by_length" or "input_ids" not in dataset.column_names:
            return super()._get_train_sampler(train_dataset)
        lengths = [len(ids) for ids in dataset["input_ids"]]
        batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
        return SeededLengthGroupedSampler(batch, lengths, seed=self.args.data_seed or self.args.seed)


class CompletionSFTTrainer(SeededLengthGrouping, SFTTrainer):
    """Counts the tokens it trains on (``num_tokens`` = non-padding tokens, ``completion_tokens`` = scored)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.tokens_seen = 0
        self.completion_tokens_seen = 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # The Trainer leaves mixed precision to accelerate, which wraps ``model.forward`` in autocast; the loss
        # calls the decoder and the head directly, so it enters the same autocast itself. Without it the fp32
        # LoRA weights made every adapter matmul run in fp32 behind a cast of its input, off the bf16 units.
        with self.accelerator.autocast():
            # Under autocast PEFT's cast of every LoRA input to the fp32 adapter dtype is undone by autocast at
            # once (bf16 in, fp32 copy, bf16 copy): pure memory traffic. Without autocast it is needed.
            autocast = torch.is_autocast_enabled(inputs["input_ids"].device.type)
            with disable_input_dtype_casting(model, active=autocast):
                loss, scored = completion_loss(model, inputs, num_items_in_batch)
        if model.training:
            mask = inputs.get("attention_mask")
            self.tokens_seen += int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel())
            self.completion_tokens_seen += scored
        return (loss, {"loss": loss}) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.model.training and "loss" in logs:
            logs["num_tokens"] = self.tokens_seen
            logs["completion_tokens"] = self.completion_tokens_seen
        super().log(logs, start_time)


class ClassificationTrainer(SeededLengthGrouping, Trainer):
    """transformers' Trainer with the imbalance-aware loss of :func:`adapterlab.train.losses.classification_loss`."""

    def __init__(self, *args, class_weights=None, focal_gamma: float = 0.0, label_smoothing: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.class_weights = class_weights
        self.focal_gamma = focal_gamma
        self.label_smoothing = label_smoothing
        # The loss below is a per-batch mean; the Trainer then averages it over gradient-accumulation steps.
        self.model_accepts_loss_kwargs = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        weights = None if self.class_weights is None else self.class_weights.to(outputs.logits.device)
        loss = classification_loss(outputs.logits, labels, weights, self.focal_gamma, self.label_smoothing)
        return (loss, outputs) if return_outputs else loss
