"""Totals over a whole training (loss, tokens, seconds) that survive a resume.

transformers' Trainer reports ``train_loss`` and the runtime of the current ``train()`` call only, so a run
resumed from a checkpoint described just its resumed part (train_loss 1.751 over 6,141 tokens instead of 2.156
over 33,565 for the same weights). The totals are kept here, written into every checkpoint as JSON next to the
Trainer's own state, and read back on resume: a resumed run's summary equals the uninterrupted run's. With several
processes each keeps its own counts (``adapterlab-progress-<rank>.json``, as the Trainer keeps one RNG state per
rank): the summary sums them, so each rank must resume from its own.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

PROGRESS_FILE = "adapterlab-progress.json"


def tokens_in(inputs: dict[str, Any]) -> int:
    """Non-padding tokens of a batch (a padding-free batch has no attention mask and no padding)."""
    mask = inputs.get("attention_mask")
    return int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel())


class TrainingProgress:
    """Mixin for a transformers Trainer: ``self.progress`` counts the whole training, resumes included."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.progress: dict[str, float] = {"tokens": 0, "completion_tokens": 0, "seconds": 0.0, "loss_sum": 0.0}
        self._loss_sum = torch.zeros((), dtype=torch.float64)
        self._seconds_before = 0.0
        self._started = time.perf_counter()

    def _progress_file(self, folder: Path) -> Path:
        if self.args.world_size > 1:
            return folder / PROGRESS_FILE.replace(".json", f"-{self.args.process_index}.json")
        return folder / PROGRESS_FILE

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        if isinstance(resume_from_checkpoint, str | Path):
            saved = self._progress_file(Path(resume_from_checkpoint))
            if saved.is_file():
                self.progress.update(json.loads(saved.read_text()))
                self._loss_sum = torch.tensor(self.progress["loss_sum"], dtype=torch.float64)
                self._seconds_before = self.progress["seconds"]
        self._started = time.perf_counter()
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        # The value the Trainer adds to its own running loss (its logging_nan_inf_filter is off in our arguments).
        self._loss_sum += loss.detach().to("cpu", torch.float64)
        self.progress["tokens"] += tokens_in(inputs)
        return loss

    def totals(self) -> dict[str, float]:
        """The totals so far: loss sum over steps, tokens, seconds of training."""
        self.progress["loss_sum"] = float(self._loss_sum)
        self.progress["seconds"] = self._seconds_before + time.perf_counter() - self._started
        return dict(self.progress)

    def _save_checkpoint(self, model, trial) -> None:
        super()._save_checkpoint(model, trial)
        # Every rank writes its own counts; the checkpoint is marked complete only after all have (CheckpointMarker).
        folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
        if self.args.should_save or self.args.world_size > 1:
            folder.mkdir(parents=True, exist_ok=True)
            self._progress_file(folder).write_text(json.dumps(self.totals()))
