"""The splitter on its own: fractions, strata and groups."""

from collections import Counter

from adapterlab.data.split import SplitKey, normalise_split_value, split_by_fractions

FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}


def test_fractions_on_plain_rows():
    keys = [SplitKey(id=str(i)) for i in range(100)]
    counts = Counter(split_by_fractions(keys, FRACTIONS, seed=1))
    assert counts == {"train": 80, "val": 10, "test": 10}


def test_seed_changes_membership_not_sizes():
    keys = [SplitKey(id=str(i)) for i in range(50)]
    a, b = split_by_fractions(keys, FRACTIONS, 1), split_by_fractions(keys, FRACTIONS, 2)
    assert Counter(a) == Counter(b)
    assert a != b
    assert a == split_by_fractions(keys, FRACTIONS, 1)


def test_stratification_keeps_proportions_of_a_rare_stratum():
    keys = [SplitKey(id=str(i), stratum="rare" if i < 20 else "common") for i in range(200)]
    assignment = split_by_fractions(keys, FRACTIONS, seed=3)
    rare = Counter(a for k, a in zip(keys, assignment, strict=True) if k.stratum == "rare")
    assert rare == {"train": 16, "val": 2, "test": 2}


def test_groups_stay_together_and_sizes_stay_close():
    keys = [SplitKey(id=str(i), group=f"g{i // 5}") for i in range(200)]  # 40 groups of 5
    assignment = split_by_fractions(keys, FRACTIONS, seed=4)
    by_group = {}
    for key, name in zip(keys, assignment, strict=True):
        by_group.setdefault(key.group, set()).add(name)
    assert all(len(s) == 1 for s in by_group.values())
    assert Counter(assignment) == {"train": 160, "val": 20, "test": 20}


def test_zero_fraction_split_stays_empty():
    keys = [SplitKey(id=str(i)) for i in range(10)]
    assert Counter(split_by_fractions(keys, {"train": 0.9, "val": 0.1, "test": 0.0}, 0)) == {"train": 9, "val": 1}


def test_split_value_aliases():
    assert [normalise_split_value(v) for v in ("Train", " validation ", "dev", "TEST", "holdout", None)] == [
        "train",
        "val",
        "val",
        "test",
        None,
        None,
    ]
