"""The continuous-batching engine: batched answers equal one-at-a-time answers, rows join and leave mid-batch,
stop strings never leak into a stream, the queue is bounded, cancelled rows free their slot."""

from __future__ import annotations

import threading

import pytest
import torch

from adapterlab.serve.batching import BASE, Engine, Event, Job, QueueFull, Sampling, held_back
from adapterlab.serve.registry import Registry

PROMPTS = [
    "Subject: VPN drops\n\nSince this morning the VPN drops.",
    "printer jam",
    "Bonjour, merci pour votre message. Veuillez redémarrer l'ordinateur s'il vous plaît.",
    "Здравствуйте! Перезагрузите компьютер.",
    "Wi-Fi",
]


@pytest.fixture(scope="module")
def registry(trained_run):
    reg = Registry([f"support={trained_run}"], precision="fp32")
    reg.load()
    return reg


class Collector:
    def __init__(self):
        self.deltas: list[str] = []
        self.final: Event | None = None
        self.first = threading.Event()
        self.done = threading.Event()

    def __call__(self, event: Event) -> None:
        if event.delta:
            self.deltas.append(event.delta)
            self.first.set()
        if event.finish_reason:
            self.final = event
            self.first.set()
            self.done.set()


def make_job(registry, name: str, text: str, **sampling) -> tuple[Job, Collector]:
    model = registry.chat[name]
    sink = Collector()
    prompt = model.encode_chat([{"role": "user", "content": text}])
    job = Job(prompt, Sampling(**sampling), model.tokenizer, model.stop_token_ids, sink, adapter=model.adapter)
    return job, sink


def reference(registry, job: Job) -> list[int]:
    """What plain generate() gives for this prompt alone, with the row's adapter (or none)."""
    model = registry.model
    ids = torch.tensor([job.prompt_ids])
    kwargs = dict(max_new_tokens=job.sampling.max_new_tokens, do_sample=False, eos_token_id=sorted(job.stop_token_ids),
                  pad_token_id=0, repetition_penalty=job.sampling.repetition_penalty)  # fmt: skip
    with torch.inference_mode():
        if job.adapter == BASE:
            with model.disable_adapter():
                out = model.generate(ids, **kwargs)
        else:
            model.set_adapter(job.adapter)
            out = model.generate(ids, **kwargs)
    tokens = out[0, ids.shape[1] :].tolist()
    return [t for t in tokens if t not in job.stop_token_ids]


def test_batched_rows_that_join_and_leave_mid_batch_equal_one_at_a_time_generation(registry):
    engine = Engine(registry.model, pad_token_id=0, max_batch=4)
    engine.start()
    try:
        first, first_sink = make_job(registry, "support", PROMPTS[0], max_new_tokens=24)
        engine.submit(first)
        assert first_sink.first.wait(30)  # the first row is decoding: the others must join a running batch
        jobs = [(first, first_sink)]
        for i, text in enumerate(PROMPTS[1:]):
            name = "base" if i % 2 else "support"  # adapters mixed within one batch
            job, sink = make_job(registry, name, text, max_new_tokens=6 + 5 * i)  # rows leave at different steps
            engine.submit(job)
            jobs.append((job, sink))
        for _, sink in jobs:
            assert sink.done.wait(60)
    finally:
        engine.stop()
    assert engine.peak_batch >= 3
    assert sum(len(job.generated) for job, _ in jobs) >= 30, "too few tokens to compare"
    for job, sink in jobs:
        assert sink.final.finish_reason in ("stop", "length")
        assert job.generated == reference(registry, job), f"row {job.id} ({job.adapter}) differs from generate()"
        assert sink.final.completion_tokens == len(job.generated)
        assert "".join(sink.deltas) == job.tokenizer.decode(job.generated, skip_special_tokens=True)


