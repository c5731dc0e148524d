"""The task seam: a task defined outside the package goes through every stage without a change to any of them."""

import pytest

from adapterlab.errors import RecipeError
from adapterlab.registry import TASKS, get_task, recipe_from_dict, register_task, unregister_task

from samples import write_csv
from toy_task import ShoutTask


@pytest.fixture
def shout(tmp_path, tiny_model_dir):
    register_task(ShoutTask(), replace=True)
    rows = [{"id": str(i), "text": text} for i, text in enumerate(["restart the vpn", "printer jam", "hello there",
            "reset my password", "the screen is dark", "no sound", "wifi drops", "mail is slow"] * 3)]  # fmt: skip
    for i, row in enumerate(rows):
        row["text"] += f" {i}"  # distinct rows: duplicates would be dropped
    raw = {
        "name": "shout",
        "task": "shout",
        "output_dir": str(tmp_path / "runs"),
        "model": {"base": str(tiny_model_dir)},
        "data": {"path": str(write_csv(tmp_path / "shout.csv", rows)), "id_column": "id", "max_tokens": 64},
        "split": {"train": 0.6, "val": 0.2, "test": 0.2},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "train": {"max_steps": 3, "batch_size": 4, "learning_rate": 5e-3, "eval_every": 3, "save_every": 3,
                  "precision": "fp32"},
        "eval": {"bootstrap": 100, "precision": "fp32", "max_new_tokens": 6},
    }  # fmt: skip
    yield raw
    unregister_task("shout")


def test_a_task_registered_in_process_goes_through_prepare_train_evaluate(shout):
    from adapterlab.stages.evaluate import evaluate
    from adapterlab.stages.prepare import prepare
    from adapterlab.stages.train import train

    recipe = recipe_from_dict(shout)
    assert type(recipe).__name__ == "ShoutRecipe" and get_task("shout") is TASKS["shout"]
    prepared = prepare(recipe)
    assert prepared.report["kept"] == 24 and sum(prepared.sizes.values()) == 24
    assert set(prepared.report["lengths"]["train"]) == {"total_tokens"}

    result = train(recipe)
    assert result.summary["task"] == "shout" and result.summary["steps"] == 3 and result.summary["train_tokens"] > 0
    assert (result.run.adapter / "adapter_model.safetensors").is_file()

    report = evaluate(result.run.root).report
    entry = report["metrics"]["exact_match"]
    assert 0 <= entry["base"] <= 1 and 0 <= entry["adapter"] <= 1 and entry["ci95"][0] <= entry["delta"]
    for name in ("predictions.jsonl", "report.json", "report.md", "report.html"):
        assert (result.run.eval / name).is_file(), name
    assert "| exact match |" in (result.run.eval / "report.md").read_text()


def test_the_registered_task_validates_only_its_own_keys(shout):
    shout["data"]["text_colum"] = "text"
    with pytest.raises(RecipeError, match=r"unknown key 'data\.text_colum'; did you mean data\.text_column\?"):
        recipe_from_dict(shout)
    del shout["data"]["text_colum"]
    shout["data"]["prompt_template"] = "{text}"
    with pytest.raises(RecipeError, match=r"unknown key 'data\.prompt_template' for task 'shout' .*task 'chat'"):
        recipe_from_dict(shout)


def test_a_second_task_under_a_taken_name_is_refused(shout):
    with pytest.raises(ValueError, match="already registered"):
        register_task(ShoutTask())
