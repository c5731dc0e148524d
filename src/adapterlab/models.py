"""Resolve and load a base model (embedded default, local directory or hub id), in fp32, bf16 or 4-bit.

One code path for every source: the embedded default resolves to a cached HF directory and is then loaded like
any local directory. ``trust_remote_code`` stays off unless the recipe turns it on.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapterlab.assets import EMBEDDED, embedded_path
from adapterlab.errors import ModelError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

    from adapterlab.config import LoraConfig, ModelConfig
    from adapterlab.runs import AdapterInfo

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def resolve_base(base: str) -> str:
    """A string ``from_pretrained`` accepts: a local directory path or a hub id."""
    if base in EMBEDDED:
        return str(embedded_path(base))
    path = Path(base).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"model.base: {path} has no config.json; point it at a Hugging Face model directory")
        return str(path.resolve())
    looks_like_path = base.startswith((".", "/", "~")) or path.suffix or base.count("/") > 1
    if looks_like_path or not _HUB_ID.match(base):
        raise ModelError(f"model.base: directory {base} not found (use 'default', a model directory or a hub id)")
    return base


# --------------------------------------------------------------------------------------------- precision


@functools.cache
def cpu_has_bf16() -> bool:
    """AVX-512 BF16 or AMX: the CPU runs bf16 matmuls natively (about 2x fp32 for training here)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags))


def pick_precision(requested: str = "auto") -> str:
    """``auto`` -> bf16 on a bf16-capable GPU or CPU, fp32 otherwise. An explicit choice is kept."""
    import torch

    if requested != "auto":
        if requested == "fp16" and not torch.cuda.is_available():
            raise ModelError("train.precision: fp16 needs a CUDA GPU; use bf16 or fp32 on the CPU")
        return requested
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_bf16() else "fp32"


def torch_dtype(precision: str) -> torch.dtype:
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]


def device_name() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def weights_device_map() -> dict[str, Any]:
    """Where a 4-bit model's weights go as bitsandbytes quantises them: this process's own GPU (the train stage
    sets it to LOCAL_RANK in each process of a multi-GPU run; GPU 0 would put every process's copy on the first
    GPU), or the CPU."""
    import torch

    return {"": torch.cuda.current_device()} if device_name() == "cuda" else {"": "cpu"}


# ------------------------------------------------------------------------------------------------ loading


def load_tokenizer(base: str, trust_remote_code: bool = False, revision: str | None = None, chat: bool = True):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(base, trust_remote_code=trust_remote_code, revision=revision)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the tokenizer of '{base}': {_first_line(exc)}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if chat and not tokenizer.chat_template:
        raise ModelError(
            f"'{base}' has no chat template; the chat task renders prompts with the base model's own template "
            "(use an instruct/chat model)"
        )
    return tokenizer


