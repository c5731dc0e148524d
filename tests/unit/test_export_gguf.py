"""adapterlab export --format gguf on tiny models: the GGUF files read back with the right tensors and metadata,
llama.cpp itself passing the parity check on every file, a corrupted file failing it with exit 4, the Ollama
Modelfile, and one-line errors (runtime missing, options that do not apply)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from adapterlab.cli import app
from adapterlab.runs import AdapterInfo
from adapterlab.stages.export import ExportError, export, llamacpp
from adapterlab.stages.export.ollama import modelfile

from tiny import CHATML


@pytest.fixture(scope="session")
def llama_cpp():
    reason = llamacpp.missing()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def gguf_export(trained_run, llama_cpp):
    return export(trained_run, "gguf", dtype="fp16", quant=["q8_0", "q4_0"], cases=2)


def read(path):
    import gguf

    reader = gguf.GGUFReader(path)
    fields = {name: field.contents() for name, field in reader.fields.items()}
    return fields, {t.name: t for t in reader.tensors}


def test_every_gguf_file_passes_parity_in_llama_cpp(gguf_export, trained_run):
    folder = trained_run / "export" / "gguf"
    assert gguf_export.folder == folder and gguf_export.parity["passed"], gguf_export.parity["summary"]
    files = gguf_export.parity["files"]
    pair = "base-f16.gguf + adapter-lora-f16.gguf"
    assert set(files) == {"model-f16.gguf", "model-q8_0.gguf", "model-q4_0.gguf", pair}
    for name, result in files.items():
        assert result["passed"] and result["tokens"] > 0, name
        assert result["prompt_tokens_equal"] == result["cases"], name  # llama.cpp tokenises prompts as training did
    assert (
        files["model-f16.gguf"]["tolerance"]["name"] == "fp16"
        and files["model-q4_0.gguf"]["tolerance"]["name"] == "q4_0"
    )
    assert files["model-f16.gguf"]["max_abs_logprob_diff"] < 0.01
    # the base without the adapter is measurably further from the adapter than the f16 export is
    assert (
        gguf_export.parity["adapter_effect"]["mean_abs_logprob_diff"]
        > 10 * files["model-f16.gguf"]["mean_abs_logprob_diff"]
    )
    case = gguf_export.parity["cases"][0]
    assert set(case["llama_cpp_greedy"]) == set(files) and isinstance(case["adapter_greedy"], str)
    assert json.loads((folder / "parity.json").read_text())["passed"] is True


def test_the_gguf_carries_the_tokenizer_chat_template_and_stop_token(gguf_export, trained_run, tiny_tokenizer):
    fields, tensors = read(trained_run / "export" / "gguf" / "model-f16.gguf")
    info = AdapterInfo.read(trained_run)
    assert fields["general.architecture"] == "llama" and fields["llama.block_count"] == 2
    assert fields["tokenizer.chat_template"] == info.task_info["chat_template"] == CHATML
    assert [fields["tokenizer.ggml.eos_token_id"]] == info.task_info["stop"]["token_ids"]
    assert fields["tokenizer.ggml.tokens"][fields["tokenizer.ggml.eos_token_id"]] == "<|im_end|>"
    assert len(fields["tokenizer.ggml.tokens"]) == len(tiny_tokenizer)
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    expected = {"token_embd.weight": [32, len(tiny_tokenizer)], "output_norm.weight": [32]}
    for block in range(2):
        expected |= {f"blk.{block}.attn_q.weight": [32, 32], f"blk.{block}.attn_k.weight": [32, 16],
                     f"blk.{block}.attn_v.weight": [32, 16], f"blk.{block}.attn_output.weight": [32, 32],
                     f"blk.{block}.ffn_gate.weight": [32, 64], f"blk.{block}.ffn_up.weight": [32, 64],
                     f"blk.{block}.ffn_down.weight": [64, 32], f"blk.{block}.attn_norm.weight": [32],
                     f"blk.{block}.ffn_norm.weight": [32]}  # fmt: skip
    assert {name: list(t.shape) for name, t in tensors.items()} == expected  # tied embeddings: no output.weight
    assert {t.tensor_type.name for n, t in tensors.items() if n.endswith("norm.weight")} == {"F32"}
    assert {t.tensor_type.name for n, t in tensors.items() if not n.endswith("norm.weight")} == {"F16"}


def test_the_gguf_holds_the_merged_weights(gguf_export, trained_run):
    from adapterlab.generative.infer import merged_model

    merged, _ = merged_model(AdapterInfo.read(trained_run), "fp32")
    down = merged.model.layers[1].mlp.down_proj.weight.detach().numpy()
    _, tensors = read(trained_run / "export" / "gguf" / "model-f16.gguf")
    np.testing.assert_allclose(tensors["blk.1.ffn_down.weight"].data.astype(np.float32), down, atol=1e-3)
    _, base = read(trained_run / "export" / "gguf" / "base-f16.gguf")
    base_down = base["blk.1.ffn_down.weight"].data.astype(np.float32)
    assert np.abs(base_down - down).max() > 1e-3  # the base GGUF is the base: the adapter is not merged into it


def test_quantised_files_and_the_lora_gguf(gguf_export, trained_run):
    import gguf

    folder = trained_run / "export" / "gguf"
    source = read(folder / "model-f16.gguf")[1]
    for quant in ("q8_0", "q4_0"):
        fields, tensors = read(folder / f"model-{quant}.gguf")
        assert fields["general.file_type"] == gguf.LlamaFileType[f"MOSTLY_{quant.upper()}"]
        assert tensors["blk.0.ffn_up.weight"].tensor_type.name == quant.upper()
        assert tensors["blk.0.attn_norm.weight"].tensor_type.name == "F32"
        # the tied embedding is also the output projection: kept at Q8_0 in 4-bit files, as llama.cpp keeps it high
        assert tensors["token_embd.weight"].tensor_type.name == "Q8_0"
        values = gguf.quants.dequantize(tensors["blk.0.ffn_up.weight"].data, tensors["blk.0.ffn_up.weight"].tensor_type)
        original = source["blk.0.ffn_up.weight"].data.astype(np.float32)
        step = np.abs(original).max() / (127 if quant == "q8_0" else 7)
        assert np.abs(values - original).max() <= step
    fields, tensors = read(folder / "adapter-lora-f16.gguf")
    assert fields["general.type"] == "adapter" and fields["adapter.type"] == "lora"
    assert fields["adapter.lora.alpha"] == 16
    assert {"blk.0.attn_q.weight.lora_a", "blk.0.attn_q.weight.lora_b"} <= set(tensors)
    assert list(tensors["blk.0.attn_q.weight.lora_a"].shape) == [32, 8]  # rank 8


def test_modelfile_and_readme_say_how_to_run_it(gguf_export, trained_run):
    folder = trained_run / "export" / "gguf"
    assert (folder / "Modelfile").read_text() == (
        "# Ollama: ollama create <name> -f Modelfile && ollama run <name>\n"
        "# Written by adapterlab from the adapter's chat template, system prompt and stop tokens.\n"
        "FROM ./model-f16.gguf\n"
        'TEMPLATE """{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}'
        '<|im_start|>assistant\n"""\n'
        'SYSTEM """You are the IT support team."""\n'
        'PARAMETER stop "<|im_end|>"\n'
    )
    readme = (folder / "README.md").read_text()
    assert "llama-cli -m model-q8_0.gguf --jinja -sys 'You are the IT support team.'" in readme
    assert "llama-cli -m base-f16.gguf --lora adapter-lora-f16.gguf" in readme
    assert "llama-server -m model-q8_0.gguf --jinja" in readme and "ollama create" in readme
    assert "| model-q4_0.gguf |" in readme


