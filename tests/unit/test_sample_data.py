"""The bundled research-assistant data: articles with abstracts, and code tasks whose every reference solution
passes its own tests in the sandbox (a broken reference would fail the base and the adapter alike)."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

DATA = Path(__file__).parents[2] / "examples" / "data"


def test_articles_have_abstracts_of_one_to_three_sentences():
    from adapterlab.metrics.text import sentences, word_count

    with (DATA / "articles.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) >= 300 and len({r["article_id"] for r in rows}) == len(rows)
    assert set(Counter(r["category"] for r in rows).values()) == {60}  # five kinds of article, 60 each
    for row in rows:
        assert 150 <= word_count(row["article"]) <= 620, row["article_id"]
        assert 1 <= len(sentences(row["abstract"])) <= 3, row["article_id"]


def test_every_reference_solution_passes_its_tests_in_the_sandbox():
    from adapterlab.sandbox import Sandbox, check_program
    from adapterlab.sandbox.humaneval import humaneval

    tasks = [json.loads(line) for line in (DATA / "code_tasks.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(tasks) >= 300 and len({t["task_id"] for t in tasks}) == len(tasks)
    for task in tasks:
        assert task["tests"].count("assert") >= 3, task["task_id"]
        assert f"`{task['entry_point']}" in task["instruction"], task["task_id"]
    # HumanEval is the held-out benchmark: none of its functions is a training task.
    assert not {t["entry_point"] for t in tasks} & {p.entry_point for p in humaneval().values()}
    verdicts = Sandbox().run([check_program(t["solution"], t["tests"], t["entry_point"]) for t in tasks], label=None)
    failing = [(t["task_id"], v.detail) for t, v in zip(tasks, verdicts, strict=True) if not v.passed]
    assert not failing
