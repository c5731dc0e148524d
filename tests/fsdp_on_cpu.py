"""``adapterlab`` under accelerate's FSDP on CPU processes (gloo), for the tests: ``accelerate launch
--config_file configs/accelerate/fsdp.yaml tests/fsdp_on_cpu.py train RECIPE``.

accelerate switches FSDP on only for GPU-like distributed types (MULTI_GPU, MULTI_XPU, ...); on CPU processes it
silently runs plain data parallel instead. PyTorch's FSDP2 (``fully_shard``) itself runs on CPUs over gloo, so
this launcher reports the CPU processes as MULTI_GPU to accelerate (the device stays the CPU) and our sharded
code path runs as it would on GPUs: model and optimizer prepared together, sharded checkpoints, the weights
gathered for saving. ``ADAPTERLAB_DIE_AT_SAVE=N`` kills rank 0 inside the step-N checkpoint save (after the
model shards are written, before the optimizer's), to test resuming.
"""

import os
import sys

import accelerate.state
from accelerate.utils import DistributedType

_partial_init = accelerate.state.PartialState.__init__


def _init(self, *args, **kwargs):
    _partial_init(self, *args, **kwargs)
    if self._shared_state.get("distributed_type") == DistributedType.MULTI_CPU:
        self._shared_state["distributed_type"] = DistributedType.MULTI_GPU


accelerate.state.PartialState.__init__ = _init

if os.environ.get("ADAPTERLAB_DIE_AT_SAVE"):
    import transformers

    _save = transformers.Trainer._save_optimizer_and_scheduler

    def _dying(self, output_dir):
        if self.state.global_step == int(os.environ["ADAPTERLAB_DIE_AT_SAVE"]) and int(os.environ["RANK"]) == 0:
            os._exit(137)
        return _save(self, output_dir)

    transformers.Trainer._save_optimizer_and_scheduler = _dying

from adapterlab.cli import main  # noqa: E402

sys.exit(main())