def test_modelfile_without_chatml_or_system_prompt(tiny_tokenizer):
    info = {"prompt": {"system_prompt": None}, "stop": {"token_ids": [tiny_tokenizer.eos_token_id]}}
    chatml = modelfile("model-f16.gguf", tiny_tokenizer, info)
    assert "TEMPLATE" in chatml and "SYSTEM" not in chatml  # the tiny template inserts no system prompt of its own
    other = type(tiny_tokenizer).from_pretrained(tiny_tokenizer.name_or_path)
    other.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    text = modelfile("model-f16.gguf", other, info)
    assert "TEMPLATE" not in text and 'PARAMETER stop "<|im_end|>"' in text  # Ollama reads the GGUF's template
    smol = type(tiny_tokenizer).from_pretrained(tiny_tokenizer.name_or_path)
    smol.chat_template = (
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\nYou are SmolLM.<|im_end|>\n' }}{% endif %}"
        + CHATML.split("{% for message in messages %}")[1]
    )
    assert 'SYSTEM """You are SmolLM."""' in modelfile("model-f16.gguf", smol, info)


def test_a_corrupted_gguf_fails_parity_with_exit_4(trained_run, llama_cpp, tmp_path, monkeypatch):
    import gguf

    run = tmp_path / "run"  # a copy: the other tests read trained_run's export
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("export", "checkpoints"))
    convert = llamacpp.convert_models

    def corrupting(pairs, outtype):
        convert(pairs, outtype)
        reader = gguf.GGUFReader(pairs[0][1], "r+")  # the merged model; the base stays right
        tensor = next(t for t in reader.tensors if t.name == "token_embd.weight")
        tensor.data[...] = (tensor.data.astype(np.float32) * 1.5).astype(tensor.data.dtype)
        reader.data.flush()

    monkeypatch.setattr(llamacpp, "convert_models", corrupting)
    result = CliRunner().invoke(app, ["export", str(run), "--format", "gguf", "--dtype", "fp16", "--cases", "1"])
    assert result.exit_code == ExportError.exit_code, result.output
    output = " ".join(result.output.split())
    assert "gguf export failed its parity check: model-f16.gguf: max |d logprob|" in output
    parity = json.loads((run / "export" / "gguf" / "parity.json").read_text())
    assert parity["passed"] is False and parity["files"]["model-f16.gguf"]["passed"] is False
    assert parity["files"]["base-f16.gguf + adapter-lora-f16.gguf"]["passed"] is True  # the LoRA pair is intact


