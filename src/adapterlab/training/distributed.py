"""Training on several processes (``torchrun``): who writes the run directory, who waits, how they agree.

``torchrun`` (or ``adapterlab train --nproc N``, which starts it) runs the same ``adapterlab train`` in N processes
and sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``. The train stage opens the process group itself (gloo on CPUs,
NCCL on GPUs) before the Trainer does, because rank 0 must prepare the data and lay out the run directory while
the others wait: :func:`on_main` runs a step on rank 0 and hands its result (or its error) to every rank, so no
rank is left waiting at a barrier for a process that failed. The Trainer then finds the group open and runs DDP
in it; its checkpoints and our callbacks already write on rank 0 only.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from adapterlab.errors import TrainingError

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def current() -> World:
    """This process's place, from the variables torchrun sets (one process without them)."""
    env = os.environ
    return World(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def backend() -> str:
    import torch

    return "nccl" if torch.cuda.is_available() else "gloo"


def init(world: World, timeout_s: int = 7200) -> str | None:
    """Open the process group (once) for a distributed world; the backend's name, or None for one process.

    ``timeout_s`` (``train.ddp_timeout``): how long a rank waits at a collective step. Rank 0 alone prepares the
    data and, after training, chooses and saves what ships while the others wait at the next collective step; the
    backends' own defaults (30 minutes for gloo, 10 for NCCL) are shorter than a large preparation or a
    classifier's contrastive stage on a CPU can take."""
    if not world.distributed:
        return None
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    name = backend()
    if name == "nccl":
        local = int(os.environ.get("LOCAL_WORLD_SIZE", world.size))
        if torch.cuda.device_count() < local:  # NCCL refuses two ranks on one GPU, with a message about NCCL
            gpus = torch.cuda.device_count()
            raise TrainingError(
                f"{local} processes on this machine need {local} GPUs (NCCL runs one process per GPU) and it has "
                f"{gpus}: train with --nproc {gpus} (or torchrun --nproc_per_node {gpus})"
            )
        torch.cuda.set_device(world.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(name, timeout=timedelta(seconds=timeout_s))
    return name


def on_main(world: World, step: Callable[[], T]) -> T:
    """``step()`` on rank 0 only; every rank returns its (picklable) result or raises its error."""
    if not world.distributed:
        return step()
    import torch.distributed as dist

    box: list[Any] = [None]
    if world.main:
        try:
            box[0] = ("ok", step())
        except Exception as exc:
            box[0] = ("error", exc)
            dist.broadcast_object_list(box, src=0)
            raise
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise value if isinstance(value, TrainingError) else TrainingError(f"rank 0 failed: {value}")
    return value


def barrier(world: World) -> None:
    if world.distributed:
        import torch.distributed as dist

        dist.barrier()


def sum_over_ranks(world: World, values: dict[str, float], keep_max: tuple[str, ...] = ()) -> dict[str, float]:
    """``values`` summed over the ranks (``keep_max``: the slowest rank's value, e.g. wall seconds)."""
    if not world.distributed:
        return dict(values)
    import torch
    import torch.distributed as dist

    keys = sorted(values)
    summed = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=collective_device())
    highest = summed.clone()
    dist.all_reduce(summed, op=dist.ReduceOp.SUM)
    dist.all_reduce(highest, op=dist.ReduceOp.MAX)
    return {k: float((highest if k in keep_max else summed)[i]) for i, k in enumerate(keys)}


def collective_device():
    """Where a tensor for a collective call must live: NCCL reduces CUDA tensors only (this process's GPU), gloo
    CPU tensors."""
    import torch
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def finish(world: World) -> None:
    """Every rank waits for rank 0's writing, then the group closes (torchrun waits for every process)."""
    if world.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def launch(args: list[str], nproc: int) -> int:
    """Run ``adapterlab ARGS`` in ``nproc`` processes through torchrun on this machine; its exit code."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "adapterlab", *args]  # fmt: skip
    return subprocess.run(command, check=False).returncode


class GradientAveraging:
    """Mixin for a Trainer: after each backward, the trainable parameters' gradients are averaged over the ranks.

    DDP's own averaging does not happen here: the completion loss calls the decoder and the head directly (past
    DDP's forward, which arms its gradient hooks), and accelerate leaves a model unwrapped once an evaluation has
    prepared it (our base validation loss runs before training). Averaging explicitly is correct either way:
    gradients DDP already averaged are equal on every rank, and their average is themselves. LoRA gradients are
    small, so one all-reduce per micro-batch costs little next to the step.
    """

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not sharded(self):  # FSDP / DeepSpeed hold a shard of each gradient and reduce it themselves
            average_gradients(self.model)
        return loss


def sharded(trainer) -> bool:
    """Whether accelerate runs the Trainer's model under FSDP or DeepSpeed (an accelerate config file's choice)."""
    return bool(getattr(trainer, "is_fsdp_enabled", False) or getattr(trainer, "is_deepspeed_enabled", False))


def unmet_sharding(trainer) -> str | None:
    """What an accelerate config asked for and did not get: accelerate switches FSDP / DeepSpeed on only for GPU-like
    devices, and on CPU processes it silently trains with plain data parallel instead."""
    asked = [name for name, variable in (("FSDP", "ACCELERATE_USE_FSDP"), ("DeepSpeed", "ACCELERATE_USE_DEEPSPEED"))
             if os.environ.get(variable, "false").lower() == "true"]  # fmt: skip
    if not asked or sharded(trainer):
        return None
    return (f"the accelerate config asks for {asked[0]}, which accelerate runs only on GPUs: these CPU processes "
            "train with plain data parallel (the same adapter; nothing is sharded)")  # fmt: skip


def gathered_trainable_state(trainer) -> dict:
    """The sharded model's weights as whole tensors, on rank 0 (every rank must call this), for saving the adapter.

    FSDP2: only the trainable ones (the adapter and any trained module), each gathered straight to rank 0's CPU:
    a 70B base's frozen weights would otherwise be gathered too, 140 GB in bf16, only to be dropped. Otherwise
    accelerate gathers from the model it prepared (the DeepSpeed engine for ZeRO-3, the FSDP1 wrapper), as the
    GPU check ran it (``benchmarks/gpu_check.py``)."""
    wrapped = trainer.model_wrapped
    if getattr(trainer, "is_fsdp_enabled", False) and trainer.accelerator.is_fsdp2:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
        return get_model_state_dict(wrapped, options=options)
    return trainer.accelerator.get_state_dict(wrapped)


def unsaveable_sharding(trainer) -> str | None:
    """Why the adapter could not be gathered after training, said before training: ZeRO-3 keeps every weight in
    pieces, and accelerate gathers whole tensors only where the DeepSpeed config allows it (otherwise it raises once
    all the training is done)."""
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None) if sharded(trainer) else None
    if plugin is None or plugin.zero_stage != 3 or plugin.zero3_save_16bit_model:
        return None
    return ("the DeepSpeed config runs ZeRO stage 3 without gathering whole weights on save, so the trained adapter "
            "could not be saved: set zero3_save_16bit_model: true in the accelerate config (deepspeed_config), or "
            "stage3_gather_16bit_weights_on_model_save: true in a DeepSpeed JSON (configs/accelerate/"
            "deepspeed-zero3.yaml does)")  # fmt: skip


def average_gradients(model) -> None:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    if not grads:
        return
    import torch

    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()
