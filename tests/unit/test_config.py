"""Recipes: validation before any model loads, one-line errors with suggestions, dotted overrides."""

from pathlib import Path

import pytest
import yaml

from adapterlab.config import parse_overrides, suggest_key
from adapterlab.errors import RecipeError
from adapterlab.registry import load_recipe, recipe_from_dict
from adapterlab.tasks.chat.config import ChatRecipe
from adapterlab.tasks.classify.config import ClassifyRecipe

RECIPES = sorted((Path(__file__).parents[2] / "recipes").glob("*.yaml"))


def write(tmp_path, data) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_every_shipped_recipe_parses(path):
    recipe = load_recipe(path)
    assert recipe.name == path.stem
    assert recipe.resolve_path(recipe.data.path).is_file()


def test_recipes_exist():
    assert any(p.name == "support-tickets.yaml" for p in RECIPES)


def test_unknown_key_suggests_the_right_one(tmp_path, recipe_dict):
    recipe_dict["lora"]["alpah"] = 16
    with pytest.raises(RecipeError) as err:
        load_recipe(write(tmp_path, recipe_dict))
    message = str(err.value)
    assert "unknown key 'lora.alpah'" in message
    assert "did you mean lora.alpha?" in message
    assert "\n" not in message


def test_unknown_key_in_the_wrong_section_points_to_its_home():
    assert suggest_key("lora.learning_rate", ChatRecipe) == "train.learning_rate"
    assert suggest_key("train.epoch", ChatRecipe) == "train.epochs"


@pytest.mark.parametrize(
    ("key", "value"), [("train.focal_gamma", 2.0), ("data.label_column", "y"), ("weak_label", {"threshold": 0.7})]
)
def test_a_classify_key_in_a_chat_recipe_is_unknown_and_named_as_classify(recipe_dict, key, value):
    with pytest.raises(RecipeError) as err:
        recipe_from_dict(recipe_dict, {key: value})
    assert f"unknown key '{key}' for task 'chat' (it belongs to task 'classify')" in str(err.value)


def test_a_chat_key_in_a_classify_recipe_is_unknown(classify_dict):
    classify_dict["eval"]["max_new_tokens"] = 12
    with pytest.raises(RecipeError, match=r"unknown key 'eval\.max_new_tokens' for task 'classify'"):
        recipe_from_dict(classify_dict)


def test_unknown_task_gets_a_suggestion(recipe_dict):
    recipe_dict["task"] = "clasify"
    with pytest.raises(RecipeError, match="unknown task 'clasify'; did you mean 'classify'"):
        recipe_from_dict(recipe_dict)


def test_unknown_metric_names_the_known_ones(recipe_dict):
    expected = r"eval\.metrics=\['rogue'\]: unknown metric 'rogue'; choose from perplexity, rouge"
    with pytest.raises(RecipeError, match=expected):
        recipe_from_dict(recipe_dict, ["eval.metrics=[rogue]"])


def test_wrong_type_names_key_and_value(recipe_dict):
    recipe_dict["lora"]["r"] = "sixteen"
    with pytest.raises(RecipeError, match=r"lora\.r: .*integer.*'sixteen'"):
        recipe_from_dict(recipe_dict)


@pytest.mark.parametrize(
    ("section", "key", "value", "pattern"),
    [
        ("lora", "r", 0, r"lora\.r: .*greater than 0"),
        ("lora", "dropout", 1.5, r"lora\.dropout"),
        ("train", "learning_rate", -1, r"train\.learning_rate"),
        ("data", "max_tokens", 4, r"data\.max_tokens"),
    ],
)
def test_impossible_values(recipe_dict, section, key, value, pattern):
    recipe_dict[section][key] = value
    with pytest.raises(RecipeError, match=pattern):
        recipe_from_dict(recipe_dict)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "train.epochs=three",
            "override train.epochs='three': Input should be a valid number, unable to parse string "
            "as a number, or 'auto' (got 'three')",
        ),
        ("data.max_tokens=0", "override data.max_tokens=0: Input should be greater than 16, or 'auto' (got 0)"),
    ],
)
def test_a_value_that_fits_no_type_of_a_key_is_one_message_without_pydantic_labels(classify_dict, override, expected):
    """A key that takes a number or 'auto': pydantic reports each type it tried under its own label
    (``train.epochs.constrained-float``, ``train.epochs.literal['auto']``); the user reads one message."""
    with pytest.raises(RecipeError) as raised:
        recipe_from_dict(classify_dict, [override])
    assert str(raised.value).endswith(": " + expected) and "constrained" not in str(raised.value)


