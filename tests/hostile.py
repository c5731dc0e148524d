"""Hostile material for the serve tests (unit and probe tiers): adapter directories that try to leave the
allow-listed root through symlinks, and adapter directories broken in every way a loader can fail.

A root made by :func:`make_root` holds ``good/adapter`` (a working adapter); the same adapter lies outside it in
``../outside/adapter``.
"""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path


def make_root(parent: Path, adapter: Path) -> Path:
    root = parent / "root"
    shutil.copytree(adapter, root / "good" / "adapter")
    shutil.copytree(adapter, parent / "outside" / "adapter", dirs_exist_ok=True)
    return root


def escape_adapter_entry(root: Path, name: str = "evil") -> None:
    (root / name).mkdir()
    (root / name / "adapter").symlink_to(root.parent / "outside" / "adapter", target_is_directory=True)


def escape_weights_file(root: Path, name: str = "evil") -> None:
    shutil.copytree(root / "good", root / name)
    weights = root / name / "adapter" / "adapter_model.safetensors"
    weights.unlink()
    weights.symlink_to(root.parent / "outside" / "adapter" / "adapter_model.safetensors")


def escape_tokenizer_file(root: Path, name: str = "evil") -> None:
    shutil.copytree(root / "good", root / name)
    tokenizer = root / name / "adapter" / "tokenizer.json"
    tokenizer.unlink()
    tokenizer.symlink_to(root.parent / "outside" / "adapter" / "tokenizer.json")


def escape_whole_directory(root: Path, name: str = "evil") -> None:
    (root / name).symlink_to(root.parent / "outside", target_is_directory=True)


ESCAPES = [escape_adapter_entry, escape_weights_file, escape_tokenizer_file, escape_whole_directory]


def broken_adapter_config(adapter: Path) -> None:
    (adapter / "adapter_config.json").write_text("{not json", encoding="utf-8")


def refused_pickle(adapter: Path) -> None:
    """A pickled state dict that runs code when unpickled: the weights-only loader must refuse it."""

    class Payload:
        def __reduce__(self):
            return (print, ("unpickled a payload",))

    (adapter / "adapter_model.safetensors").unlink()
    (adapter / "adapter_model.bin").write_bytes(pickle.dumps({"base_model.model.x": Payload()}))


def weights_of_the_wrong_shape(adapter: Path) -> None:
    """Readable weights that fail only after PEFT has injected the adapter's layers into the model."""
    from safetensors.torch import load_file, save_file

    path = adapter / "adapter_model.safetensors"
    tensors = {k: v[:, :-1].contiguous() if "lora_A" in k else v for k, v in load_file(path).items()}
    save_file(tensors, path)


def missing_tokenizer(adapter: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (adapter / name).unlink()


def broken_adapterlab_json(adapter: Path) -> None:
    (adapter / "adapterlab.json").write_text('{"task": "chat"', encoding="utf-8")


def symlink_loop(adapter: Path) -> None:
    shutil.rmtree(adapter.parent)
    adapter.parent.symlink_to(adapter.parent)


def break_copies(root: Path) -> list[str]:
    """One broken copy of ``good`` per way of breaking it; their paths relative to the root."""
    paths = []
    for breaks in BREAKS:
        shutil.copytree(root / "good", root / breaks.__name__)
        breaks(root / breaks.__name__ / "adapter")
        paths.append(breaks.__name__)
    return paths


BREAKS = [broken_adapter_config, refused_pickle, weights_of_the_wrong_shape, missing_tokenizer,
          broken_adapterlab_json, symlink_loop]  # fmt: skip