def test_adapter_and_base_rows_differ_in_one_batch(registry):
    engine = Engine(registry.model, pad_token_id=0, max_batch=8)
    engine.start()
    try:
        a, a_sink = make_job(registry, "support", PROMPTS[0], max_new_tokens=12)
        b, b_sink = make_job(registry, "base", PROMPTS[0], max_new_tokens=12)
        engine.submit(a)
        engine.submit(b)
        assert a_sink.done.wait(30) and b_sink.done.wait(30)
    finally:
        engine.stop()
    assert a.generated != b.generated


def test_seeded_sampling_is_reproducible_and_seeds_matter(registry):
    def sample(seed: int) -> list[int]:
        engine = Engine(registry.model, pad_token_id=0)
        engine.start()
        job, sink = make_job(registry, "support", PROMPTS[1], max_new_tokens=16, temperature=1.5, top_p=0.9, seed=seed)
        engine.submit(job)
        assert sink.done.wait(30)
        engine.stop()
        return job.generated

    assert sample(7) == sample(7)
    assert sample(7) != sample(8)


def test_repetition_penalty_rows_equal_generate_with_that_penalty_beside_rows_without(registry):
    """What `eval.repetition_penalty` does in evaluation (transformers' generate) the server does per row, so an
    adapter served with its recipe's penalty answers as its evaluation measured."""
    engine = Engine(registry.model, pad_token_id=0, max_batch=4)
    engine.start()
    try:
        jobs = [make_job(registry, name, PROMPTS[i], max_new_tokens=28, repetition_penalty=penalty)
                for i, (name, penalty) in enumerate([("support", 1.3), ("base", 1.3), ("support", 1.0),
                                                     ("base", 1.15)])]  # fmt: skip
        plain = [make_job(registry, name, PROMPTS[i], max_new_tokens=28) for i, name in [(0, "support"), (1, "base")]]
        for job, _ in jobs + plain:
            engine.submit(job)
        for _, sink in jobs + plain:
            assert sink.done.wait(60)
    finally:
        engine.stop()
    for job, _ in jobs:
        assert job.generated == reference(registry, job), f"row {job.id} (penalty {job.sampling.repetition_penalty})"
    # the penalty is not a no-op on these prompts: without it the same rows answer differently
    assert [j.generated for j, _ in jobs[:2]] != [j.generated for j, _ in plain]


def test_penalise_matches_transformers_repetition_rule_then_openais_presence_and_frequency():
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    from adapterlab.serve.batching import penalise

    logits = torch.randn(50, generator=torch.Generator().manual_seed(1)) * 4
    prompt, answer = [3, 7, 0], [7, 12, 49, 12, 12]
    expected = RepetitionPenaltyLogitsProcessor(1.25)(torch.tensor([prompt + answer]), logits.clone().unsqueeze(0))[0]
    assert torch.allclose(penalise(logits, Sampling(repetition_penalty=1.25), prompt, answer), expected)
    assert torch.equal(penalise(logits, Sampling(), prompt, answer), logits)
    assert torch.equal(penalise(logits, Sampling(repetition_penalty=1.5, presence_penalty=1.0), [], []), logits)
    # OpenAI's definition, on the answer only: presence once per used token, frequency per use
    got = penalise(logits, Sampling(presence_penalty=0.5, frequency_penalty=0.25), prompt, answer)
    cut = {7: 0.5 + 0.25, 12: 0.5 + 3 * 0.25, 49: 0.5 + 0.25}
    assert torch.allclose(got, logits - torch.tensor([cut.get(i, 0.0) for i in range(50)]))
    both = penalise(logits, Sampling(repetition_penalty=1.25, frequency_penalty=-0.5), prompt, answer)
    assert torch.allclose(both, expected + torch.tensor([{7: 0.5, 12: 1.5, 49: 0.5}.get(i, 0.0) for i in range(50)]))


def test_held_back_keeps_possible_stop_prefixes_out_of_the_stream():
    assert held_back("Hello ##", ["###"]) == 2
    assert held_back("Hello #", ["###", "#!"]) == 1
    assert held_back("Hello", ["###"]) == 0
    assert held_back("Привет \ufffd", []) == 1  # half of a multi-byte character


