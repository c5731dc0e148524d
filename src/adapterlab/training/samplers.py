"""Training orders that depend only on (seed, epoch), so a resumed run, and N processes, see the same batches.

transformers' ``LengthGroupedSampler`` and its plain ``RandomSampler`` draw from the global RNG (and under
torchrun accelerate seeds the shuffle from yet another draw), so a resumed run, or two processes, would see
other batches than one uninterrupted process; ours are seeded per epoch like accelerate's seedable sampler. In
N processes every rank draws the same order and accelerate hands rank r the r-th share of each global batch.
"""

from __future__ import annotations

import torch
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices


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


class SeededRandomSampler(torch.utils.data.Sampler):
    """A shuffle fixed by ``seed + epoch`` (no ``generator`` attribute: accelerate leaves it alone)."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())


class SeededLengthGrouping:
    """Mixin for a Trainer: its training order comes from the seeded samplers above."""

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        strategy = self.args.train_sampling_strategy
        if strategy == "random":
            return SeededRandomSampler(len(dataset), seed=self.args.data_seed or self.args.seed)
        if strategy != "group_by_length" or "input_ids" not in dataset.column_names:
            return super()._get_train_sampler(train_dataset)
        lengths = [len(ids) for ids in dataset["input_ids"]]
        # Grouped by the global batch, so N processes (each taking its share of a batch) see what one would.
        batch = self.args.train_batch_size * self.args.gradient_accumulation_steps * self.args.world_size
        return SeededLengthGroupedSampler(batch, lengths, seed=self.args.data_seed or self.args.seed)
