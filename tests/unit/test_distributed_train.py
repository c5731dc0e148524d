"""Training in two processes (torchrun, DDP over gloo on the CPU) against one process on the same global batch.

One process with train.batch_size 4 and two with 2 each see the same batches in the same order (the sampler is
seeded alike in every rank and accelerate hands rank r the r-th half of each global batch); the loss is scaled so
the averaged gradient is the one-process gradient. What is left is the order of float sums (two half-batch
sums added by all-reduce vs one sum), so the adapters agree to a tolerance, not bit for bit: after 6 Adam steps
at learning rate 5e-3 the largest difference we saw was ~1e-6 on weights of size ~1e-2; we allow 1e-4.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from adapterlab.registry import recipe_from_dict
from adapterlab.stages.train import train
from adapterlab.training import checkpoints

TOLERANCE = 1e-4
STEPS = 6


def two_process_recipe(recipe_dict: dict, tmp_path: Path, name: str) -> Path:
    recipe = {**recipe_dict, "name": name}
    recipe["train"] = {**recipe_dict["train"], "batch_size": 2, "max_steps": STEPS}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture
def one_process(recipe_dict) -> Path:
    """The reference: one process, global batch 4, six steps."""
    recipe = {**recipe_dict, "name": "one", "train": {**recipe_dict["train"], "batch_size": 4, "max_steps": STEPS}}
    return train(recipe_from_dict(recipe)).run.root


def adapterlab(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2] / "src"), *sys.path])}
    return subprocess.run([sys.executable, "-m", "adapterlab", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)  # fmt: skip


def assert_same_adapter(a: Path, b: Path) -> float:
    one = load_file(str(a / "adapter" / "adapter_model.safetensors"))
    two = load_file(str(b / "adapter" / "adapter_model.safetensors"))
    assert one.keys() == two.keys()
    worst = max(float((one[k] - two[k]).abs().max()) for k in one)
    assert worst < TOLERANCE, worst
    assert any(float(v.abs().max()) > 100 * TOLERANCE for v in two.values())  # trained, not still at zero
    return worst


def files_of(root: Path) -> set[str]:
    """The run's files; each rank saves its RNG state (rng_state_<rank>.pth) and its counts
    (adapterlab-progress-<rank>.json) for an exact resume."""
    per_rank = [(r"rng_state(_\d+)?\.pth$", "rng_state.pth"),
                (r"adapterlab-progress(-\d+)?\.json$", "adapterlab-progress.json")]  # fmt: skip
    files = set()
    for path in (p for p in root.rglob("*") if p.is_file()):
        name = str(path.relative_to(root))
        for pattern, common in per_rank:
            name = re.sub(pattern, common, name)
        files.add(name)
    return files


def logged_counts(run: Path) -> list[tuple[int, int, int]]:
    """(step, num_tokens, completion_tokens) of each training-loss line of metrics.jsonl."""
    rows = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    return [(r["step"], r["num_tokens"], r["completion_tokens"]) for r in rows if "loss" in r]


def test_two_processes_train_the_one_process_adapter_into_one_run_directory(recipe_dict, tmp_path, one_process):
    recipe = two_process_recipe(recipe_dict, tmp_path, "two")
    done = adapterlab("train", str(recipe), "--nproc", "2")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    two = one_process.parent / "two"
    assert_same_adapter(one_process, two)
    assert {p.name for p in one_process.parent.iterdir()} == {"one", "two"}
    assert {p.name for p in (two / "checkpoints" / "checkpoint-6").glob("rng_state*")} == {
        "rng_state_0.pth",
        "rng_state_1.pth",
    }
    assert {p.name for p in (two / "checkpoints" / "checkpoint-6").glob("adapterlab-progress*")} == {
        "adapterlab-progress-0.json",
        "adapterlab-progress-1.json",
    }
    # Rank 0 alone wrote: the same files as the one-process run, each step logged once, one env.json saying 2.
    assert files_of(two) == files_of(one_process)
    steps = [r["step"] for r in map(json.loads, (two / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert steps == sorted(set(steps)) and steps[-1] == STEPS
    # Each logged step counts every process's tokens, as the one process's log does at the same step.
    assert logged_counts(two) == logged_counts(one_process) and logged_counts(two)[-1][1] > 0
    env = json.loads((two / "env.json").read_text())
    assert env["world_size"] == 2 and env["distributed_backend"] == "gloo"
    summary = json.loads((two / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["global_batch"] == 4 and summary["steps"] == STEPS
    reference = json.loads((one_process / "summary.json").read_text())
    assert summary["train_loss"] == pytest.approx(reference["train_loss"], rel=1e-4)
    assert summary["train_tokens"] == reference["train_tokens"]  # both processes' tokens counted
    assert summary["train_completion_tokens"] == reference["train_completion_tokens"] > 0


VICTIM = """
import os, sys
import transformers
from adapterlab.stages.train import train