def test_stop_string_cuts_the_answer_and_never_reaches_the_stream(registry):
    probe, probe_sink = make_job(registry, "support", PROMPTS[2], max_new_tokens=20)
    engine = Engine(registry.model, pad_token_id=0)
    engine.start()
    try:
        engine.submit(probe)
        assert probe_sink.done.wait(30)
        full = "".join(probe_sink.deltas)
        assert len(full) >= 4, "the tiny model must say something for this test"
        stop = full[2:4]
        job, sink = make_job(registry, "support", PROMPTS[2], max_new_tokens=20, stop=[stop])
        engine.submit(job)
        assert sink.done.wait(30)
    finally:
        engine.stop()
    streamed = "".join(sink.deltas)
    assert sink.final.finish_reason == "stop"
    assert stop not in streamed
    assert streamed == full[: full.find(stop)]


def test_full_queue_refuses_instead_of_growing(registry):
    engine = Engine(registry.model, pad_token_id=0, max_batch=1, max_queue=2)  # not started: nothing drains
    for _ in range(3):  # one running slot and two waiting
        engine.submit(make_job(registry, "support", PROMPTS[1], max_new_tokens=4)[0])
    with pytest.raises(QueueFull, match="at capacity"):
        engine.submit(make_job(registry, "support", PROMPTS[1], max_new_tokens=4)[0])


def test_cancelled_row_frees_its_slot(registry):
    engine = Engine(registry.model, pad_token_id=0, max_batch=1)
    engine.start()
    try:
        long_job, long_sink = make_job(registry, "support", PROMPTS[0], max_new_tokens=400)
        engine.submit(long_job)
        assert long_sink.first.wait(30)
        waiting, waiting_sink = make_job(registry, "base", PROMPTS[1], max_new_tokens=3)
        engine.submit(waiting)
        long_job.cancel()  # the client went away
        assert waiting_sink.done.wait(30)
    finally:
        engine.stop()
    assert long_sink.final.finish_reason == "cancelled"
    assert len(long_job.generated) < 400
    assert waiting_sink.final.finish_reason in ("stop", "length")


def test_a_failing_step_fails_its_requests_and_the_engine_keeps_serving(registry, monkeypatch):
    engine = Engine(registry.model, pad_token_id=0)
    original = engine._forward
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("simulated out of memory")
        return original(*args, **kwargs)

    monkeypatch.setattr(engine, "_forward", flaky)
    engine.start()
    try:
        bad, bad_sink = make_job(registry, "support", PROMPTS[1], max_new_tokens=4)
        engine.submit(bad)
        assert bad_sink.done.wait(30)
        good, good_sink = make_job(registry, "support", PROMPTS[1], max_new_tokens=4)
        engine.submit(good)
        assert good_sink.done.wait(30)
    finally:
        engine.stop()
    assert bad_sink.final.finish_reason == "error" and "simulated" in bad_sink.final.error
    assert good_sink.final.finish_reason in ("stop", "length")


# ------------------------------------------------------------------ issue 12: numerics, row isolation, admission


@pytest.mark.parametrize("temperature", [5e-324, 1e-45, 1e-300, 1e-8, 0.7, 2])
@pytest.mark.parametrize("top_p", [5e-324, 1e-50, 1e-8, 0.5, 1])
def test_sampling_is_safe_for_every_temperature_and_top_p_the_schema_admits(temperature, top_p):
    from adapterlab.serve.batching import sample_row

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(400, generator=generator) * 30
    logits[7] = logits.max() + 5  # one clear favourite
    logits[3] = float("-inf")  # a masked token
    token = sample_row(logits, Sampling(temperature=temperature, top_p=top_p), generator)
    assert 0 <= token < 400 and token != 3
    if temperature < 1e-8 or top_p < 1e-8:
        assert token == 7  # the limit of sampling as temperature or top_p goes to 0 is greedy