def test_text_columns_take_one_name_and_refuse_none(classify_dict):
    assert recipe_from_dict(classify_dict, ["data.text_columns=text"]).data.text_columns == ["text"]
    with pytest.raises(RecipeError, match=r"override data\.text_columns=\[\]: name at least one text column$"):
        recipe_from_dict(classify_dict, ["data.text_columns=[]"])


def test_split_fractions_past_one(recipe_dict):
    recipe_dict["split"].update(train=0.8, val=0.2, test=0.1)
    with pytest.raises(RecipeError, match=r"sum to 1\.1; they must sum to 1"):
        recipe_from_dict(recipe_dict)


def test_chat_task_needs_template(recipe_dict):
    del recipe_dict["data"]["prompt_template"]
    with pytest.raises(RecipeError, match="task 'chat' needs data.prompt_template"):
        recipe_from_dict(recipe_dict)


def test_template_with_bad_placeholder(recipe_dict):
    recipe_dict["data"]["prompt_template"] = "Subject: {subject!}"
    with pytest.raises(RecipeError, match="prompt_template"):
        recipe_from_dict(recipe_dict)


def test_dotted_overrides_are_typed_yaml(recipe_dict):
    recipe = recipe_from_dict(recipe_dict, ["train.max_steps=20", "lora.r=8", "lora.target_modules=[q_proj,v_proj]"])
    assert recipe.train.max_steps == 20
    assert recipe.lora.r == 8
    assert recipe.lora.target_modules == ["q_proj", "v_proj"]


def test_override_of_unknown_key_is_reported_as_such(recipe_dict):
    with pytest.raises(RecipeError, match=r"unknown key 'train\.max_step'; did you mean train\.max_steps\?"):
        recipe_from_dict(recipe_dict, ["train.max_step=3"])


def test_malformed_override():
    with pytest.raises(RecipeError, match="not of the form key.path=value"):
        parse_overrides(["train.max_steps"])


def test_override_bad_value_names_the_override(recipe_dict):
    with pytest.raises(RecipeError, match=r"override train\.batch_size=0"):
        recipe_from_dict(recipe_dict, ["train.batch_size=0"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(RecipeError, match=r"bad\.yaml line \d+: not valid YAML"):
        load_recipe(bad)


def test_resolved_yaml_round_trips(tmp_path, recipe_dict):
    recipe = recipe_from_dict(recipe_dict, ["lora.r=8"])
    again = recipe_from_dict(yaml.safe_load(recipe.to_yaml()))
    assert again == recipe


def test_name_defaults_to_file_stem_and_data_path_falls_back_to_recipe_dir(tmp_path, recipe_dict):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "rows.csv").write_text("a,b\n1,2\n")
    del recipe_dict["name"]
    recipe_dict["data"]["path"] = "rows.csv"
    path = tmp_path / "sub" / "my-recipe.yaml"
    path.write_text(yaml.safe_dump(recipe_dict))
    recipe = load_recipe(path)
    assert recipe.name == "my-recipe"
    assert recipe.resolve_path(recipe.data.path) == tmp_path / "sub" / "rows.csv"


def test_early_stopping_needs_saves_on_eval_steps(recipe_dict):
    recipe_dict["train"].update(early_stopping_patience=2, eval_every=4, save_every=6)
    with pytest.raises(RecipeError, match="multiple of train.eval_every"):
        recipe_from_dict(recipe_dict)


def test_every_recipe_key_is_documented():
    from adapterlab.registry import all_recipe_keys

    docs = (Path(__file__).parents[2] / "docs" / "recipes.md").read_text()
    sections = {"model", "data", "split", "lora", "train", "eval", "weak_label", "augment", "rebalance"}
    for task, keys in all_recipe_keys().items():
        missing = [k for k in keys if k not in sections and f"`{k}`" not in docs]
        assert not missing, f"keys of task {task} missing from docs/recipes.md: {missing}"


def test_optional_sections_get_suggestions_too(recipe_dict):
    assert suggest_key("augment.copy", ClassifyRecipe) == "augment.copies"
    recipe_dict.update(task="classify", data={"path": "x.csv", "text_columns": ["text"], "label_column": "y"})
    recipe_dict["weak_label"] = {"treshold": 0.7}
    with pytest.raises(RecipeError, match="did you mean weak_label.threshold"):
        recipe_from_dict(recipe_dict)
