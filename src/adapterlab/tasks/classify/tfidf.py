"""The TF-IDF + logistic-regression model as a shippable classifier part, saved without pickle.

The evaluation's baseline (:func:`adapterlab.metrics.classification.tfidf_baseline`: word 1-2-grams and
character 2-5-grams, sublinear TF, balanced class weights) can also be what a run ships, alone or averaged with
the other parts' probabilities (:mod:`adapterlab.tasks.classify.select`). A pickled scikit-learn
pipeline would run arbitrary code when a shared adapter is loaded, so the fitted numbers are saved instead:
the vocabularies as JSON, the IDF weights and the logistic regression's coefficients as safetensors. Loading
rebuilds the features with the vectorizers' own n-gram analyzers and the same arithmetic (sublinear TF x IDF, L2
per part) and reproduces the pipeline's probabilities (tested).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

TFIDF_JSON, TFIDF_WEIGHTS = "tfidf.json", "tfidf.safetensors"


@dataclass
class TfidfModel:
    parts: list[dict[str, Any]]  # per feature part: analyzer, ngram_range, lowercase, vocabulary {term: column}
    idf: list[np.ndarray]
    coef: np.ndarray  # (classes or 1, features)
    intercept: np.ndarray
    columns: list[int]  # label id of each of the regression's classes
    num_labels: int
    _analyzers_cache: list[Any] | None = field(default=None, init=False, repr=False)

    @classmethod
    def fit(cls, texts: list[str], labels: list[int], num_labels: int, seed: int = 0) -> TfidfModel:
        from adapterlab.metrics.classification import tfidf_baseline

        pipeline = tfidf_baseline(texts, labels, seed)
        union, regression = pipeline.steps[0][1], pipeline.steps[-1][1]
        parts, idf = [], []
        for _, vectorizer in union.transformer_list:
            vocabulary = {term: int(column) for term, column in vectorizer.vocabulary_.items()}
            parts.append({"analyzer": vectorizer.analyzer, "ngram_range": list(vectorizer.ngram_range),
                          "lowercase": vectorizer.lowercase, "vocabulary": vocabulary})  # fmt: skip
            idf.append(np.asarray(vectorizer.idf_, dtype=np.float64))
        return cls(parts, idf, np.asarray(regression.coef_, dtype=np.float64),
                   np.asarray(regression.intercept_, dtype=np.float64), [int(c) for c in regression.classes_],
                   num_labels)  # fmt: skip

    def _analyzers(self) -> list[tuple[Any, dict[str, int], np.ndarray, int]]:
        """Per feature part: the n-gram analyzer (lower-casing and tokenising as the fitted vectorizer did), its
        vocabulary, its IDF weights and its first column in the regression's features; built once."""
        if self._analyzers_cache is None:
            from sklearn.feature_extraction.text import CountVectorizer

            analyzers, offset = [], 0
            for part, idf in zip(self.parts, self.idf, strict=True):
                counter = CountVectorizer(
                    analyzer=part["analyzer"], ngram_range=tuple(part["ngram_range"]), lowercase=part["lowercase"],
                )  # fmt: skip
                analyzers.append((counter.build_analyzer(), part["vocabulary"], idf, offset))
                offset += len(idf)
            self._analyzers_cache = analyzers
        return self._analyzers_cache

    def scores(self, text: str) -> np.ndarray:
        """The regression's decision scores (classes or 1,) for one text: each part's n-gram counts, sublinear TF x
        IDF, L2-normalised, dotted with that part's coefficients. Plain numpy on the few columns a text has: at
        batch 1 scipy's sparse matrices cost ~1 ms of overhead for ~0.1 ms of work."""
        total = self.intercept.copy()
        for analyze, vocabulary, idf, offset in self._analyzers():
            counts: dict[int, int] = {}
            for gram in analyze(text):
                column = vocabulary.get(gram)
                if column is not None:
                    counts[column] = counts.get(column, 0) + 1
            if not counts:
                continue
            columns = np.fromiter(counts, dtype=np.int64, count=len(counts))
            values = (np.log(np.fromiter(counts.values(), dtype=np.float64, count=len(counts))) + 1.0) * idf[columns]
            total += self.coef[:, columns + offset] @ (values / np.linalg.norm(values))
        return total

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """(n, num_labels) probabilities, as the fitted pipeline's ``predict_proba`` (labels it never saw get 0)."""
        if not texts:
            return np.zeros((0, self.num_labels), dtype=np.float32)
        return logistic_proba(np.stack([self.scores(text) for text in texts]), self.columns, self.num_labels)

    def save(self, folder: Path) -> None:
        from safetensors.numpy import save_file

        folder = Path(folder)
        meta = {"parts": self.parts, "columns": self.columns, "num_labels": self.num_labels}
        (folder / TFIDF_JSON).write_text(json.dumps(meta, ensure_ascii=False))
        arrays = {f"idf_{i}": idf for i, idf in enumerate(self.idf)} | {"coef": self.coef, "intercept": self.intercept}
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(folder / TFIDF_WEIGHTS))

    @classmethod
    def load(cls, folder: Path) -> TfidfModel:
        from safetensors.numpy import load_file

        folder = Path(folder)
        meta = json.loads((folder / TFIDF_JSON).read_text())
        arrays = load_file(str(folder / TFIDF_WEIGHTS))
        idf = [arrays[f"idf_{i}"] for i in range(len(meta["parts"]))]
        return cls(meta["parts"], idf, arrays["coef"], arrays["intercept"], meta["columns"], meta["num_labels"])

    @staticmethod
    def files() -> tuple[str, str]:
        return TFIDF_JSON, TFIDF_WEIGHTS


def logistic_proba(scores: np.ndarray, columns: list[int], num_labels: int) -> np.ndarray:
    """A fitted scikit-learn ``LogisticRegression``'s ``predict_proba`` from its decision scores (n, classes or 1),
    spread over ``num_labels`` columns (labels it never saw get 0)."""
    if scores.shape[1] == 1:  # two classes: one logistic score for the second
        second = 1.0 / (1.0 + np.exp(-scores[:, 0]))
        known = np.stack([1.0 - second, second], axis=1)
    else:
        shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
        known = shifted / shifted.sum(axis=1, keepdims=True)
    probs = np.zeros((len(scores), num_labels), dtype=np.float32)
    probs[:, columns] = known
    return probs