original = transformers.Trainer._save_optimizer_and_scheduler

def dying(self, output_dir):  # rank 0 dies inside the step-4 checkpoint save: weights on disk, marker not
    if self.state.global_step == 4 and int(os.environ["RANK"]) == 0:
        os._exit(137)
    return original(self, output_dir)

transformers.Trainer._save_optimizer_and_scheduler = dying
train(sys.argv[1])
"""


def test_a_two_process_run_killed_mid_save_resumes_to_the_one_process_adapter(recipe_dict, tmp_path, one_process):
    recipe = two_process_recipe(recipe_dict, tmp_path, "killed")
    victim = tmp_path / "victim.py"
    victim.write_text(VICTIM)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2] / "src"), *sys.path])}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(victim)]
    killed = subprocess.run([*command, str(recipe)], capture_output=True, text=True, env=env, timeout=300)
    assert killed.returncode != 0
    run = one_process.parent / "killed"
    assert checkpoints.latest_complete(run / "checkpoints").name == "checkpoint-2"

    resumed = adapterlab("train", str(recipe), "--nproc", "2", "--resume")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed_from"].endswith("checkpoint-2") and summary["steps"] == STEPS
    assert_same_adapter(one_process, run)
    reference = json.loads((one_process / "summary.json").read_text())
    for key in ("train_tokens", "train_completion_tokens"):  # each rank resumed its own counts, then summed
        assert summary[key] == reference[key] > 0
    steps = [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert steps == list(range(1, STEPS + 1))  # steps logged before the kill and after it, each once


FSDP_CONFIG = Path(__file__).parents[2] / "configs" / "accelerate" / "fsdp.yaml"
FSDP_ON_CPU = Path(__file__).parents[1] / "fsdp_on_cpu.py"


def fsdp(*args: str, die_at_save: int | None = None) -> subprocess.CompletedProcess:
    """``adapterlab ARGS`` through ``accelerate launch`` with the shipped FSDP config, on two CPU processes. The
    config says bf16; the recipe's fp32 must win (else the comparison with the one-process run would fail)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2] / "src"), *sys.path])}
    if die_at_save is not None:
        env["ADAPTERLAB_DIE_AT_SAVE"] = str(die_at_save)
    launch = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file", str(FSDP_CONFIG),
              str(FSDP_ON_CPU)]  # fmt: skip
    return subprocess.run([*launch, *args], capture_output=True, text=True, env=env, timeout=300)


def test_fsdp_training_killed_mid_save_resumes_to_the_one_process_adapter(recipe_dict, tmp_path, one_process):
    """The shipped FSDP config (FSDP2, decoder layers wrapped, sharded checkpoints): nothing may run the model before
    accelerate prepares it with its optimizer (the base's validation loss is measured after training), the
    checkpoints hold shards, the saved adapter is the gathered whole, and a resumed run ends where one process
    does."""
    recipe = two_process_recipe(recipe_dict, tmp_path, "sharded")
    killed = fsdp("train", str(recipe), die_at_save=4)
    assert killed.returncode != 0
    run = one_process.parent / "sharded"
    checkpoint = checkpoints.latest_complete(run / "checkpoints")
    assert checkpoint.name == "checkpoint-2"
    assert (checkpoint / "pytorch_model_fsdp_0").is_dir()  # each rank's shard, not one process's whole model

    resumed = fsdp("train", str(recipe), "--resume")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "mixed_precision bf16 is replaced by the recipe's train.precision fp32" in resumed.stdout
    assert_same_adapter(one_process, run)
    summary = json.loads((run / "summary.json").read_text())
    reference = json.loads((one_process / "summary.json").read_text())
    assert summary["resumed_from"].endswith("checkpoint-2") and summary["processes"] == 2
    for key in ("train_tokens", "train_completion_tokens"):  # TRL's loss runs here: we still count what it scores
        assert summary[key] == reference[key] > 0
    # Validation losses are means of per-batch means, and two processes batch the 6 examples differently.
    assert summary["base_val_loss"] == pytest.approx(reference["base_val_loss"], rel=2e-3)
    assert summary["val_loss"] == pytest.approx(reference["val_loss"], rel=2e-3)
    assert summary["base_val_loss"] != summary["val_loss"]  # the base was measured with the adapter switched off
    # The golden replies were generated by both ranks in step through the sharded model (one rank alone would
    # wait forever for the other's shards): the same replies as the one-process adapter's.
    golden, expected = (json.loads((r / "adapter" / "adapterlab.json").read_text())["task_info"]["golden"]
                        for r in (run, one_process))  # fmt: skip
    assert golden == expected and len(golden) == 2


