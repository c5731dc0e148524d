"""Metrics against hand-computed cases (including non-Latin scripts) and the paired bootstrap."""

import math

import numpy as np
import pytest

from adapterlab.metrics import text as tm
from adapterlab.metrics.bootstrap import paired_bootstrap


def test_rouge_keeps_non_latin_words():
    # rouge-score's default tokenizer would reduce both Russian sentences to nothing (score 0).
    scores = tm.rouge(["перезагрузите компьютер сейчас"], ["перезагрузите компьютер"])
    # unigrams: 2 shared; precision 2/3, recall 2/2 -> F1 = 0.8; bigrams: 1 shared of 2 and 1 -> F1 = 2/3
    assert math.isclose(scores["rouge1"].value, 0.8)
    assert math.isclose(scores["rouge2"].value, 2 / 3)
    assert math.isclose(scores["rougeL"].value, 0.8)


def test_rouge_umlauts_stay_inside_words():
    assert tm.UnicodeWordTokenizer().tokenize("Grüße, Jürgen!") == ["grüsse", "jürgen"]  # casefold: ß = ss
    assert tm.rouge(["Viele Grüße"], ["viele grüße"])["rouge1"].value == 1.0


def test_rouge_is_the_mean_over_examples():
    scores = tm.rouge(["a b", "c d"], ["a b", "x y"])
    assert scores["rouge1"].per_example.tolist() == [1.0, 0.0]
    assert scores["rouge1"].value == 0.5


def test_bleu_and_chrf_equal_sacrebleu_corpus_scores():
    from sacrebleu.metrics import BLEU, CHRF

    hyps = ["the printer on floor three is jammed", "Здравствуйте! Перезагрузите ноутбук.", "ok"]
    refs = ["the printer on the third floor is jammed", "Здравствуйте! Перезагрузите, пожалуйста, ноутбук.", "ok"]
    assert math.isclose(tm.bleu(hyps, refs).value, BLEU(tokenize="intl").corpus_score(hyps, [refs]).score)
    assert math.isclose(tm.chrf(hyps, refs).value, CHRF().corpus_score(hyps, [refs]).score)
    assert tm.bleu(["a b c d"], ["a b c d"]).value == pytest.approx(100.0)


def test_perplexity_is_exp_of_token_mean():
    stats = tm.perplexity([2.0, 6.0], [1, 3])  # 8 nats over 4 tokens
    assert math.isclose(stats.value, math.exp(2.0))
    assert np.allclose(stats.per_example, [math.exp(2.0), math.exp(2.0)])


def test_language_kept_and_clarify():
    replies = ["Bonjour, merci pour votre message, nous allons redémarrer le serveur.", "Hello, which printer is it?"]
    kept = tm.language_kept(replies, ["fr", "de-DE"])
    assert kept.per_example.tolist() == [1.0, 0.0]
    assert tm.clarify_rate(["¿Qué impresora?", "Done.", "Какой принтер?"]).value == pytest.approx(2 / 3)
    assert tm.detect_language("") is None and tm.detect_language("12345 !!!") is None


def test_bootstrap_of_a_constant_difference_is_that_constant():
    base = tm.mean_stats([0.2, 0.4, 0.6, 0.8])
    adapter = tm.mean_stats([0.3, 0.5, 0.7, 0.9])
    delta = paired_bootstrap(base, adapter, resamples=500, seed=1)
    assert delta.delta == pytest.approx(0.1)
    assert delta.low == pytest.approx(0.1) and delta.high == pytest.approx(0.1)
    assert delta.excludes_zero


def test_bootstrap_interval_matches_the_normal_approximation():
    rng = np.random.default_rng(0)
    diffs = rng.normal(0.05, 0.2, size=400)
    base = tm.mean_stats(np.zeros(400))
    adapter = tm.mean_stats(diffs)
    delta = paired_bootstrap(base, adapter, resamples=4000, seed=2)
    half_width = 1.96 * diffs.std(ddof=1) / math.sqrt(400)
    assert delta.delta == pytest.approx(diffs.mean())
    assert delta.low == pytest.approx(diffs.mean() - half_width, abs=0.006)
    assert delta.high == pytest.approx(diffs.mean() + half_width, abs=0.006)


def test_no_difference_is_not_called_significant():
    values = [0.1, 0.9, 0.5, 0.3, 0.7] * 4
    delta = paired_bootstrap(tm.mean_stats(values), tm.mean_stats(values[::-1]), resamples=500, seed=3)
    assert delta.low < 0 < delta.high and not delta.excludes_zero


def test_corpus_metric_bootstrap_resamples_statistics():
    hyps = ["a b c d", "e f g h", "i j k l"]
    refs = ["a b c d", "e f x h", "i j k z"]
    base, adapter = tm.bleu(["q"] * 3, refs), tm.bleu(hyps, refs)
    delta = paired_bootstrap(base, adapter, resamples=300, seed=4)
    assert delta.base == pytest.approx(0.0) and delta.adapter == pytest.approx(adapter.value)
    assert delta.low <= delta.delta <= delta.high
