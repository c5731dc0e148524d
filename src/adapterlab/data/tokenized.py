"""``data/tokenized``: the token ids the trainer reads, one Arrow dataset per split, written once by prepare.

A split with no rows (``split.val: 0``, or a small file) is left out when writing, because a saved dataset of no
rows cannot be read back (``datasets`` finds no table in it); reading gives ``None`` for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SPLITS = ("train", "val", "test")


def save_tokenized(path: Path, columns_by_split: dict[str, dict[str, list]], features: Any) -> None:
    from datasets import Dataset, DatasetDict

    kept = {name: columns for name, columns in columns_by_split.items() if any(len(v) for v in columns.values())}
    DatasetDict({name: Dataset.from_dict(c, features=features) for name, c in kept.items()}).save_to_disk(str(path))


def load_tokenized(path: Path) -> dict[str, Any]:
    """Each split's dataset, or None for a split with no rows."""
    from datasets import load_from_disk

    data = load_from_disk(str(path))
    return {name: data[name] if name in data and len(data[name]) else None for name in SPLITS}