def test_an_fsdp_config_on_cpu_processes_says_it_trains_unsharded(monkeypatch):
    from types import SimpleNamespace

    from adapterlab.training.distributed import unmet_sharding

    plain, fsdp_trainer = SimpleNamespace(is_fsdp_enabled=False), SimpleNamespace(is_fsdp_enabled=True)
    assert unmet_sharding(plain) is None
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert "asks for FSDP, which accelerate runs only on GPUs" in unmet_sharding(plain)
    assert unmet_sharding(fsdp_trainer) is None


def test_a_zero3_config_that_cannot_gather_the_adapter_is_refused_before_training(monkeypatch):
    """accelerate raises only when the adapter is gathered, after all of training; we say it before, in one line."""
    from types import SimpleNamespace

    from accelerate.utils import DeepSpeedPlugin

    from adapterlab.training.distributed import unsaveable_sharding

    def trainer(plugin):
        return SimpleNamespace(is_deepspeed_enabled=True, accelerator=SimpleNamespace(state=SimpleNamespace(
            deepspeed_plugin=plugin)))  # fmt: skip

    monkeypatch.delenv("ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL", raising=False)
    shipped = yaml.safe_load((Path(__file__).parents[2] / "configs/accelerate/deepspeed-zero3.yaml").read_text())
    ours = shipped["deepspeed_config"]
    plugin = DeepSpeedPlugin(zero_stage=ours["zero_stage"], zero3_save_16bit_model=ours["zero3_save_16bit_model"])
    assert unsaveable_sharding(trainer(plugin)) is None
    assert unsaveable_sharding(trainer(DeepSpeedPlugin(zero_stage=2))) is None
    message = unsaveable_sharding(trainer(DeepSpeedPlugin(zero_stage=3)))
    assert "set zero3_save_16bit_model: true" in message and "\n" not in message
    assert unsaveable_sharding(SimpleNamespace(is_deepspeed_enabled=False, is_fsdp_enabled=False)) is None


def test_the_process_group_waits_as_long_as_the_recipe_says(monkeypatch, recipe_dict, tmp_path):
    # Rank 0 alone prepares and chooses what ships while the others wait: the backends' defaults (gloo 30
    # minutes, NCCL 10) must not end that wait; train.ddp_timeout sets it, for our group and the Trainer's.
    from datetime import timedelta

    import torch.distributed as dist

    from adapterlab.runs import RunDir
    from adapterlab.training import distributed
    from adapterlab.training.arguments import trainer_arguments

    opened: list[dict] = []
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(
        dist, "init_process_group", lambda backend, **kwargs: opened.append({"backend": backend, **kwargs})
    )
    monkeypatch.setattr(distributed, "backend", lambda: "gloo")
    assert distributed.init(distributed.World(0, 1, 0), 900) is None and opened == []  # one process: no group
    assert distributed.init(distributed.World(1, 2, 1), 900) == "gloo"
    assert opened == [{"backend": "gloo", "timeout": timedelta(seconds=900)}]
    recipe = recipe_from_dict({**recipe_dict, "train": {**recipe_dict.get("train", {}), "ddp_timeout": 5400}})
    assert recipe_from_dict(recipe_dict).train.ddp_timeout == 7200
    assert trainer_arguments(recipe, RunDir(tmp_path), "fp32", has_val=False)["ddp_timeout"] == 5400


def test_totals_are_summed_on_the_device_the_backend_reduces(monkeypatch):
    """NCCL reduces CUDA tensors only: the token and loss totals after a `--nproc N` run on GPUs go there, gloo's
    stay on the CPU (the two-process CPU tests above run the gloo side for real)."""
    import torch
    import torch.distributed as dist

    from adapterlab.training import distributed

    monkeypatch.setattr(dist, "get_backend", lambda group=None: "gloo")
    assert distributed.collective_device() == torch.device("cpu")
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert distributed.collective_device() == torch.device("cuda", 1)
    seen = []
    monkeypatch.setattr(distributed, "collective_device", lambda: torch.device("cpu"))
    monkeypatch.setattr(dist, "all_reduce", lambda tensor, op=None: seen.append((tensor.device.type, op)))
    totals = distributed.sum_over_ranks(distributed.World(0, 2, 0), {"tokens": 3.0, "seconds": 2.0}, ("seconds",))
    assert totals == {"seconds": 2.0, "tokens": 3.0} and [op for _, op in seen] == [
        dist.ReduceOp.SUM,
        dist.ReduceOp.MAX,
    ]


def test_more_processes_than_gpus_is_one_clear_error(monkeypatch):
    import torch

    from adapterlab.errors import TrainingError
    from adapterlab.training import distributed

    monkeypatch.setattr(distributed, "backend", lambda: "nccl")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(TrainingError, match=r"2 processes on this machine need 2 GPUs .* --nproc 1"):
        distributed.init(distributed.World(1, 2, 1))
