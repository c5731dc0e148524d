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
    kwargs = dict(max_new_tokens=job.sampling.max_new_tokens, do_sample=False,
                  eos_token_id=sorted(job.stop_token_ids), pad_token_id=0)  # fmt: skip
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