def test_seeds_at_both_ends_of_the_range_make_reproducible_generators(registry):
    from adapterlab.serve.schemas import SEED_MAX, SEED_MIN

    model = registry.chat["support"]
    for seed in (SEED_MIN, -1, 0, 2**63, SEED_MAX, SEED_MAX + 1):  # SEED_MAX + 1: choice 1 of n=2 wraps to 0
        a = Job([1, 2], Sampling(temperature=1.0, seed=seed), model.tokenizer, set(), lambda e: None)
        b = Job([1, 2], Sampling(temperature=1.0, seed=seed), model.tokenizer, set(), lambda e: None)
        assert torch.rand(3, generator=a.generator).tolist() == torch.rand(3, generator=b.generator).tolist()


def test_a_row_whose_sampling_fails_ends_alone_and_the_others_finish(registry, monkeypatch):
    from adapterlab.serve import batching

    real = batching.sample_row

    def poisoned(logits, sampling, generator):
        if sampling.seed == 666:
            raise RuntimeError("probability tensor contains either inf, nan or element < 0")
        return real(logits, sampling, generator)

    monkeypatch.setattr(batching, "sample_row", poisoned)
    engine = Engine(registry.model, pad_token_id=0, max_batch=4)
    rows = [make_job(registry, "support", PROMPTS[i], max_new_tokens=12, temperature=0.8, seed=i) for i in range(3)]
    bad = make_job(registry, "base", PROMPTS[3], max_new_tokens=12, temperature=0.8, seed=666)
    engine.submit(*[job for job, _ in rows], bad[0])  # one batch from the first step
    engine.start()
    try:
        assert all(sink.done.wait(30) for _, sink in [*rows, bad])
    finally:
        engine.stop()
    assert engine.peak_batch == 4
    assert bad[1].final.finish_reason == "error" and "inf, nan" in bad[1].final.error
    for job, sink in rows:
        assert sink.final.finish_reason in ("stop", "length"), sink.final
        assert sink.final.completion_tokens == len(job.generated) > 0


def test_a_failing_prefill_ends_only_the_rows_it_was_joining(registry, monkeypatch):
    engine = Engine(registry.model, pad_token_id=0, max_batch=4)
    original = engine._forward

    def failing_prefill_of_row_two(ids, mask, positions, cache, jobs):
        if any(j.sampling.seed == 2 for j in jobs) and ids.shape[1] > 1:
            raise RuntimeError("simulated prefill failure")
        return original(ids, mask, positions, cache, jobs)

    monkeypatch.setattr(engine, "_forward", failing_prefill_of_row_two)
    engine.start()
    try:
        running, running_sink = make_job(registry, "support", PROMPTS[0], max_new_tokens=40, seed=1)
        engine.submit(running)
        assert running_sink.first.wait(30)
        joining, joining_sink = make_job(registry, "support", PROMPTS[1], max_new_tokens=5, seed=2)
        engine.submit(joining)
        assert joining_sink.done.wait(30) and running_sink.done.wait(60)
    finally:
        engine.stop()
    assert joining_sink.final.finish_reason == "error"
    assert running_sink.final.finish_reason in ("stop", "length")
    assert running.generated == reference(registry, running)


def blocked_engine(registry, monkeypatch, **kwargs):
    """An engine whose first forward pass (a prefill) waits until released: rows stay 'being prefilled'."""
    engine = Engine(registry.model, pad_token_id=0, **kwargs)
    inside, release = threading.Event(), threading.Event()
    original = engine._forward

    def gated(*args, **kw):
        inside.set()
        assert release.wait(30)
        return original(*args, **kw)

    monkeypatch.setattr(engine, "_forward", gated)
    return engine, inside, release


