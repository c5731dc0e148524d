"""train/val/test assignment: seeded fractions, stratified and group-aware, or taken from a column or file.

Units are groups (rows sharing ``split.group_by``) or single rows. Within each stratum the units are shuffled
with the seed and each goes to the split furthest below its target row count, so group sizes may make the
fractions approximate but a group never straddles splits and every stratum is spread in proportion.
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from adapterlab.errors import DataError

SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
    "eval": "test",
}


@dataclass
class SplitKey:
    """What the splitter needs to know of one kept row."""

    id: str
    group: str | None = None
    stratum: str | None = None
    given: str | None = None  # a value from split.column


def normalise_split_value(value: str | None) -> str | None:
    return SPLIT_ALIASES.get((value or "").strip().lower())


def shuffled_units(keys: list[SplitKey], seed: int) -> tuple[dict[str, list[int]], list[list[str]]]:
    """The units (groups, or single rows) with their key indices, and per stratum (in a fixed order) its units
    shuffled with the seed. A group's stratum is its most common value, so a group is never cut to serve
    stratification."""
    units: dict[str, list[int]] = defaultdict(list)
    for index, key in enumerate(keys):
        units[key.group if key.group is not None else f"\0row{index}"].append(index)
    strata: dict[str, list[str]] = defaultdict(list)
    for unit, members in units.items():
        votes = Counter(keys[i].stratum or "" for i in members)
        strata[max(sorted(votes), key=votes.__getitem__)].append(unit)
    rng = random.Random(seed)
    ordered = []
    for stratum in sorted(strata):
        stratum_units = sorted(strata[stratum])
        rng.shuffle(stratum_units)
        ordered.append(stratum_units)
    return units, ordered


def split_by_fractions(keys: list[SplitKey], fractions: dict[str, float], seed: int) -> list[str]:
    """One split name per key, in order."""
    units, strata = shuffled_units(keys, seed)
    assignment = [""] * len(keys)
    for stratum_units in strata:
        size = sum(len(units[u]) for u in stratum_units)
        target = {name: fractions[name] * size for name in SPLITS}
        filled = dict.fromkeys(SPLITS, 0)
        for unit in stratum_units:
            name = max(SPLITS, key=lambda s: (target[s] - filled[s], fractions[s]))
            filled[name] += len(units[unit])
            for index in units[unit]:
                assignment[index] = name
    return assignment


def split_into_folds(keys: list[SplitKey], folds: int, seed: int) -> list[int]:
    """A fold index (0 .. folds-1) per key, in order: stratified and group-aware like :func:`split_by_fractions`
    (a group never straddles folds; each stratum is spread over the folds in proportion)."""
    units, strata = shuffled_units(keys, seed)
    assignment = [-1] * len(keys)
    filled = [0] * folds  # across strata too, so that small strata do not all land in the first fold
    for stratum_units in strata:
        here = [0] * folds
        for unit in stratum_units:
            fold = min(range(folds), key=lambda f: (here[f], filled[f], f))
            here[fold] += len(units[unit])
            filled[fold] += len(units[unit])
            for index in units[unit]:
                assignment[index] = fold
    return assignment


def load_split_ids(path: Path) -> dict[str, str]:
    """id -> split from a ``splits.json`` written by an earlier prepare."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        return {str(i): name for name in SPLITS for i in saved["ids"][name]}
    except FileNotFoundError:
        raise DataError(f"{path}: split.from_ids file not found") from None
    except (KeyError, TypeError, json.JSONDecodeError):
        raise DataError(f"{path}: not a splits.json written by adapterlab prepare (needs ids.train/val/test)") from None


def check_groups_disjoint(keys: list[SplitKey], assignment: list[str]) -> None:
    """A group in two splits leaks; with a split column or ids file that is the user's data to fix."""
    seen: dict[str, str] = {}
    for key, name in zip(keys, assignment, strict=True):
        if key.group is None or not name:
            continue
        if seen.setdefault(key.group, name) != name:
            raise DataError(
                f"group '{key.group}' (split.group_by) appears in both {seen[key.group]} and {name}; "
                "fix the split column or drop split.group_by"
            )
