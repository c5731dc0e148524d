"""The classification half of ``prepare``, after the rows are cleaned, checked and split.

Order matters for honest numbers: the label map comes from the training split; weak labels, augmented copies and
rebalancing touch the training split only (validation and test stay human-labelled and untouched); every row
that is not used is counted with its reason.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from adapterlab.console import console
from adapterlab.data.load import RowLedger, read_table, require_columns
from adapterlab.runs import SPLITS
from adapterlab.task import Dropped
from adapterlab.tasks.classify.config import ClassifyRecipe
from adapterlab.tasks.classify.format import ClassifyExample, ClassifyFormatter, auto_max_tokens, cut, special_tokens


def label_set(recipe: ClassifyRecipe, train: list[ClassifyExample]) -> list[str]:
    """Labels in a fixed order: the recipe's ``data.labels``, else the training split's, sorted."""
    return list(recipe.data.labels) if recipe.data.labels else sorted({e.label for e in train if e.label})


def drop_unmapped(by_split: dict[str, list[ClassifyExample]], labels: list[str], ledger: RowLedger, fixed: bool):
    """Validation/test rows whose label the model cannot predict are counted, not silently scored as errors."""
    known = set(labels)
    for name in SPLITS:
        kept = []
        for example in by_split[name]:
            if example.label in known:
                kept.append(example)
                continue
            ledger.unkeep(example.truncated)
            reason = "unknown_label" if fixed else "label_not_in_train"
            detail = (f"label '{example.label}' is not in data.labels" if fixed
                      else f"label '{example.label}' has no training example")  # fmt: skip
            ledger.drop(example.meta["row"], reason, detail, example.meta["id"], fatal=fixed)
        by_split[name] = kept


def weak_pool_from_file(recipe: ClassifyRecipe, formatter: ClassifyFormatter) -> tuple[list, dict[str, Any]]:
    """Unlabeled rows from ``weak_label.path``: cleaned and tokenised; unusable ones counted."""
    cfg = recipe.weak_label
    path = recipe.resolve_path(cfg.path)
    table = read_table(path, "auto", recipe.data.encoding)
    require_columns(table, {c: "data.text_columns" for c in recipe.data.text_columns or []})
    table.reject(table.type_problems({c: "text" for c in recipe.data.text_columns or []}))
    pool, dropped = [], Counter(b.reason for b in table.bad)
    for number, row in zip(table.numbers, table.rows, strict=True):
        result = formatter.format(row, need_label=False)
        if isinstance(result, Dropped):
            dropped[result.reason] += 1
            continue
        result.meta = {"id": f"weak:{number}", "row": number, "source": row, "file": str(path)}
        pool.append(result)
    return pool, {"source": str(path), "input_rows": table.n_records, "unusable": dict(+dropped)}


def apply_weak_labels(recipe: ClassifyRecipe, pool: list[ClassifyExample], labels: list[str], ledger: RowLedger | None):
    """Label the pool; return (kept examples, report). Pool rows from the main file are settled in ``ledger``."""
    from adapterlab.tasks.classify.weak_label import weak_labels

    cfg = recipe.weak_label
    guesses = weak_labels([e.text for e in pool], labels, recipe.data.label_descriptions, cfg)
    kept, grey, below = [], [], 0
    for example, guess in zip(pool, guesses, strict=True):
        example.meta.update(weak=True, confidence=round(guess.confidence, 4))
        if guess.confidence >= cfg.threshold:
            example.label = guess.label
            kept.append(example)
            if ledger is not None:
                ledger.keep(example.truncated)
            continue
        in_grey = guess.confidence >= cfg.threshold - cfg.grey_zone
        if in_grey:
            grey.append({"id": example.meta["id"], "text": example.text[:200], "label": guess.label,
                         "runner_up": guess.runner_up, "confidence": round(guess.confidence, 4)})  # fmt: skip
        else:
            below += 1
        if ledger is not None:
            reason = "weak_label_grey_zone" if in_grey else "weak_label_low_confidence"
            detail = f"zero-shot confidence {guess.confidence:.2f} < weak_label.threshold {cfg.threshold}"
            ledger.drop(example.meta["row"], reason, detail, example.meta["id"], fatal=False)
    report = {
        "method": cfg.method,
        "model": cfg.model,
        "threshold": cfg.threshold,
        "pool": len(pool),
        "kept": len(kept),
        "grey_zone": len(grey),
        "below": below,
        "kept_by_label": dict(sorted(Counter(e.label for e in kept).items())),
        "grey_zone_examples": sorted(grey, key=lambda g: -g["confidence"])[:30],
    }
    return kept, report


def augment_training(recipe: ClassifyRecipe, train: list[ClassifyExample], formatter: ClassifyFormatter, seed: int):
    """Augmented copies of selected training rows, marked and grouped with their source row."""
    from adapterlab.tasks.classify.augment import backtranslate, eda, rewrite

    cfg = recipe.augment
    counts = Counter(e.label for e in train)
    chosen = [
        e
        for e in train
        if not e.meta.get("weak")
        and (cfg.classes is None or e.label in cfg.classes)
        and (cfg.below_count is None or counts[e.label] < cfg.below_count)
    ]
    rng = random.Random(seed)
    texts = [eda(e.text, rng, cfg.p_swap, cfg.p_delete, cfg.p_insert) for e in chosen for _ in range(cfg.copies)]
    sources = [e for e in chosen for _ in range(cfg.copies)]
    kinds = ["eda"] * len(texts)
    if cfg.paraphrase_model:
        texts += rewrite([e.text for e in chosen], cfg.paraphrase_model)
        sources += chosen
        kinds += ["paraphrase"] * len(chosen)
    if cfg.backtranslate:
        texts += backtranslate([e.text for e in chosen], *cfg.backtranslate)
        sources += chosen
        kinds += ["backtranslate"] * len(chosen)
    added, skipped = [], Counter()
    for number, (text, source, kind) in enumerate(zip(texts, sources, kinds, strict=True), 1):
        # Model-written text goes through the same cleaning and length rules as every input row, so training
        # never sees text that prediction (which cleans its input) would not.
        example = formatter.format_text(text, source.label)
        if isinstance(example, Dropped):
            skipped[example.reason] += 1
            continue
        if example.text == source.text:
            skipped["same_as_source"] += 1
            continue
        example.meta = {"id": f"{source.meta['id']}#aug{number}", "row": source.meta["row"], "augmented": kind,
                        "source_id": source.meta["id"], "source": source.meta["source"]}  # fmt: skip
        added.append(example)
    by_label = dict(Counter(e.label for e in added))
    return added, {"selected_rows": len(chosen), "added": len(added), "by_label": by_label, "skipped": dict(skipped)}


def rebalance(recipe: ClassifyRecipe, train: list[ClassifyExample], seed: int):
    """Per-class quotas on the training split: undersample to max, duplicate up to min (duplicates are marked)."""
    cfg = recipe.rebalance
    rng = random.Random(seed)
    by_label: dict[str, list[ClassifyExample]] = {}
    for example in train:
        by_label.setdefault(example.label, []).append(example)
    result, removed, added = [], Counter(), Counter()
    for label in sorted(by_label):
        rows = by_label[label]
        if cfg.max_per_class and len(rows) > cfg.max_per_class:
            removed[label] = len(rows) - cfg.max_per_class
            rows = rng.sample(rows, cfg.max_per_class)
        if cfg.min_per_class and len(rows) < cfg.min_per_class:
            extra = [rng.choice(rows) for _ in range(cfg.min_per_class - len(rows))]
            added[label] = len(extra)
            rows = rows + [ClassifyExample(e.text, e.label, e.input_ids, e.truncated,
                                           {**e.meta, "oversampled": True}) for e in extra]  # fmt: skip
        result.extend(rows)
    rng.shuffle(result)
    return result, {"removed": dict(removed), "duplicated": dict(added)}


def settle_max_tokens(by_split, pool: list[ClassifyExample], ledger: RowLedger, formatter: ClassifyFormatter) -> int:
    """``data.max_tokens: auto``: the limit from the training texts' lengths (:func:`auto_max_tokens`); every
    example is shortened to it and the ledger's truncated count follows."""
    limit = auto_max_tokens([e.full_tokens for e in by_split["train"]], formatter.max_tokens)
    formatter.max_tokens = limit
    specials = special_tokens(formatter.tokenizer)
    for example in [e for rows in by_split.values() for e in rows] + pool:
        if len(example.input_ids) > limit:
            example.input_ids = cut(formatter.tokenizer(example.text)["input_ids"], limit, formatter.truncation,
                                    specials)  # fmt: skip
            if not example.truncated and not example.pending:
                ledger.truncated += 1
            example.truncated = True
    console.print(f"data.max_tokens: auto -> {limit} tokens (90th percentile of the training texts' lengths)")
    return limit