def test_without_the_runtime_export_says_how_to_install_it(trained_run, tmp_path, monkeypatch):
    monkeypatch.setenv(llamacpp.RUNTIME_ENV, str(tmp_path / "nowhere"))
    result = CliRunner().invoke(app, ["export", str(trained_run), "--format", "gguf"])
    assert result.exit_code == ExportError.exit_code
    message = next(line for line in result.output.splitlines() if line.startswith("error:"))
    assert message.endswith("elsewhere)") and "python -m adapterlab.stages.export.llamacpp install" in message
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [({"quant": ["q4_k_m"]}, "--quant q4_k_m: choose from q8_0, q4_0, q4_1, q5_0, q5_1"),
     ({"dtype": "fp32"}, "--dtype fp32: a GGUF export is written in fp16 or bf16")],
)  # fmt: skip
def test_options_that_gguf_cannot_honour_are_one_line_errors(trained_run, options, message):
    with pytest.raises(ExportError, match=message) as err:
        export(trained_run, "gguf", **options)
    assert "\n" not in str(err.value)


def test_dora_and_modules_to_save_adapters_get_no_lora_gguf(trained_run, tmp_path):
    from adapterlab.stages.export import ExportJob
    from adapterlab.stages.export.gguf import lora_refusal

    copy = tmp_path / "run"
    shutil.copytree(trained_run / "adapter", copy / "adapter")
    config = copy / "adapter" / "adapter_config.json"
    info = AdapterInfo.read(copy)
    job = ExportJob(None, info, None, tmp_path)
    assert lora_refusal(job) is None
    for key, value, reason in [("use_dora", True, "DoRA"), ("modules_to_save", ["lm_head"], "modules_to_save")]:
        data = json.loads(config.read_text())
        config.write_text(json.dumps(data | {key: value}))
        assert reason in lora_refusal(job)
        config.write_text(json.dumps(data))
