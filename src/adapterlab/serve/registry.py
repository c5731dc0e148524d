"""What a server serves: one generative base loaded once, the chat adapters attached to it by name, and the
classifier adapters (each a small encoder of its own).

Names: a run is served under its directory name (``runs/support`` -> ``support``) or ``NAME=PATH``;
``base`` is the plain base model. Adapters can be added and removed while serving, but only from directories
under an allow-listed root (every path that will be read is resolved and must stay inside it), and a load that
fails leaves the model exactly as it was.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from adapterlab.errors import AdapterlabError
from adapterlab.registry import get_task
from adapterlab.runs import AdapterInfo

log = logging.getLogger("adapterlab.serve")

BASE_NAME = "base"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_ADAPTER_FILES = 1000  # an adapter directory holds a dozen files; more is not an adapter

Kind = Literal["generate", "classify"]


class ServeError(AdapterlabError):
    """A problem with what the server was asked to serve."""


def shown(value: str, limit: int = 80) -> str:
    """A client's string inside a one-line message: quoted, with control characters and lone surrogates escaped
    (repr does both) and cut to a readable length."""
    return repr(value if len(value) <= limit else value[:limit] + "...")


def adapter_kind(info: AdapterInfo) -> Kind:
    """What an adapter does, as its task says: ``generate`` (a LoRA on the shared chat base) or ``classify`` (a
    model of its own, answered on /v1/classify)."""
    try:
        task = get_task(info.task)
    except AdapterlabError as exc:
        raise ServeError(f"{info.path.name}: {exc}") from None
    return "generate" if task.generative else "classify"


def display_name(spec: str) -> str:
    """A base model as users name it: the embedded model's name, a hub id, or a local directory's name (never
    the server's filesystem path)."""
    from adapterlab.assets import EMBEDDED

    if spec in EMBEDDED:
        return EMBEDDED[spec].name
    path = Path(spec).expanduser()
    if path.is_absolute() or spec.startswith((".", "~")) or path.is_dir():
        return path.name if path.name not in ("model", "adapter", "") else path.parent.name
    return spec


@dataclass
class ChatModel:
    name: str
    adapter: str  # the PEFT adapter name, or batching.BASE for the plain base
    tokenizer: Any
    system_prompt: str | None
    stop_token_ids: set[int]
    path: Path | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    task: str = "chat"  # information for clients; the server branches on kind
    kind: Kind = "generate"
    user_prefix: str | None = None  # what led every training prompt's user message (a summariser's instruction)
    # The decoding the run was evaluated with (its recipe's eval.repetition_penalty and eval.stop): a request that
    # does not set these fields is answered as evaluation measured the adapter.
    repetition_penalty: float = 1.0
    stop: list[str] = field(default_factory=list)

    @classmethod
    def of_adapter(cls, name: str, info: AdapterInfo, tokenizer: Any, stop_token_ids: set[int]) -> ChatModel:
        prompt = info.task_info.get("prompt", {})
        decoding = info.task_info.get("decoding", {})
        return cls(name, name, tokenizer, prompt.get("system_prompt"), stop_token_ids, path=info.path, task=info.task,
                   user_prefix=prompt.get("user_prefix"),
                   repetition_penalty=float(decoding.get("repetition_penalty", 1.0)),
                   stop=list(decoding.get("stop", [])))  # fmt: skip

    def decoding(self) -> dict[str, Any]:
        """What the server uses for a request that leaves these out (shown on the model's card)."""
        return {"repetition_penalty": self.repetition_penalty, "stop": list(self.stop)}

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """The prompt exactly as in training: the adapter's own chat template, its default system prompt, and the
        instruction its user messages were led by."""
        from adapterlab.rendering import encode_prompt, with_user_prefix

        if self.system_prompt and not any(m["role"] == "system" for m in messages):
            messages = [{"role": "system", "content": self.system_prompt}, *messages]
        return encode_prompt(self.tokenizer, with_user_prefix(messages, self.user_prefix))

    def encode_text(self, prompt: str) -> list[int]:
        return list(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])


@dataclass
class ClassifyModel:
    name: str
    classifier: Any  # what the task's load_served gives (adapterlab.tasks.classify.infer.Classifier)
    path: Path
    created: int = field(default_factory=lambda: int(time.time()))
    task: str = "classify"
    kind: Kind = "classify"


def parse_spec(spec: str) -> tuple[str, Path]:
    """``NAME=PATH`` or ``PATH`` (named after the run directory)."""
    name, sep, path = spec.partition("=")
    if not sep:
        path = spec
        p = Path(spec)
        name = p.parent.name if p.name == "adapter" else p.name
    if not NAME_RE.match(name) or name == BASE_NAME:
        raise ServeError(f"{spec}: '{name}' cannot be a model name; use letters, digits, '.', '_' or '-' (not 'base')")
    return name, Path(path)


