"""Training on a tiny model: the run directory, resume, refusal to clobber, non-finite losses, tracking."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from adapterlab.errors import TrainingError
from adapterlab.runs import AdapterInfo, read_jsonl
from adapterlab.stages.train import train
from adapterlab.training import checkpoints

from tiny import build_model_dir


class CrashAt(TrainerCallback):
    """Simulates a crash (power cut, OOM kill) at the end of a given step, before that step's save."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise RuntimeError("simulated crash")


def adapter_weights(run_dir):
    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


def test_run_directory_is_complete(make_recipe):
    result = train(make_recipe())
    root = result.run.root
    for name in ("recipe.resolved.yaml", "env.json", "data_report.json", "metrics.jsonl", "loss.png", "summary.json"):
        assert (root / name).is_file(), name
    adapter = root / "adapter"
    for name in ("adapter_model.safetensors", "adapter_config.json", "adapterlab.json", "tokenizer.json"):
        assert (adapter / name).is_file(), name
    assert not [p.name for p in adapter.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
    assert (root / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    raw = json.loads((adapter / "adapterlab.json").read_text())
    assert raw["format_version"] == 1 and raw["task"] == "chat" and raw["base_model"]["spec"]
    meta = AdapterInfo.read(root).task_info
    assert meta["chat_template"] and "<|im_start|>" in meta["chat_template"]
    assert meta["stop"]["eos_token"] == "<|im_end|>"
    assert meta["prompt"]["prompt_template"] == "Subject: {subject}\n\n{body}"
    assert len(meta["golden"]) == 2 and all("greedy_32" in g for g in meta["golden"])

    env = json.loads((root / "env.json").read_text())
    assert env["libraries"]["torch"] and env["libraries"]["peft"] and "cpu_bf16" in env["hardware"]

    records = read_jsonl(root / "metrics.jsonl")
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in records if "eval_loss" in r][:2] == [2, 4]
    assert records[0]["step"] == 0 and "base_loss" in records[0]
    evals = [r for r in records if "eval_loss" in r]
    assert all(math.isclose(r["eval_perplexity"], math.exp(r["eval_loss"])) for r in evals)

    summary = json.loads((root / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["precision"] == "fp32"
    assert math.isclose(summary["val_perplexity"], math.exp(summary["val_loss"]))
    assert summary["val_loss"] < summary["base_val_loss"]  # 4 steps at a high learning rate on a random model
    assert summary["train_tokens"] > summary["train_completion_tokens"] > 0
    done = checkpoints.all_checkpoints(root / "checkpoints")
    assert [checkpoints.step_of(p) for p in done] == [2, 4] and all(checkpoints.is_complete(p) for p in done)


def test_resume_after_a_crash_matches_the_uninterrupted_run(make_recipe):
    overrides = ["train.max_steps=6", "lora.dropout=0.1"]  # dropout: the RNG state must be restored too
    straight = train(make_recipe([*overrides, "name=straight"]))

    crashed = make_recipe([*overrides, "name=crashed"])
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(crashed, callbacks=[CrashAt(5)])
    run_checkpoints = crashed.run_dir / "checkpoints"
    assert checkpoints.latest_complete(run_checkpoints).name == "checkpoint-4"
    half = run_checkpoints / "checkpoint-6"  # a save that died half-way: weights but no marker
    half.mkdir()
    (half / "adapter_model.safetensors").write_bytes(b"partial")

    resumed = train(crashed, resume=True)
    assert resumed.summary["resumed_from"].endswith("checkpoint-4")
    assert resumed.summary["steps"] == 6
    a, b = adapter_weights(straight.run.root), adapter_weights(resumed.run.root)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6, rtol=1e-5), name
    steps = [r["step"] for r in read_jsonl(resumed.run.metrics) if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]  # lines logged after checkpoint-4 and before the crash were dropped
    # The summary describes the whole training, not only its resumed part
    for key in ("train_loss", "train_tokens", "train_completion_tokens", "steps", "val_loss", "base_val_loss"):
        assert resumed.summary[key] == pytest.approx(straight.summary[key], rel=1e-6), key
    assert resumed.summary["train_runtime_s"] > 0
    for key in ("loss", "eval_loss"):  # loss.png plots the same points
        curves = [[(r["step"], r[key]) for r in read_jsonl(run.run.metrics) if key in r] for run in (straight, resumed)]
        assert [step for step, _ in curves[0]] == [step for step, _ in curves[1]], key
        assert [v for _, v in curves[0]] == pytest.approx([v for _, v in curves[1]], rel=1e-4), key


def test_half_written_checkpoint_is_never_picked(make_recipe):
    recipe = make_recipe()
    train(recipe)
    folder = recipe.run_dir / "checkpoints"
    (folder / "checkpoint-4" / checkpoints.MARKER).unlink()
    assert checkpoints.latest_complete(folder).name == "checkpoint-2"


LAYOUTS = {  # what the Trainer writes for a resume, by how the weights are held
    "whole": ["adapter_model.safetensors", "optimizer.pt"],
    "fsdp": ["pytorch_model_fsdp_0/.metadata", "pytorch_model_fsdp_0/__0_0.distcp", "optimizer_0/.metadata"],
    "deepspeed": ["latest", "global_step4/mp_rank_00_model_states.pt"],
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_a_checkpoint_is_complete_with_every_file_a_resume_reads_and_not_without_one(tmp_path, layout):
    """``--resume`` deletes incomplete checkpoints: a sharded one (FSDP, DeepSpeed) must count as complete."""
    files = [*LAYOUTS[layout], "trainer_state.json", "scheduler.pt", checkpoints.MARKER]
    for missing in [None, *files]:
        folder = tmp_path / f"{layout}-{str(missing).replace('/', '_')}" / "checkpoint-4"
        for name in files:
            if name != missing:
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                (folder / name).write_text("global_step4" if name == "latest" else "x")
        complete = checkpoints.is_complete(folder)
        # A shard's data file is not checked, only the .metadata written after every shard.
        assert complete == (missing is None or missing.endswith(".distcp")), (layout, missing)


def test_refuses_to_clobber_and_starts_over_when_there_is_nothing_to_resume(make_recipe, capsys):
    recipe = make_recipe()
    fresh = train(recipe, resume=True)
    assert "no complete checkpoint to resume from; starting over" in " ".join(capsys.readouterr().out.split())
    assert fresh.summary["steps"] == 4 and fresh.summary["resumed_from"] is None
    with pytest.raises(TrainingError, match="already has checkpoints .* --resume .* --overwrite"):
        train(recipe)
    again = train(recipe, overwrite=True)
    assert again.summary["steps"] == 4


@pytest.mark.parametrize("resume", [False, True], ids=["train", "train --resume"])
def test_a_crash_during_the_first_checkpoint_save_sends_nobody_in_circles(make_recipe, resume):
    """Only a half-written checkpoint exists (the process died while saving the first one): plain `train` and
    `train --resume` both start over, instead of each sending the user to the other."""
    recipe = make_recipe()
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(recipe, callbacks=[CrashAt(1)])
    half = recipe.run_dir / "checkpoints" / "checkpoint-2"
    half.mkdir(parents=True)
    (half / "adapter_model.safetensors").write_bytes(b"partial")
    result = train(recipe, resume=resume)
    assert result.summary["steps"] == 4 and result.summary["resumed_from"] is None
    done = checkpoints.all_checkpoints(recipe.run_dir / "checkpoints")
    assert [checkpoints.step_of(p) for p in done] == [2, 4] and all(checkpoints.is_complete(p) for p in done)


def test_resume_refuses_changed_data(make_recipe, recipe_dict, tmp_path):
    recipe = make_recipe(["train.max_steps=6"])
    with pytest.raises(RuntimeError):
        train(recipe, callbacks=[CrashAt(3)])
    path = tmp_path / "tickets.csv"
    path.write_text(path.read_text().replace("Restart the device", "Reboot the device"))
    with pytest.raises(TrainingError, match="data or recipe changed since this checkpoint"):
        train(recipe, resume=True)


def test_non_finite_loss_stops_training_with_a_clear_message(tmp_path, recipe_dict):
    from adapterlab.registry import recipe_from_dict

    recipe_dict["model"]["base"] = str(build_model_dir(tmp_path / "nan-model", nan_weights=True))
    recipe_dict["train"].update(max_steps=10, save_every=100, eval_every=100)
    with pytest.raises(TrainingError, match=r"loss was NaN/inf for 3 logs in a row \(step 3\)"):
        train(recipe_from_dict(recipe_dict))


def test_dora_adapter(make_recipe):
    result = train(make_recipe(["lora.dora=true", "train.max_steps=2"]))
    config = json.loads((result.run.adapter / "adapter_config.json").read_text())
    assert config["use_dora"] is True
    assert any("lora_magnitude_vector" in k for k in adapter_weights(result.run.root))
    assert result.summary["method"] == "lora+dora"


def test_early_stopping_restores_the_best_checkpoint(make_recipe, tmp_path):
    # On a model whose logits react to the adapter, a learning rate this high makes validation loss climb.
    reactive = build_model_dir(tmp_path / "reactive-llama", init_std=0.5)
    recipe = make_recipe(
        [
            f"model.base={reactive}",
            "train.max_steps=30",
            "train.learning_rate=50.0",
            "train.early_stopping_patience=2",
            "train.lr_scheduler=constant",
        ]
    )
    summary = train(recipe).summary
    evals = [r["eval_loss"] for r in read_jsonl(recipe.run_dir / "metrics.jsonl") if "eval_loss" in r]
    assert summary["stopped_early"] and summary["steps"] < 30, evals
    assert summary["best_checkpoint"] is not None
    assert evals[-2] > min(evals[:-1])  # the last evaluation during training was not the best one
    assert math.isclose(summary["val_loss"], min(evals[:-1]), rel_tol=1e-4)


@pytest.mark.parametrize("backend", ["tensorboard", "mlflow"])
def test_experiment_tracking(make_recipe, backend, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    result = train(make_recipe([f"train.report_to={backend}", "train.max_steps=2"]))
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # for the reading side below
    if backend == "tensorboard":
        assert list((result.run.root / "tensorboard").glob("events.out.tfevents.*"))
    else:
        import mlflow

        mlflow.set_tracking_uri((result.run.root / "mlruns").as_uri())
        runs = mlflow.search_runs(experiment_names=["tiny"])
        assert len(runs) == 1 and "metrics.loss" in runs.columns


def test_gradient_accumulation_and_checkpointing(make_recipe):
    recipe = make_recipe(["train.max_steps=2", "train.grad_accum=2", "train.gradient_checkpointing=true"])
    summary = train(recipe).summary
    assert summary["steps"] == 2
    records = [r for r in read_jsonl(recipe.run_dir / "metrics.jsonl") if "loss" in r]
    assert all(math.isfinite(r["loss"]) for r in records)
    # 24 training rows, 4 per micro-batch, 2 micro-batches per step: 3 steps per epoch.
    assert math.isclose(records[-1]["epoch"], 2 / 3, rel_tol=1e-3)


def test_warns_when_an_adapter_would_be_unservable_by_vllm(make_recipe, capsys):
    from adapterlab.generative.train import warn_if_unservable

    warn_if_unservable(make_recipe())
    assert "vLLM" not in capsys.readouterr().out
    warn_if_unservable(make_recipe(["lora.modules_to_save=[lm_head]"]))
    assert "vLLM refuses them" in capsys.readouterr().out


def test_missing_tracking_package_names_the_extra(make_recipe, monkeypatch):
    import sys

    from adapterlab.training.callbacks import tracking

    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed
    recipe = make_recipe(["train.report_to=mlflow"])
    with pytest.raises(TrainingError, match=r"mlflow needs the 'tracking' extra: pip install 'adapterlab\[tracking\]'"):
        tracking(recipe, None)


def test_padding_free_training_matches_padded_batches(make_recipe):
    """Packed rows (the default on this Llama) train the same adapter as padded batches, counting real tokens only."""
    same_batches = ["train.group_by_length=false", "train.golden_prompts=0"]
    packed = train(make_recipe([*same_batches, "name=packed"]))
    padded = train(make_recipe([*same_batches, "name=padded", "train.padding_free=false"]))
    for name, weight in adapter_weights(padded.run.root).items():
        torch.testing.assert_close(adapter_weights(packed.run.root)[name], weight, rtol=1e-3, atol=1e-5)
    assert packed.summary["val_loss"] == pytest.approx(padded.summary["val_loss"], rel=1e-4)
    # padded batches count their attention mask; the packed rows have no padding to count
    assert packed.summary["train_tokens"] == padded.summary["train_tokens"]
    assert packed.summary["train_completion_tokens"] == padded.summary["train_completion_tokens"]


def test_bf16_training_runs_the_loss_and_the_adapters_under_autocast(make_recipe, monkeypatch):
    """Mixed precision reaches the loss, which calls the decoder itself: LoRA matmuls run in bf16, uncast."""
    from adapterlab.generative import train as trainer_module

    seen, completion_loss = [], trainer_module.completion_loss

    def watched_loss(model, inputs, num_items_in_batch=None):
        lora_a = next(m for name, m in model.named_modules() if name.endswith("lora_A.default"))
        hook = lora_a.register_forward_hook(lambda module, args, out: seen.append((args[0].dtype, out.dtype)))
        try:
            assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
            return completion_loss(model, inputs, num_items_in_batch)
        finally:
            hook.remove()

    monkeypatch.setattr(trainer_module, "completion_loss", watched_loss)
    result = train(make_recipe(["train.precision=bf16", "train.max_steps=2", "train.eval_every=100"]))
    assert result.summary["precision"] == "bf16"
    assert seen and all(dtypes == (torch.bfloat16, torch.bfloat16) for dtypes in seen)


def test_under_a_sharding_engine_the_loss_is_the_models_own_and_trains_the_same_adapter(make_recipe, monkeypatch):
    """FSDP / DeepSpeed: transformers' loss through the model's whole forward, lm_head called (FSDP2 shards it with
    the tied embeddings and must see it run; TRL's fused head does not call it), and the base's loss with the LoRA
    scalings at 0: the same adapter and losses as one process's own loss and disable_adapter."""
    from adapterlab.generative import train as trainer_module

    same = ["train.group_by_length=false", "train.golden_prompts=0", "train.max_steps=4", "train.eval_every=100"]
    ours = train(make_recipe([*same, "name=ours"]))
    head_calls = []
    whole_loss = trainer_module.Trainer.compute_loss

    def watched(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        hook = model.get_output_embeddings().register_forward_hook(lambda *_: head_calls.append(model.training))
        try:
            return whole_loss(self, model, inputs, return_outputs, num_items_in_batch)
        finally:
            hook.remove()

    monkeypatch.setattr(trainer_module, "sharded", lambda trainer: True)
    monkeypatch.setattr(trainer_module.Trainer, "compute_loss", watched)
    engine = train(make_recipe([*same, "name=engine"]))
    assert head_calls.count(True) == 4 and False in head_calls  # every training step, and the evaluations
    for name, weight in adapter_weights(ours.run.root).items():
        torch.testing.assert_close(adapter_weights(engine.run.root)[name], weight, rtol=1e-3, atol=1e-5)
    assert engine.summary["base_val_loss"] == pytest.approx(ours.summary["base_val_loss"], rel=1e-5)
    assert engine.summary["val_loss"] == pytest.approx(ours.summary["val_loss"], rel=1e-4)
