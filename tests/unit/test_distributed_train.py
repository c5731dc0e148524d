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
    """The run's files; the Trainer saves each rank's RNG state (rng_state_<rank>.pth) for an exact resume."""
    return {re.sub(r"rng_state(_\d+)?\.pth$", "rng_state.pth", str(p.relative_to(root)))
            for p in root.rglob("*") if p.is_file()}  # fmt: skip


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
    # Rank 0 alone wrote: the same files as the one-process run, each step logged once, one env.json saying 2.
    assert files_of(two) == files_of(one_process)
    steps = [r["step"] for r in map(json.loads, (two / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert steps == sorted(set(steps)) and steps[-1] == STEPS
    env = json.loads((two / "env.json").read_text())
    assert env["world_size"] == 2 and env["distributed_backend"] == "gloo"
    summary = json.loads((two / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["global_batch"] == 4 and summary["steps"] == STEPS
    reference = json.loads((one_process / "summary.json").read_text())
    assert summary["train_loss"] == pytest.approx(reference["train_loss"], rel=1e-4)
    assert summary["train_tokens"] == reference["train_tokens"]  # both processes' tokens counted


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
    steps = [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert steps == list(range(1, STEPS + 1))  # steps logged before the kill and after it, each once