POOR_UNKNOWN_SHARE = 0.05  # all-MiniLM-L6-v2 maps 64 % of Chinese review tokens to [UNK]; English: 0 %
POOR_TOKENS_PER_WORD = 2.2  # English prose 1.2-1.4, noisy English tweets 2.0; Slovenian 2.5, Russian 3.5 (MiniLM)


def vocabulary_fit(texts: list[str], tokenizer, sample: int = 500) -> dict[str, Any]:
    """How well the base model's tokenizer fits the training texts: the share of unknown tokens and the tokens per
    whitespace word (for scripts written with spaces). A vocabulary that does not know the language shows as
    many unknown tokens or as words cut into many pieces; an encoder then reads little of the text."""
    texts = [t for t in texts[:sample] if t.strip()]
    if not texts:
        return {"unknown_share": 0.0, "tokens_per_word": None, "poor": False}
    ids = tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    tokens = sum(len(i) for i in ids) or 1
    unk = tokenizer.unk_token_id
    unknown = sum(i.count(unk) for i in ids) / tokens if unk is not None else 0.0
    words = sum(len(t.split()) for t in texts)
    spaced = sum(len(t) for t in texts) / max(words, 1) < 15  # Chinese, Japanese, Thai: no spaces between words
    per_word = tokens / words if spaced and words else None
    poor = unknown > POOR_UNKNOWN_SHARE or (per_word is not None and per_word > POOR_TOKENS_PER_WORD)
    return {"unknown_share": round(unknown, 4), "tokens_per_word": round(per_word, 2) if per_word else None,
            "poor": poor}  # fmt: skip


