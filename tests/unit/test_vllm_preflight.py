"""The vLLM pre-flight check reads adapter_config.json and names every reason vLLM would refuse an adapter."""

import json

import pytest

from adapterlab.errors import ModelError
from adapterlab.vllm import check_adapters, max_lora_rank_for, refusals

PLAIN = {"peft_type": "LORA", "r": 8, "use_dora": False, "modules_to_save": None, "bias": "none"}


def test_a_plain_lora_adapter_passes():
    assert refusals(PLAIN, max_lora_rank=16) == []


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"use_dora": True}, "DoRA"),
        ({"r": 32}, "rank 32 above vLLM's --max-lora-rank 16"),
        ({"rank_pattern": {"q_proj": 64}}, "rank 64"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save ['lm_head']"),
        ({"bias": "lora_only"}, "bias 'lora_only'"),
        ({"peft_type": "IA3"}, "LoRA adapters only"),
    ],
)
def test_each_thing_vllm_refuses_is_named(change, reason):
    assert any(reason in r for r in refusals({**PLAIN, **change}, max_lora_rank=16))


def test_check_adapters_lists_every_refused_adapter(tmp_path, trained_run):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "adapter_config.json").write_text(json.dumps({**PLAIN, "use_dora": True, "r": 64}))
    check_adapters({"good": trained_run / "adapter"}, max_lora_rank=8)  # the tiny trained run: r=8, plain LoRA
    with pytest.raises(ModelError, match=r"vLLM would refuse bad \(.*\): DoRA.*; rank 64 above"):
        check_adapters({"good": trained_run / "adapter", "bad": bad}, max_lora_rank=16)
    with pytest.raises(ModelError, match="not a PEFT adapter"):
        check_adapters({"none": tmp_path}, max_lora_rank=16)


def test_max_lora_rank_covers_every_adapter():
    assert max_lora_rank_for([4, 8]) == 8 and max_lora_rank_for([9]) == 16 and max_lora_rank_for([]) == 8