def test_capacity_counts_rows_that_are_being_prefilled(registry, monkeypatch):
    engine, inside, release = blocked_engine(registry, monkeypatch, max_batch=2, max_queue=2)
    engine.start()
    try:
        engine.submit(make_job(registry, "support", PROMPTS[0], max_new_tokens=3)[0])
        engine.submit(make_job(registry, "support", PROMPTS[1], max_new_tokens=3)[0])
        assert inside.wait(30)  # the worker holds rows in a prefill: neither queued nor in the batch yet
        accepted = 2
        for _ in range(6):
            try:
                engine.submit(make_job(registry, "support", PROMPTS[2], max_new_tokens=3)[0])
                accepted += 1
            except QueueFull:
                pass
        stats = engine.stats()
    finally:
        release.set()
        engine.stop()
    assert accepted == 4, f"{accepted} rows admitted with max_batch 2 + max_queue 2"
    assert stats["running"] <= 2 and stats["running"] + stats["waiting"] == 4, stats


def test_every_choice_counts_and_a_request_is_queued_whole_or_not_at_all(registry):
    engine = Engine(registry.model, pad_token_id=0, max_batch=2, max_queue=2)  # not started: nothing drains
    engine.submit(*[make_job(registry, "support", PROMPTS[1], max_new_tokens=3)[0] for _ in range(3)])
    with pytest.raises(QueueFull, match="needs 2"):
        engine.submit(*[make_job(registry, "support", PROMPTS[1], max_new_tokens=3)[0] for _ in range(2)])
    assert engine.stats()["waiting"] == 3  # the refused request left nothing behind
    engine.submit(make_job(registry, "support", PROMPTS[1], max_new_tokens=3)[0])


def test_a_waiting_row_whose_client_left_frees_its_place_at_once(registry):
    engine = Engine(registry.model, pad_token_id=0, max_batch=1, max_queue=1)  # not started
    first = make_job(registry, "support", PROMPTS[1], max_new_tokens=3)
    engine.submit(first[0], make_job(registry, "support", PROMPTS[1], max_new_tokens=3)[0])
    first[0].cancel()
    engine.submit(make_job(registry, "support", PROMPTS[1], max_new_tokens=3)[0])
    assert first[1].final.finish_reason == "cancelled"


def test_abort_ends_waiting_and_running_rows_of_an_adapter_with_the_failure(registry):
    from adapterlab.serve.batching import Failure

    engine = Engine(registry.model, pad_token_id=0, max_batch=1, max_queue=4)
    engine.start()
    try:
        running, running_sink = make_job(registry, "support", PROMPTS[0], max_new_tokens=400)
        waiting, waiting_sink = make_job(registry, "support", PROMPTS[1], max_new_tokens=4)
        other, other_sink = make_job(registry, "base", PROMPTS[1], max_new_tokens=4)
        engine.submit(running)
        assert running_sink.first.wait(30)
        engine.submit(waiting)
        engine.submit(other)
        gone = Failure(409, "model_unloaded", "model 'support' was unloaded")
        with engine.lock:
            engine.abort_adapter("support", gone)
        assert running_sink.done.wait(30) and waiting_sink.done.wait(30) and other_sink.done.wait(30)
    finally:
        engine.stop()
    for sink in (running_sink, waiting_sink):
        assert sink.final.finish_reason == "error" and sink.final.failure == gone
    assert other_sink.final.finish_reason in ("stop", "length")


def test_close_ends_everything_with_the_failure_and_refuses_new_rows(registry):
    from adapterlab.serve.batching import Failure, ShuttingDown

    engine = Engine(registry.model, pad_token_id=0, max_batch=1, max_queue=4)
    engine.start()
    try:
        running, running_sink = make_job(registry, "support", PROMPTS[0], max_new_tokens=400)
        waiting, waiting_sink = make_job(registry, "base", PROMPTS[1], max_new_tokens=4)
        engine.submit(running, waiting)
        assert running_sink.first.wait(30)
        engine.close(Failure(503, "shutting_down", "the server is shutting down"))
        assert running_sink.done.wait(30) and waiting_sink.done.wait(30)
        with pytest.raises(ShuttingDown):
            engine.submit(make_job(registry, "base", PROMPTS[1], max_new_tokens=4)[0])
    finally:
        engine.stop()
    assert running_sink.final.failure.status == 503 and waiting_sink.final.failure.code == "shutting_down"
    assert engine.stats()["running"] == engine.stats()["waiting"] == 0
