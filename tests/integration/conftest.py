"""The integration tier's shared runs: each trained once per session on the real embedded models. The tests that
share one live in one file, so that under pytest-xdist's --dist loadfile (make test) one worker trains it once."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def review_run(tmp_path_factory) -> tuple[Path, dict]:
    """The shipped review recipe (MiniLM, 11 classes) trained as shipped but shorter and evaluated: the
    run directory and what ``run`` returned. Tests may add to the run (exports, predictions) but not change what is
    there."""
    from adapterlab.registry import load_recipe
    from adapterlab.stages.pipeline import run

    output = tmp_path_factory.mktemp("review")
    recipe = load_recipe(
        "recipes/review-classify.yaml",
        # CI time: 160 of 2608 contrastive pairs, 2 epochs instead of auto's 3
        [f"output_dir={output}", "select.contrastive_max_pairs=160", "train.epochs=2"],
    )
    return output / "review-classify", run(recipe)


@pytest.fixture(scope="session")
def support_run(tmp_path_factory) -> tuple[Path, dict]:
    """The support-ticket recipe trained (3 steps) and evaluated on 10 test tickets once per session: the run
    directory and what ``run`` returned. Tests may add to the run (exports) but not change what is there."""
    from adapterlab.registry import load_recipe
    from adapterlab.stages.pipeline import run

    output = tmp_path_factory.mktemp("support")
    small = ["train.max_steps=3", "train.batch_size=4", "train.eval_every=3", "train.save_every=3"]
    small += ["train.log_every=1", "data.max_tokens=256", "train.golden_prompts=1"]
    small += ["split.train=0.85", "split.val=0.05"]  # CI time: validation loss on 16 rows, not 32
    evaluation = ["eval.max_examples=10", "eval.max_new_tokens=48", "eval.bootstrap=200"]
    recipe = load_recipe("recipes/support-tickets.yaml", [*small, *evaluation, f"output_dir={output}"])
    return output / "support-tickets", run(recipe)
