"""A process killed while it writes (kill -9, out of memory) leaves a run that the next command finishes.

The victim runs in a subprocess that dies with ``os._exit`` at a chosen point, as a SIGKILL would: no exception,
no ``finally``, no atexit. Probe tier: these are the crash points a hostile probe found.
"""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from adapterlab.registry import recipe_from_dict
from adapterlab.stages.train import train
from adapterlab.training import checkpoints

pytestmark = pytest.mark.probe

VICTIM = """
import json, os, sys
import adapterlab
from adapterlab.registry import recipe_from_dict

recipe = recipe_from_dict(json.loads(sys.argv[1]))
if sys.argv[2] == "prepare":  # die as the tokenised data starts to be written
    import datasets
    datasets.DatasetDict.save_to_disk = lambda *args, **kwargs: os._exit(137)
    from adapterlab.stages.prepare import prepare
    prepare(recipe)
else:  # die inside the step-4 checkpoint save: weights on disk, optimizer and marker not
    import transformers
    original = transformers.Trainer._save_optimizer_and_scheduler
    def dying(self, output_dir):
        if self.state.global_step == 4:
            os._exit(137)
        return original(self, output_dir)
    transformers.Trainer._save_optimizer_and_scheduler = dying
    from adapterlab.stages.train import train
    train(recipe)
"""


def kill_during(stage: str, recipe_dict: dict) -> None:
    done = subprocess.run([sys.executable, "-c", VICTIM, json.dumps(recipe_dict), stage], capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 137, done.stderr[-2000:]


def test_a_kill_while_prepare_rewrites_the_data_leaves_a_run_that_trains(recipe_dict):
    from adapterlab.stages.prepare import prepare

    recipe = recipe_from_dict(recipe_dict)
    before = prepare(recipe)
    kill_during("prepare", recipe_dict)  # the same recipe again: same fingerprint, killed mid-write
    assert (before.run.tokenized / "dataset_dict.json").is_file()  # data/ is the complete earlier one
    result = train(recipe, overwrite=True)
    assert result.summary["steps"] == 4 and result.summary["train_examples"] == before.sizes["train"]
    assert not list(before.run.root.glob(".data-*"))  # the dead staging folder was cleaned up


def test_a_kill_during_a_checkpoint_save_resumes_to_the_uninterrupted_weights(recipe_dict):
    recipe_dict["train"].update(max_steps=6)
    straight = train(recipe_from_dict({**recipe_dict, "name": "straight"}))
    kill_during("train", recipe_dict)
    folder = recipe_from_dict(recipe_dict).run_dir / "checkpoints"
    assert checkpoints.latest_complete(folder).name == "checkpoint-2"
    assert (folder / "checkpoint-4").is_dir() and not checkpoints.is_complete(folder / "checkpoint-4")
    resumed = train(recipe_from_dict(recipe_dict), resume=True)
    assert resumed.summary["resumed_from"].endswith("checkpoint-2") and resumed.summary["steps"] == 6
    a = load_file(str(straight.run.adapter / "adapter_model.safetensors"))
    b = load_file(str(resumed.run.adapter / "adapter_model.safetensors"))
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6, rtol=1e-5), name
    assert resumed.summary["train_loss"] == pytest.approx(straight.summary["train_loss"], rel=1e-6)