def quantization_config(cfg: ModelConfig, compute_dtype: torch.dtype, skip: list[str] | None = None):
    """NF4 (or FP4) with double quantisation through bitsandbytes: the QLoRA recipe. ``skip``: modules kept in
    full precision (a classifier's head, which is trained in full)."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise ModelError("model.quantization: 4bit needs bitsandbytes (pip install bitsandbytes)") from exc
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=cfg.quant_type,
        bnb_4bit_use_double_quant=cfg.double_quant,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_quant_storage=compute_dtype,
        llm_int8_skip_modules=skip,
    )


def load_causal_lm(base: str, cfg: ModelConfig, precision: str = "fp32", training: bool = False) -> PreTrainedModel:
    """Load a causal LM for training or inference; frozen base weights in the compute dtype."""
    from transformers import AutoModelForCausalLM

    dtype = torch_dtype(precision)
    kwargs: dict[str, Any] = {
        "dtype": dtype,
        "trust_remote_code": cfg.trust_remote_code,
        "revision": cfg.revision,
        "attn_implementation": cfg.attn_implementation,
        "use_safetensors": True,
    }
    if cfg.quantization == "4bit":
        kwargs["quantization_config"] = quantization_config(cfg, dtype)
        kwargs["device_map"] = weights_device_map()
    try:
        model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load model '{base}': {_first_line(exc)}") from exc
    if cfg.quantization == "none" and device_name() == "cuda":
        model = model.to("cuda")
    if training and cfg.quantization == "4bit":
        keep_4bit_layers_differentiable(model)
    return model


def keep_4bit_layers_differentiable(model) -> int:
    """Stop bitsandbytes from repacking 4-bit weights into its CPU inference layout during training.

    On a CPU with AVX-512 BF16, a ``Linear4bit`` that runs once in eval mode without gradients (a validation
    pass) converts its weight in place to a layout whose matmul has no backward through the input; every later
    training step then silently loses the gradient through the frozen base layers (torch only warns that
    "an autograd kernel was not registered"). Training validates before and between steps, so the conversion
    is switched off on the training model. Returns the number of 4-bit layers.
    """
    import bitsandbytes as bnb

    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    for layer in layers:
        layer.support_avx512bf16_for_cpu = False
    return len(layers)


# The head modules of transformers' *ForSequenceClassification models: trained in full, so never quantised.
CLASSIFIER_HEADS = ["classifier", "score", "pre_classifier"]


def load_sequence_classifier(
    base: str, cfg: ModelConfig, labels: list[str], pad_token_id: int | None, precision: str = "fp32"
) -> PreTrainedModel:
    """An encoder or decoder with a fresh classification head over ``labels``."""
    from transformers import AutoModelForSequenceClassification

    kwargs: dict[str, Any] = {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
        "dtype": torch_dtype(precision),
        "trust_remote_code": cfg.trust_remote_code,
        "revision": cfg.revision,
        "use_safetensors": True,
    }
    if cfg.quantization == "4bit":
        kwargs["quantization_config"] = quantization_config(
            cfg, torch_dtype("bf16" if precision == "fp32" else precision), skip=CLASSIFIER_HEADS
        )
        kwargs["device_map"] = weights_device_map()
    try:
        model = AutoModelForSequenceClassification.from_pretrained(base, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load '{base}' as a classifier: {_first_line(exc)}") from exc
    if model.config.pad_token_id is None:  # decoders (SmolLM2, Llama) need it to find each row's last token
        model.config.pad_token_id = pad_token_id
    if cfg.quantization == "4bit":
        keep_4bit_layers_differentiable(model)
    elif device_name() == "cuda":
        model = model.to("cuda")
    return model


def peft_lora_config(cfg: LoraConfig, task_type: str = "CAUSAL_LM"):
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,
        use_dora=cfg.dora,
        modules_to_save=cfg.modules_to_save or None,
        bias="none",
        task_type=task_type,
    )


# --------------------------------------------------------------------------------------- adapters

# Loading pickle-format weights runs code from the file's author; adapterlab refuses them unless this is set.
ALLOW_PICKLE_ENV = "ADAPTERLAB_ALLOW_PICKLE"
SAFE_WEIGHTS = "adapter_model.safetensors"
PICKLE_WEIGHTS = "adapter_model.bin"


def require_safetensors(adapter_dir: Path, allow_pickle: bool | None = None) -> None:
    """Refuse an adapter whose weights exist only as a pickle (``adapter_model.bin``), with the command that
    converts it; ``allow_pickle`` (or ADAPTERLAB_ALLOW_PICKLE=1) lets PEFT read it with ``weights_only``."""
    if (adapter_dir / SAFE_WEIGHTS).is_file():
        return
    if allow_pickle is None:
        allow_pickle = os.environ.get(ALLOW_PICKLE_ENV, "") == "1"
    pickled = adapter_dir / PICKLE_WEIGHTS
    if pickled.is_file() and allow_pickle:
        return
    if pickled.is_file():
        raise ModelError(
            f"{pickled}: adapter weights in pickle format; adapterlab loads safetensors only. Convert them once "
            f"with: python -c \"import torch, safetensors.torch as s; s.save_file(torch.load('{pickled}', "
            f"weights_only=True), '{adapter_dir / SAFE_WEIGHTS}')\" (or set {ALLOW_PICKLE_ENV}=1 to load it anyway)"
        )
    raise ModelError(f"{adapter_dir}: no adapter weights ({SAFE_WEIGHTS}) in this directory")


def dequantize_4bit(model, dtype: torch.dtype):
    """A bitsandbytes 4-bit model with every quantised layer replaced by a plain linear layer holding its
    de-quantised weights (transformers' own ``dequantize``): the exact weights a QLoRA adapter was trained against,
    ready for a full-precision merge. PEFT's merge into 4-bit layers would quantise the merged weights again."""
    return model.dequantize(dtype=dtype)


def weights_fingerprint(base: str) -> str | None:
    """A digest of a local model directory's config and safetensors headers (names, dtypes, shapes, offsets) and
    file sizes: cheap to compute, and it changes when the weights are another model's. None for a hub id."""
    import hashlib
    import struct

    folder = Path(base)
    if not folder.is_dir():
        return None
    digest = hashlib.sha256()
    config = folder / "config.json"
    if config.is_file():
        digest.update(config.read_bytes())
    for path in sorted(folder.glob("*.safetensors")):
        with path.open("rb") as handle:
            size = struct.unpack("<Q", handle.read(8))[0]
            digest.update(path.name.encode() + handle.read(min(size, 100_000_000)))
        digest.update(str(path.stat().st_size).encode())
    return digest.hexdigest()


def adapter_base(info: AdapterInfo) -> str:
    """The base model an adapter was trained on, resolved again (the embedded model's cache may have moved)."""
    spec = info.base_model.spec
    return resolve_base(spec) if spec in EMBEDDED else info.base_model.resolved


def load_with_adapter(
    info: AdapterInfo,
    precision: str = "fp32",
    cfg: ModelConfig | None = None,
    adapter_name: str = "default",
    dequantized: bool = False,
):
    """The base model with the adapter attached under ``adapter_name``, and the adapter's own tokenizer.

    ``dequantized``: a 4-bit (QLoRA) base is de-quantised to ``precision`` before the adapter is attached, so that
    the adapter sits on the exact weights it was trained against, in plain linear layers it can be merged into.
    """
    from peft import PeftModel
    from transformers import AutoTokenizer

    require_safetensors(info.path)
    cfg = cfg or info.model
    model = load_causal_lm(adapter_base(info), cfg, "fp32" if dequantized else precision)
    if dequantized and cfg.quantization == "4bit":
        model = dequantize_4bit(model, torch_dtype(precision))
    tokenizer = AutoTokenizer.from_pretrained(info.path)
    model = PeftModel.from_pretrained(model, info.path, adapter_name=adapter_name)
    model.eval()
    return model, tokenizer


def load_with_adapters(infos: dict[str, AdapterInfo], precision: str = "fp32"):
    """One base model with several adapters attached, each under its name (``adapterlab compare``); every adapter
    must have been trained on the same base. The tokenizer is the first adapter's."""
    names = list(infos)
    first = infos[names[0]]
    for other in (infos[name] for name in names[1:]):
        if adapter_base(other) != adapter_base(first) or other.model.quantization != first.model.quantization:
            raise ModelError(
                f"{other.path}: trained on {other.base_model.spec} ({other.model.quantization}), not on "
                f"{first.base_model.spec} ({first.model.quantization}) like {first.path}; compare adapters of one base"
            )
    model, tokenizer = load_with_adapter(first, precision, adapter_name=names[0])
    for name in names[1:]:
        require_safetensors(infos[name].path)
        model.load_adapter(str(infos[name].path), adapter_name=name)
    model.eval()
    return model, tokenizer


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
