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


# A sentence ends at . ! ? (and their CJK / Arabic forms) followed by white space, or at a line break.
_SENTENCE_END = re.compile(r"(?<=[.!?…。！？؟])\s+|\n+")


# A full stop after these (or after an initial: "J. Smith") does not end a sentence.
_ABBREVIATIONS = {"dr", "mr", "mrs", "ms", "prof", "st", "no", "vs", "e.g", "i.e", "etc", "inc", "ltd", "jr", "sr"}


def sentences(text: str) -> list[str]:
    out: list[str] = []
    for piece in (s.strip() for s in _SENTENCE_END.split(text)):
        if not piece:
            continue
        last = out[-1].rsplit(maxsplit=1)[-1].casefold() if out else ""
        if last.endswith(".") and "\n" not in last and (last[:-1] in _ABBREVIATIONS or len(last) == 2):
            out[-1] = f"{out[-1]} {piece}"
        else:
            out.append(piece)
    return out


def rouge(replies: Sequence[str], references: Sequence[str]) -> dict[str, MetricStats]:
    """ROUGE-1/2/L/Lsum F1 (``rouge-score``), averaged over examples. Lsum is the summary-level LCS over sentences:
    rouge-score reads sentences from line breaks, so both texts are given one sentence per line."""
    from rouge_score import rouge_scorer

    types = ["rouge1", "rouge2", "rougeL"]
    scorer = rouge_scorer.RougeScorer(types, tokenizer=UnicodeWordTokenizer())
    summary_level = rouge_scorer.RougeScorer(["rougeLsum"], tokenizer=UnicodeWordTokenizer())
    pairs = list(zip(replies, references, strict=True))
    scores = [scorer.score(ref, hyp) for hyp, ref in pairs]
    lines = [("\n".join(sentences(ref)), "\n".join(sentences(hyp))) for hyp, ref in pairs]
    lsum = [summary_level.score(ref, hyp)["rougeLsum"] for ref, hyp in lines]
    out = {t: mean_stats([s[t].fmeasure for s in scores]) for t in types}
    return {**out, "rougeLsum": mean_stats([s.fmeasure for s in lsum])}


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
    # An empty reply scores 0 (a bad reply); bert-score itself fails on one under transformers 5.
    scored = [i for i, reply in enumerate(replies) if reply.strip()]
    values = [0.0] * len(replies)
    if scored:
        _, _, f1 = scorer.score([replies[i] for i in scored], [references[i] for i in scored], batch_size=32)
        for i, value in zip(scored, f1.tolist(), strict=True):
            values[i] = value
    return mean_stats(values)


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


# ------------------------------------------------------------------------- summaries against their document


def _ngrams(words: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def _ratio_stats(pairs: Sequence[tuple[float, float]]) -> MetricStats:
    """Counts (part, whole) per example; the corpus value is sum(part) / sum(whole)."""
    stats = np.asarray(pairs, dtype=float).reshape(-1, 2)
    per_example = np.divide(stats[:, 0], stats[:, 1], out=np.zeros(len(stats)), where=stats[:, 1] > 0)
    return MetricStats(stats, lambda s: float(s[0] / s[1]) if s[1] else 0.0, per_example)


def novel_ngrams(summaries: Sequence[str], documents: Sequence[str], n: int) -> MetricStats:
    """Share of the summaries' word n-grams that do not occur in their document (abstractiveness: 0 = copied)."""
    pairs = []
    for summary, document in zip(summaries, documents, strict=True):
        grams = _ngrams(UnicodeWordTokenizer().tokenize(summary), n)
        seen = set(_ngrams(UnicodeWordTokenizer().tokenize(document), n))
        pairs.append((sum(g not in seen for g in grams), len(grams)))
    return _ratio_stats(pairs)


# A number (1,200 / 3.5 / 40% / 2026) or a capitalised word that does not start a sentence (a name, a product).
_NUMBER = re.compile(r"\d+(?:[.,:]\d+)*")
_CAPITALISED = re.compile(r"(?<![.!?]\s)(?<!^)\b[A-Z][\w'’-]*")


def figures(text: str) -> list[str]:
    """The numbers and named figures of a text: what a summary must not invent."""
    found = [m.group().replace(",", "") for m in _NUMBER.finditer(text)]
    for sentence in sentences(text):
        found += [m.group() for m in _CAPITALISED.finditer(sentence) if m.start() > 0]
    return found


def unsupported_figures(summaries: Sequence[str], documents: Sequence[str]) -> MetricStats:
    """Share of the numbers and names in the summaries that occur nowhere in their document: a cheap, offline
    faithfulness signal (a changed figure or an invented name), not a proof of faithfulness."""
    pairs = []
    for summary, document in zip(summaries, documents, strict=True):
        known = {m.group().replace(",", "") for m in _NUMBER.finditer(document)} | set(_WORD.findall(document))
        found = figures(summary)
        pairs.append((sum(f not in known for f in found), len(found)))
    return _ratio_stats(pairs)


def compression(summaries: Sequence[str], documents: Sequence[str]) -> MetricStats:
    """Summary words per document word, averaged over examples."""
    return mean_stats([word_count(s) / max(word_count(d), 1) for s, d in zip(summaries, documents, strict=True)])