def adapter_info(path: Path) -> AdapterInfo:
    """The adapter of a run directory or adapter directory, read through AdapterInfo; a ServeError otherwise."""
    try:
        return AdapterInfo.read(path)
    except AdapterlabError as exc:
        raise ServeError(str(exc)) from None


class Registry:
    """Loads models once; maps request model names to what serves them."""

    def __init__(
        self,
        specs: list[str],
        base: str | None = None,
        precision: str = "auto",
        adapter_root: str | Path | None = None,
        engine: str = "transformers",
        compile_classifiers: bool = False,
    ):
        self.specs = [parse_spec(s) for s in specs]
        names = [n for n, _ in self.specs]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ServeError(f"two runs would both be served as '{dupes[0]}'; name them with NAME=PATH")
        self.base_spec = base
        self.precision = precision
        self.compile_classifiers = compile_classifiers
        self.adapter_root = Path(adapter_root).resolve() if adapter_root else None
        self.chat: dict[str, ChatModel] = {}
        self.classify: dict[str, ClassifyModel] = {}
        self.model = None  # the one generative model (a PeftModel once an adapter is attached)
        self.base_resolved: str | None = None
        self.base_name: str | None = None  # what clients see of the base (never a filesystem path)
        self.context_length = 2048
        self.has_dora = False
        # engine "vllm": no weights load here; the chat models keep their tokenizers (prompts are rendered here)
        # and their adapter directories go to the vLLM server (self.remote, once it runs).
        self.engine = engine
        self.adapter_dirs: dict[str, Path] = {}
        self.remote: Any = None
        self.vllm_max_rank: int | None = None

    # ------------------------------------------------------------------ loading

    def load(self) -> None:
        generators, classifiers = [], []
        for name, path in self.specs:
            info = adapter_info(path)
            (classifiers if adapter_kind(info) == "classify" else generators).append((name, info))
        base = self.base_spec or (generators[0][1].base_model.spec if generators else None)
        if base is not None:
            self._load_base(base)
        for name, info in generators:
            self._attach(name, info)
        for name, info in classifiers:
            self._load_classifier(name, info)
        if not self.chat and not self.classify:
            raise ServeError("nothing to serve: give run directories, or --base for the plain base model")

    def preflight_vllm(self) -> None:
        """Every chat adapter checked against what vLLM refuses, from its adapter_config.json (no weights read)."""
        from adapterlab.vllm import VLLM_RANKS, check_adapters

        chat = {}
        for name, path in self.specs:
            info = adapter_info(path)
            if adapter_kind(info) != "classify":
                chat[name] = info.path
        check_adapters(chat, VLLM_RANKS[-1])

    def _load_base(self, spec: str) -> None:
        from adapterlab.config import ModelConfig
        from adapterlab.generation import stop_token_ids
        from adapterlab.models import load_causal_lm, load_tokenizer, pick_precision, resolve_base
        from adapterlab.serve.batching import BASE

        self.base_resolved = resolve_base(spec)
        self.base_name = display_name(spec)
        self.precision = pick_precision(self.precision)
        tokenizer = load_tokenizer(self.base_resolved, chat=True)
        if self.engine == "vllm":
            config, model = _config_only(self.base_resolved)
        else:
            self.model = model = load_causal_lm(self.base_resolved, ModelConfig(base=spec), self.precision)
            self.model.eval()
            config = self.model.config
        self.context_length = int(getattr(config, "max_position_embeddings", 2048) or 2048)
        stops = set(stop_token_ids(tokenizer, model))
        self.chat[BASE_NAME] = ChatModel(BASE_NAME, BASE, tokenizer, None, stops, task="base")

    def _attach(self, name: str, info: AdapterInfo) -> None:
        """Attach a chat adapter. Everything that can fail on the adapter's files is read before the model
        changes (PEFT injects the LoRA layers before it reads the weights); a failure after that is undone."""
        from peft import PeftConfig, PeftModel, load_peft_weights
        from transformers import AutoTokenizer

        from adapterlab.generation import stop_token_ids
        from adapterlab.models import require_safetensors

        adapter_dir = info.path
        if BASE_NAME not in self.chat:
            raise ServeError(f"{adapter_dir}: a chat adapter needs a base model; start the server with a chat run")
        self._check_same_base(adapter_dir, info)
        require_safetensors(adapter_dir)  # safetensors only, unless ADAPTERLAB_ALLOW_PICKLE=1
        tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
        PeftConfig.from_pretrained(str(adapter_dir))
        load_peft_weights(str(adapter_dir), device="cpu")  # small; read once more by PEFT below
        if self.engine == "vllm":
            self._attach_remote(name, info, tokenizer)
            return
        before = self.model
        trainable = {n: p.requires_grad for n, p in before.named_parameters()}  # PEFT freezes the base's
        try:
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(str(adapter_dir), adapter_name=name)
            else:
                self.model = PeftModel.from_pretrained(self.model, str(adapter_dir), adapter_name=name)
            self.model.eval()
        except BaseException:
            self._undo_attach(name, before, trainable)
            raise
        self.has_dora = self.has_dora or bool(getattr(self.model.peft_config[name], "use_dora", False))
        self.chat[name] = ChatModel.of_adapter(name, info, tokenizer, set(stop_token_ids(tokenizer, self.model)))

    def _attach_remote(self, name: str, info: AdapterInfo, tokenizer: Any) -> None:
        """A chat adapter served by vLLM: refused here with the reason if vLLM would refuse it; loaded into the
        running server when one runs (an adapter added through /admin/adapters)."""
        from adapterlab.generation import stop_token_ids
        from adapterlab.vllm import VLLM_RANKS, adapter_config, check_adapters

        # Before vLLM starts its rank limit is ours to choose (it covers every adapter); then it is fixed.
        check_adapters({name: info.path}, self.vllm_max_rank if self.remote is not None else VLLM_RANKS[-1])
        rank = int(adapter_config(info.path).get("r") or 8)
        if self.remote is not None:
            self.remote.load_adapter(name, info.path)
        else:
            self.vllm_max_rank = max(self.vllm_max_rank or 0, rank)
        self.adapter_dirs[name] = info.path
        _, model = _config_only(self.base_resolved)
        self.chat[name] = ChatModel.of_adapter(name, info, tokenizer, set(stop_token_ids(tokenizer, model)))

    def _check_same_base(self, adapter_dir: Path, info: AdapterInfo) -> None:
        from adapterlab.models import resolve_base

        spec = info.base_model.spec
        wanted = resolve_base(str(spec))
        if Path(wanted).resolve() != Path(self.base_resolved).resolve() and wanted != self.base_resolved:
            raise ServeError(
                f"{adapter_dir.name}: trained on {display_name(str(spec))}, but this server's base is "
                f"{self.base_name}; serve adapters of one base per server"
            )

    def _undo_attach(self, name: str, before: Any, trainable: dict[str, bool]) -> None:
        """Put the model back as it was before a failed attach."""
        from peft import PeftModel
        from peft.tuners.tuners_utils import BaseTunerLayer

        if isinstance(before, PeftModel):
            if name in before.peft_config:
                before.delete_adapter(name)
        else:  # PeftModel.from_pretrained wrapped the plain base's layers in place and gave it a peft_config
            for key, module in list(before.named_modules()):
                if isinstance(module, BaseTunerLayer):
                    parent_name, _, child = key.rpartition(".")
                    parent = before.get_submodule(parent_name) if parent_name else before
                    setattr(parent, child, module.get_base_layer())
            before.__dict__.pop("peft_config", None)
        for param_name, param in before.named_parameters():
            param.requires_grad_(trainable.get(param_name, param.requires_grad))
        self.model = before

    def _load_classifier(self, name: str, info: AdapterInfo) -> None:
        """A non-generative task's model of its own, as the task loads it for serving."""
        from adapterlab.models import pick_precision

        served = get_task(info.task).load_served(info, pick_precision(self.precision), self.compile_classifiers)
        self.classify[name] = ClassifyModel(name, served, info.path, task=info.task)

    # ------------------------------------------------------------------ lookups and run-time changes

    def names(self) -> list[str]:
        return [*self.chat, *self.classify]

    def resolve_under_root(self, relative: str) -> Path:
        """The adapter directory a request names, after checking that it and every file in it resolve to paths
        inside the allow-listed root (symlinks and '..' cannot leave it). PermissionError outside the root,
        FileNotFoundError when missing, ServeError when the path cannot be resolved (loops, over-long names)."""
        root = self.adapter_root
        if root is None:
            raise PermissionError("loading adapters at run time is off; start the server with --adapter-root DIR")
        if not relative or "\x00" in relative:
            raise ServeError("path: give a directory relative to the adapter root")
        target = self._inside_root(root / relative, relative)
        try:
            if not target.is_dir():
                raise FileNotFoundError(f"path: no directory {shown(relative)} under the adapter root")
            nested = (target / "adapter").is_dir()
        except OSError as exc:
            if isinstance(exc, FileNotFoundError):
                raise
            raise ServeError(f"path: cannot read {shown(relative)}: {exc.strerror or type(exc).__name__}") from None
        adapter_dir = self._inside_root(target / "adapter", relative) if nested else target
        for count, entry in enumerate(adapter_dir.rglob("*")):  # rglob does not descend into symlinked folders
            if count >= MAX_ADAPTER_FILES:
                raise ServeError(
                    f"path: {shown(relative)} holds over {MAX_ADAPTER_FILES} files; not an adapter directory"
                )
            self._inside_root(entry, f"{relative}/{entry.relative_to(adapter_dir)}")
        return adapter_dir

    def _inside_root(self, path: Path, label: str) -> Path:
        try:
            resolved = path.resolve()
        except RuntimeError:  # Python before 3.13 reports a symlink loop so
            raise ServeError(f"path: cannot resolve {shown(label)}: a symlink loop") from None
        except OSError as exc:  # ELOOP (3.13+), ENAMETOOLONG, EACCES
            raise ServeError(f"path: cannot resolve {shown(label)}: {exc.strerror or type(exc).__name__}") from None
        if not resolved.is_relative_to(self.adapter_root):
            raise PermissionError(f"path: {shown(label)} leads outside the adapter root")
        return resolved

    def add(self, name: str, relative: str, chat_lock: Callable[[], Any] = nullcontext) -> ChatModel | ClassifyModel:
        """Load an adapter from under the root. A failure is a ServeError (or PermissionError/FileNotFoundError/
        FileExistsError) with the reason, and leaves what is served unchanged. ``chat_lock()`` is held only while a
        chat adapter joins the shared base (the generation engine's lock); a classifier, a model of its own that may
        take a minute to compile, loads without stopping generation."""
        if not NAME_RE.match(name) or name == BASE_NAME:
            raise ServeError(f"name: {shown(name)} cannot be a model name; use letters, digits, '.', '_' or '-'")
        if name in self.chat or name in self.classify:
            raise FileExistsError(f"name: a model named {shown(name)} is already served; unload it first")
        adapter_dir = self.resolve_under_root(relative)
        try:
            info = adapter_info(adapter_dir)
        except Exception as exc:
            reason = _one_line(exc, paths={str(adapter_dir): relative, str(self.adapter_root): "<root>"})
            raise ServeError(f"path: cannot load the adapter in {shown(relative)}: {reason}") from None
        for ref in referenced_adapters(info):  # a fold ensemble's members are read too: they stay inside the root
            label = f"{relative} (its member {ref})"
            target = self._inside_root(adapter_dir / str(ref), label)
            self.resolve_under_root(str(target.relative_to(self.adapter_root)))
        try:
            if adapter_kind(info) == "classify":
                self._load_classifier(name, info)
                return self.classify[name]
            with chat_lock():
                self._attach(name, info)
            return self.chat[name]
        except MemoryError:
            raise
        except Exception as exc:  # anything the adapter's files made the loaders raise: the client's to fix
            log.info("loading %s failed", relative, exc_info=True)
            # Server paths out first, then cut to one readable line (cutting first could leave half a path)
            reason = _one_line(exc, paths={str(adapter_dir): relative, str(self.adapter_root): "<root>"})
            raise ServeError(f"path: cannot load the adapter in {shown(relative)}: {reason}") from None

    def remove(self, name: str) -> None:
        if name == BASE_NAME:
            raise PermissionError("name: the base model cannot be unloaded")
        if name in self.classify:
            del self.classify[name]
            return
        if name not in self.chat:
            raise KeyError(name)
        del self.chat[name]
        self.adapter_dirs.pop(name, None)
        if self.remote is not None:
            self.remote.unload_adapter(name)
        else:
            self.model.delete_adapter(name)


def referenced_adapters(info) -> list[str]:
    """Other adapter folders an adapter reads when it loads (an ``adapterlab cv`` ensemble's fold runs and its
    single run), relative to its own folder."""
    refs = info.task_info.get("members") or []
    single = info.task_info.get("single")
    return [str(r) for r in [*refs, *([single] if single else [])]]


def _config_only(base: str) -> tuple[Any, Any]:
    """A base model's config and, as an object with ``generation_config``, its generation defaults (stop ids),
    without loading its weights (the vLLM engine)."""
    from types import SimpleNamespace

    from transformers import AutoConfig, GenerationConfig

    config = AutoConfig.from_pretrained(base)
    try:
        generation = GenerationConfig.from_pretrained(base)
    except OSError:  # no generation_config.json
        generation = None
    return config, SimpleNamespace(config=config, generation_config=generation)


def _one_line(exc: BaseException, limit: int = 300, paths: dict[str, str] | None = None) -> str:
    """A loader's message on one line (torch puts the reason on the second), ``paths`` replaced by what the client
    may see, cut to a readable length."""
    text = " ".join(str(exc).split())
    for path, shown_as in (paths or {}).items():
        text = text.replace(path, shown_as)
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