def poor_fit_warning(fit: dict[str, Any]) -> str:
    per_word = f"{fit['tokens_per_word']} tokens per word" if fit["tokens_per_word"] else "no spaces between words"
    return (f"the base model's vocabulary fits these texts poorly ({fit['unknown_share']:.0%} unknown tokens, "
            f"{per_word}; English prose gives 0% and about 1.3): it may not know their language, and a fine-tuned "
            "encoder then rarely beats TF-IDF (which reads any script; the run still chooses what ships on "
            "validation). Give a model that knows the language in model.base (a local multilingual encoder "
            "directory)")  # fmt: skip


def label_warnings(labels: list[str], column: str) -> list[str]:
    """What the label column's values suggest went wrong: a column of ids or texts (nearly every value its own
    class), one class spelt several ways (case, spacing), numbers among words. Each stays a class of its own."""
    warnings = []
    counts = Counter(labels)
    if len(labels) >= 10 and len(counts) > len(labels) / 2:
        warnings.append(
            f"label column '{column}' has {len(counts)} different values in {len(labels)} rows: is it the right "
            "column (not an id or the text)? a class needs several examples to be learnt (data.label_column)"
        )
    spellings: dict[str, set[str]] = {}
    for label in counts:
        spellings.setdefault(" ".join(label.split()).casefold(), set()).add(label)
    variants = [sorted(group) for group in spellings.values() if len(group) > 1]
    if variants:
        shown = ", ".join(" / ".join(repr(v) for v in group) for group in variants[:5])
        warnings.append(
            f"label column '{column}': {len(variants)} label(s) spelt in more than one way, each spelling a class "
            f"of its own: {shown}; write each label one way in the data"
        )
    numbers = sorted(label for label in counts if label.strip().lstrip("+-").replace(".", "", 1).isdigit())
    if numbers and len(numbers) < len(counts):
        shown = ", ".join(repr(n) for n in numbers[:5])
        warnings.append(
            f"label column '{column}' mixes numbers ({shown}: {sum(counts[n] for n in numbers)} rows) with words; "
            "each number is a class of its own"
        )
    return warnings


def finish(recipe: ClassifyRecipe, by_split, pool, ledger: RowLedger, formatter: ClassifyFormatter) -> dict[str, Any]:
    """Label map, weak labels, augmentation and quotas; returns the classification part of data_report.json."""
    ledger.warnings += label_warnings([e.label for rows in by_split.values() for e in rows if e.label is not None],
                                      recipe.data.label_column or "")  # fmt: skip
    labels = label_set(recipe, by_split["train"])
    drop_unmapped(by_split, labels, ledger, fixed=bool(recipe.data.labels))
    report: dict[str, Any] = {"labels": labels}
    if recipe.data.max_tokens == "auto":  # before weak labels and augmentation, which are encoded at the result
        report["max_tokens"] = settle_max_tokens(by_split, pool, ledger, formatter)
    report["truncation"] = formatter.truncation
    report["vocabulary"] = vocabulary_fit([e.text for e in by_split["train"]], formatter.tokenizer)
    if report["vocabulary"]["poor"]:
        ledger.warnings.append(poor_fit_warning(report["vocabulary"]))
    if recipe.weak_label is not None:
        from_file = recipe.weak_label.path is not None
        if from_file:
            pool, report["weak_label_source"] = weak_pool_from_file(recipe, formatter)
        kept, report["weak_label"] = apply_weak_labels(recipe, pool, labels, None if from_file else ledger)
        by_split["train"] += kept
        console.print(
            f"Weak labels: {len(kept)} of {len(pool)} unlabeled rows kept (confidence >= "
            f"{recipe.weak_label.threshold}), {report['weak_label']['grey_zone']} in the grey zone"
        )
    if recipe.augment is not None:
        added, report["augment"] = augment_training(recipe, by_split["train"], formatter, recipe.seed)
        by_split["train"] += added
    if recipe.rebalance is not None:
        by_split["train"], report["rebalance"] = rebalance(recipe, by_split["train"], recipe.seed)
    report["classes"] = {name: dict(sorted(Counter(e.label for e in rows).items())) for name, rows in by_split.items()}
    counts = [c for c in report["classes"]["train"].values() if c]
    report["imbalance_ratio"] = round(max(counts) / min(counts), 2) if counts else None
    return report
