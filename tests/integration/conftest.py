"""The integration tier's shared runs: each trained once per session on the real embedded models."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def review_run(tmp_path_factory) -> tuple[Path, dict]:
    """The shipped review recipe (MiniLM, 11 classes) trained as shipped (train.epochs auto: 3) and evaluated: the
    run directory and what ``run`` returned. Tests may add to the run (exports, predictions) but not change what is
    there."""
    from adapterlab.registry import load_recipe
    from adapterlab.stages.pipeline import run

    output = tmp_path_factory.mktemp("review")
    recipe = load_recipe(
        "recipes/review-classify.yaml",
        [f"output_dir={output}", "select.contrastive_max_pairs=160"],  # CI time: 160 of 2608 pairs; epochs: auto (3)
    )
    return output / "review-classify", run(recipe)
