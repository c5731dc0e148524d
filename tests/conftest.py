"""Shared fixtures: tiny in-process models, small data files, recipes that point at them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from samples import review_rows, ticket_rows, write_csv
from tiny import build_model_dir

TIERS = {"integration", "e2e", "gpu", "vllm"}


def pytest_configure(config):
    # `make test` runs two pytest-xdist workers with --dist loadfile: a test file is one unit of work, so its module
    # fixtures (servers) start once, and tests that share an expensive session run live in one file.
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:  # each worker's torch gets its share of the cores (and so do the processes its tests start)
        threads = max(1, (os.cpu_count() or 1) // int(workers))
        os.environ["OMP_NUM_THREADS"] = str(threads)
        import torch

        torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    import torch

    for item in items:
        if not TIERS & {m.name for m in item.iter_markers()}:
            item.add_marker(pytest.mark.unit)
        if item.get_closest_marker("gpu") and not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_model_dir(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from adapterlab.models import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


@pytest.fixture
def tickets_csv(tmp_path) -> Path:
    return write_csv(tmp_path / "tickets.csv", ticket_rows())


@pytest.fixture
def recipe_dict(tmp_path, tiny_model_dir, tickets_csv) -> dict:
    """A complete chat recipe on the tiny model; tests copy and change it."""
    return {
        "name": "tiny",
        "task": "chat",
        "output_dir": str(tmp_path / "runs"),
        "model": {"base": str(tiny_model_dir)},
        "data": {
            "path": str(tickets_csv),
            "id_column": "ticket_id",
            "system_prompt": "You are the IT support team.",
            "prompt_template": "Subject: {subject}\n\n{body}",
            "target_column": "answer",
            "max_tokens": 256,
        },
        "split": {"train": 0.7, "val": 0.15, "test": 0.15, "stratify_by": "language"},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "train": {
            "max_steps": 4,
            "batch_size": 4,
            "learning_rate": 5e-3,
            "eval_every": 2,
            "save_every": 2,
            "log_every": 1,
            "precision": "fp32",
            "golden_prompts": 2,
        },
    }


@pytest.fixture
def make_recipe(recipe_dict):
    from adapterlab.registry import recipe_from_dict

    def make(overrides: list[str] | None = None):
        return recipe_from_dict(recipe_dict, overrides)

    return make


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tiny_model_dir) -> Path:
    """A run directory with a trained tiny adapter (12 steps), shared by chat and eval tests."""
    from adapterlab.registry import recipe_from_dict
    from adapterlab.stages.train import train

    tmp = tmp_path_factory.mktemp("trained")
    recipe = recipe_from_dict(
        {
            "name": "chat",
            "output_dir": str(tmp / "runs"),
            "model": {"base": str(tiny_model_dir)},
            "data": {
                "path": str(write_csv(tmp / "t.csv", ticket_rows())),
                "id_column": "ticket_id",
                "system_prompt": "You are the IT support team.",
                "prompt_template": "{body}",
                "target_column": "answer",
            },
            "split": {"train": 0.7, "val": 0.1, "test": 0.2, "stratify_by": "needs_details"},
            "lora": {"r": 8, "alpha": 16},
            "train": {"max_steps": 12, "learning_rate": 0.02, "precision": "fp32", "save_every": 50},
            "eval": {"max_new_tokens": 8, "bootstrap": 100, "precision": "fp32", "clarify_column": "needs_details"},
        }
    )
    return train(recipe).run.root


@pytest.fixture(scope="session")
def persona_run(tmp_path_factory, tiny_model_dir) -> Path:
    """A second chat adapter on the same tiny base, trained differently from trained_run."""
    from adapterlab.registry import recipe_from_dict
    from adapterlab.stages.train import train

    tmp = tmp_path_factory.mktemp("persona")
    rows = ticket_rows()
    for row in rows:
        row["answer"] = "Ahoy! " + row["answer"].upper()
    recipe = recipe_from_dict(
        {
            "name": "persona",
            "output_dir": str(tmp / "runs"),
            "model": {"base": str(tiny_model_dir)},
            "data": {
                "path": str(write_csv(tmp / "p.csv", rows)),
                "id_column": "ticket_id",
                "prompt_template": "{body}",
                "target_column": "answer",
            },
            "split": {"train": 0.8, "val": 0.1, "test": 0.1},
            "lora": {"r": 8, "alpha": 16},
            "train": {"max_steps": 12, "learning_rate": 0.03, "precision": "fp32", "save_every": 50},
            "eval": {"repetition_penalty": 1.3},  # saved with the adapter: the server's default for it
            "seed": 3,
        }
    )
    return train(recipe).run.root


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory) -> Path:
    from tiny import build_encoder_dir

    return build_encoder_dir(tmp_path_factory.mktemp("models") / "tiny-bert")


@pytest.fixture
def classify_dict(tmp_path, tiny_encoder_dir) -> dict:
    return classify_recipe(tmp_path, tiny_encoder_dir)


@pytest.fixture(scope="session")
def trained_classifier(tmp_path_factory, tiny_encoder_dir) -> Path:
    """A run directory with a trained tiny review classifier, shared by predict and serve tests."""
    from adapterlab.registry import recipe_from_dict
    from adapterlab.stages.train import train

    recipe = recipe_from_dict(classify_recipe(tmp_path_factory.mktemp("classifier"), tiny_encoder_dir))
    return train(recipe).run.root


def classify_recipe(tmp_path: Path, tiny_encoder_dir: Path) -> dict:
    return {
        "name": "reviews",
        "task": "classify",
        "output_dir": str(tmp_path / "runs"),
        "model": {"base": str(tiny_encoder_dir)},
        "data": {
            "path": str(write_csv(tmp_path / "reviews.csv", review_rows())),
            "id_column": "id",
            "text_columns": ["text"],
            "label_column": "category",
            "max_tokens": 64,
        },
        "split": {"train": 0.6, "val": 0.2, "test": 0.2},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "train": {
            "epochs": 2,
            "batch_size": 8,
            "learning_rate": 5e-3,
            "eval_every": "epoch",
            "save_every": "epoch",
            "log_every": 1,
            "precision": "fp32",
        },
        "eval": {"bootstrap": 100, "precision": "fp32"},
    }
