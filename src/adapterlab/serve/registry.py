"""What a server serves: one generative base loaded once, the chat adapters attached to it by name, and the
classifier adapters (each a small encoder of its own).

Names: a run is served under its directory name (``runs/support`` -> ``support``) or ``NAME=PATH``;
``base`` is the plain base model. Adapters can be added and removed while serving, but only from directories
under an allow-listed root, so a request can never make the server read an arbitrary path.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapterlab.errors import AdapterlabError

BASE_NAME = "base"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class ServeError(AdapterlabError):
    """A problem with what the server was asked to serve."""


@dataclass
class ChatModel:
    name: str
    adapter: str  # the PEFT adapter name, or batching.BASE for the plain base
    tokenizer: Any
    system_prompt: str | None
    stop_token_ids: set[int]
    path: Path | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    task: str = "chat"

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """The prompt exactly as in training: the adapter's own chat template and its default system prompt."""
        from adapterlab.rendering import encode_prompt

        if self.system_prompt and not any(m["role"] == "system" for m in messages):
            messages = [{"role": "system", "content": self.system_prompt}, *messages]
        return encode_prompt(self.tokenizer, messages)

    def encode_text(self, prompt: str) -> list[int]:
        return list(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])


@dataclass
class ClassifyModel:
    name: str
    classifier: Any  # adapterlab.classifier.Classifier
    path: Path
    created: int = field(default_factory=lambda: int(time.time()))
    task: str = "classify"


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


def adapter_meta(path: Path) -> tuple[Path, dict[str, Any]]:
    from adapterlab.runs import AdapterInfo

    try:
        info = AdapterInfo.read(path)
    except AdapterlabError as exc:
        raise ServeError(str(exc)) from None
    return info.path, {**info.model_dump(mode="json"), **info.task_info}


class Registry:
    """Loads models once; maps request model names to what serves them."""

    def __init__(
        self,
        specs: list[str],
        base: str | None = None,
        precision: str = "auto",
        adapter_root: str | Path | None = None,
    ):
        self.specs = [parse_spec(s) for s in specs]
        names = [n for n, _ in self.specs]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ServeError(f"two runs would both be served as '{dupes[0]}'; name them with NAME=PATH")
        self.base_spec = base
        self.precision = precision
        self.adapter_root = Path(adapter_root).resolve() if adapter_root else None
        self.chat: dict[str, ChatModel] = {}
        self.classify: dict[str, ClassifyModel] = {}
        self.model = None  # the one generative model (a PeftModel once an adapter is attached)
        self.base_resolved: str | None = None
        self.context_length = 2048
        self.has_dora = False

    # ------------------------------------------------------------------ loading

    def load(self) -> None:
        chat_specs, classify_specs = [], []
        for name, path in self.specs:
            adapter_dir, meta = adapter_meta(path)
            (classify_specs if meta.get("task") == "classify" else chat_specs).append((name, adapter_dir, meta))
        base = self.base_spec or (chat_specs[0][2]["base_model"]["spec"] if chat_specs else None)
        if base is not None:
            self._load_base(base)
        for name, adapter_dir, meta in chat_specs:
            self._attach(name, adapter_dir, meta)
        for name, adapter_dir, _meta in classify_specs:
            self._load_classifier(name, adapter_dir)
        if not self.chat and not self.classify:
            raise ServeError("nothing to serve: give run directories, or --base for the plain base model")

    def _load_base(self, spec: str) -> None:
        from adapterlab.config import ModelConfig
        from adapterlab.generation import stop_token_ids
        from adapterlab.models import load_causal_lm, load_tokenizer, pick_precision, resolve_base
        from adapterlab.serve.batching import BASE

        self.base_resolved = resolve_base(spec)
        self.precision = pick_precision(self.precision)
        self.model = load_causal_lm(self.base_resolved, ModelConfig(base=spec), self.precision)
        self.model.eval()
        tokenizer = load_tokenizer(self.base_resolved, chat=True)
        self.context_length = int(getattr(self.model.config, "max_position_embeddings", 2048) or 2048)
        self.chat[BASE_NAME] = ChatModel(
            BASE_NAME, BASE, tokenizer, None, set(stop_token_ids(tokenizer, self.model)), task="base"
        )

    def _attach(self, name: str, adapter_dir: Path, meta: dict[str, Any]) -> None:
        from peft import PeftModel
        from transformers import AutoTokenizer

        from adapterlab.generation import stop_token_ids
        from adapterlab.models import resolve_base

        if self.model is None:
            raise ServeError(f"{adapter_dir}: a chat adapter needs a base model; start the server with a chat run")
        wanted = resolve_base(meta["base_model"]["spec"])
        if Path(wanted).resolve() != Path(self.base_resolved).resolve() and wanted != self.base_resolved:
            raise ServeError(
                f"{adapter_dir}: trained on {meta['base_model']['spec']}, but this server's base is "
                f"{self.base_resolved}; serve adapters of one base per server"
            )
        if isinstance(self.model, PeftModel):
            self.model.load_adapter(str(adapter_dir), adapter_name=name)
        else:
            self.model = PeftModel.from_pretrained(self.model, str(adapter_dir), adapter_name=name)
        self.model.eval()
        self.has_dora = self.has_dora or bool(getattr(self.model.peft_config[name], "use_dora", False))
        tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
        system_prompt = meta.get("prompt", {}).get("system_prompt")
        stops = set(stop_token_ids(tokenizer, self.model))
        self.chat[name] = ChatModel(name, name, tokenizer, system_prompt, stops, path=adapter_dir)

    def _load_classifier(self, name: str, adapter_dir: Path) -> None:
        from adapterlab.models import pick_precision
        from adapterlab.tasks.classify.infer import Classifier

        classifier = Classifier.load(adapter_dir, precision=pick_precision(self.precision))
        self.classify[name] = ClassifyModel(name, classifier, adapter_dir)

    # ------------------------------------------------------------------ lookups and run-time changes

    def names(self) -> list[str]:
        return [*self.chat, *self.classify]

    def resolve_under_root(self, relative: str) -> Path:
        """A directory under the allow-listed root, or ServeError; symlinks and '..' cannot leave the root."""
        if self.adapter_root is None:
            raise PermissionError("loading adapters at run time is off; start the server with --adapter-root DIR")
        if not relative or "\x00" in relative:
            raise ServeError("path: give a directory relative to the adapter root")
        target = (self.adapter_root / relative).resolve()
        if not target.is_relative_to(self.adapter_root):
            raise PermissionError(f"path: '{relative}' is outside the adapter root")
        if not target.is_dir():
            raise FileNotFoundError(f"path: no directory '{relative}' under the adapter root")
        return target

    def add(self, name: str, relative: str) -> ChatModel | ClassifyModel:
        if not NAME_RE.match(name) or name == BASE_NAME:
            raise ServeError(f"name: '{name}' cannot be a model name; use letters, digits, '.', '_' or '-'")
        if name in self.chat or name in self.classify:
            raise FileExistsError(f"name: a model named '{name}' is already served; unload it first")
        adapter_dir, meta = adapter_meta(self.resolve_under_root(relative))
        if meta.get("task") == "classify":
            self._load_classifier(name, adapter_dir)
            return self.classify[name]
        self._attach(name, adapter_dir, meta)
        return self.chat[name]

    def remove(self, name: str) -> None:
        if name == BASE_NAME:
            raise PermissionError("name: the base model cannot be unloaded")
        if name in self.classify:
            del self.classify[name]
            return
        if name not in self.chat:
            raise KeyError(name)
        del self.chat[name]
        self.model.delete_adapter(name)
