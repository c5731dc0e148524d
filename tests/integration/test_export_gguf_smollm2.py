"""GGUF export of a support-ticket adapter on the embedded SmolLM2-135M-Instruct, run by llama.cpp itself: the f16
and q8_0 files and the LoRA GGUF on the base GGUF pass the parity check, and llama.cpp tokenises the prompts as
training did."""

import json

import pytest

from adapterlab.registry import load_recipe
from adapterlab.stages.export import export, llamacpp

pytestmark = pytest.mark.integration


def test_smollm2_adapter_as_gguf_matches_the_adapter_in_llama_cpp(support_run):
    import gguf

    if llamacpp.missing():
        pytest.skip(llamacpp.missing())
    root, _ = support_run
    result = export(root, "gguf", dtype="fp16", quant=["q8_0"], cases=1)

    files = result.parity["files"]
    pair = "base-f16.gguf + adapter-lora-f16.gguf"
    assert set(files) == {"model-f16.gguf", "model-q8_0.gguf", pair}
    for name, figures in files.items():
        assert figures["passed"], (name, figures)
        assert figures["prompt_tokens_equal"] == figures["cases"] == 2, name  # 1 golden + 1 test prompt
        assert figures["clear_margin_tokens"] >= 20 and figures["top1_agreement_clear"] == 1.0, name
    assert files["model-f16.gguf"]["mean_abs_logprob_diff"] < 0.01 and files[pair]["mean_abs_logprob_diff"] < 0.01
    # A few steps move the model less than 8-bit weights do: parity.json says so rather than hiding it.
    assert result.parity["adapter_effect"]["mean_abs_logprob_diff"] > files["model-f16.gguf"]["mean_abs_logprob_diff"]
    assert all(text.strip() for case in result.parity["cases"] for text in case["llama_cpp_greedy"].values())

    reader = gguf.GGUFReader(result.folder / "model-q8_0.gguf")
    assert reader.fields["tokenizer.ggml.pre"].contents() == "smollm"  # llama.cpp knows SmolLM2's tokenizer
    assert "<|im_start|>" in reader.fields["tokenizer.chat_template"].contents()
    modelfile = (result.folder / "Modelfile").read_text()
    system_prompt = load_recipe("recipes/support-tickets.yaml").data.system_prompt
    assert f'SYSTEM """{system_prompt}"""' in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile
    assert json.loads((result.folder / "parity.json").read_text())["passed"] is True
