"""Text metrics, each from a well-kept library, as per-example statistics that add up to the corpus value.

A metric is computed for a list of replies against a list of references and returns a
:class:`~adapterlab.metrics.stats.MetricStats`: one row of sufficient statistics per example and a ``reduce``
that turns summed rows into the corpus value. The paired bootstrap (:mod:`adapterlab.metrics.bootstrap`)
resamples those rows, so corpus-level metrics (BLEU, chrF, perplexity) get intervals computed exactly like their
point value.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

from adapterlab.metrics.stats import MetricStats, mean_stats

# \w is Unicode-aware: umlauts, accents and Cyrillic stay inside words.
_WORD = re.compile(r"\w+")
_QUESTION = re.compile(r"[?¿？؟]")


class UnicodeWordTokenizer:
    """rouge-score's default tokenizer keeps only [a-z0-9]: German words are cut at every umlaut and Russian
    text disappears entirely. This one lower-cases (casefold) and keeps Unicode word characters."""

    def tokenize(self, text: str) -> list[str]:
        return _WORD.findall(text.casefold())


def rouge(replies: Sequence[str], references: Sequence[str]) -> dict[str, MetricStats]:
    """ROUGE-1/2/L/Lsum F1 (``rouge-score``), averaged over examples; Lsum splits summaries at newlines."""
    from rouge_score import rouge_scorer

    types = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
    scorer = rouge_scorer.RougeScorer(types, tokenizer=UnicodeWordTokenizer())
    scores = [scorer.score(ref, hyp) for hyp, ref in zip(replies, references, strict=True)]
    return {t: mean_stats([s[t].fmeasure for s in scores]) for t in types}


def _sacrebleu_stats(corpus_metric, sentence_metric, replies: Sequence[str], references: Sequence[str]) -> MetricStats:
    # sacrebleu computes a corpus score from summed per-segment statistics (its own significance tests resample
    # them the same way); we keep the segments so that the bootstrap can resample them.
    segments = corpus_metric._extract_corpus_statistics(list(replies), [list(references)])
    sentence = [sentence_metric.sentence_score(h, [r]).score for h, r in zip(replies, references, strict=True)]

    def reduce(summed: np.ndarray) -> float:
        return float(corpus_metric._compute_score_from_stats(summed.round().astype(int).tolist()).score)

    return MetricStats(np.asarray(segments, dtype=float), reduce, np.asarray(sentence))


def bleu(replies: Sequence[str], references: Sequence[str]) -> MetricStats:
    """Corpus BLEU (``sacrebleu``, the language-independent ``intl`` tokenizer), 0-100."""
    from sacrebleu.metrics import BLEU

    return _sacrebleu_stats(BLEU(tokenize="intl"), BLEU(tokenize="intl", effective_order=True), replies, references)


def chrf(replies: Sequence[str], references: Sequence[str]) -> MetricStats:
    """Corpus chrF (``sacrebleu``), 0-100."""
    from sacrebleu.metrics import CHRF

    return _sacrebleu_stats(CHRF(), CHRF(), replies, references)


def bertscore(replies: Sequence[str], references: Sequence[str], encoder: str, layers: int | None) -> MetricStats:
    """BERTScore F1 (``bert-score``) with a local encoder directory or hub id (no baseline rescaling)."""
    from bert_score import BERTScorer
    from transformers import AutoConfig

    num_layers = layers or AutoConfig.from_pretrained(encoder).num_hidden_layers
    scorer = BERTScorer(model_type=encoder, num_layers=num_layers, rescale_with_baseline=False, device="cpu")
    # Empty replies make bert-score warn and score 0; keep that: an empty reply is a bad reply.
    _, _, f1 = scorer.score(list(replies), list(references), batch_size=32)
    return mean_stats(f1.tolist())


def detect_language(text: str) -> str | None:
    from langdetect import DetectorFactory, LangDetectException, detect

    DetectorFactory.seed = 0  # langdetect is randomised; fixed seed = the same answer every run
    try:
        return detect(text) if _WORD.search(text) else None
    except LangDetectException:
        return None


def normalise_language(code: str | None) -> str | None:
    """'EN', 'en-US', 'de_DE' -> 'en', 'de'; langdetect's 'zh-cn' -> 'zh'."""
    if not code:
        return None
    return re.split(r"[-_]", code.strip().lower())[0] or None


def language_kept(replies: Sequence[str], expected: Sequence[str | None]) -> MetricStats:
    """Share of replies whose detected language equals the input's (``langdetect``)."""
    kept = [
        float(want is not None and normalise_language(detect_language(reply)) == normalise_language(want))
        for reply, want in zip(replies, expected, strict=True)
    ]
    return mean_stats(kept)


def asks_question(text: str) -> bool:
    return bool(_QUESTION.search(text))


def clarify_rate(replies: Sequence[str]) -> MetricStats:
    """Share of replies that ask a question (call it on the inputs flagged as lacking details)."""
    return mean_stats([float(asks_question(r)) for r in replies])


def word_count(text: str) -> int:
    return len(_WORD.findall(text))


def reply_length(replies: Sequence[str]) -> MetricStats:
    return mean_stats([word_count(r) for r in replies])


def perplexity(nll_sums: Sequence[float], token_counts: Sequence[int]) -> MetricStats:
    """exp(mean token loss over all reference completion tokens): summed NLL over summed tokens."""
    stats = np.stack([np.asarray(nll_sums, float), np.asarray(token_counts, float)], axis=1)
    per_example = np.exp(stats[:, 0] / np.maximum(stats[:, 1], 1))
    return MetricStats(stats, lambda s: math.exp(min(s[0] / max(s[1], 1.0), 50.0)), per_example)
