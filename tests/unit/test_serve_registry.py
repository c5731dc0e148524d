"""Run-time adapter loading (issue 12): the adapter-root allow-list holds against symlinks, and a load that fails
for any reason is a 4xx with the reason and leaves the model exactly as it was."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from test_serve_api import wait_status

from adapterlab.serve.api import create_app
from adapterlab.serve.registry import Registry, ServeError
from adapterlab.serve.settings import ServeSettings
from hostile import ESCAPES, break_copies, escape_adapter_entry, make_root

pytestmark = pytest.mark.probe


@pytest.fixture
def root(tmp_path, trained_run) -> Path:
    """An adapter root with a good copy of the trained adapter, and the same adapter outside the root."""
    return make_root(tmp_path, trained_run / "adapter")


@pytest.mark.parametrize("escape", ESCAPES, ids=[e.__name__ for e in ESCAPES])
def test_symlinks_out_of_the_adapter_root_are_refused(root, trained_run, escape):
    escape(root)
    registry = Registry([f"support={trained_run}"], precision="fp32", adapter_root=root)
    registry.load()
    with pytest.raises(PermissionError, match="leads outside the adapter root"):
        registry.add("evil", "evil")
    assert "evil" not in registry.names()


@pytest.mark.parametrize("member", ["../../../outside/adapter", "../../good/../../outside/adapter"])
def test_an_ensemble_whose_members_leave_the_root_is_refused(root, trained_run, member):
    """A fold ensemble (adapterlab cv) reads its members' folders: they are held to the root like its own files."""
    ensemble = root / "ensemble" / "adapter"
    ensemble.mkdir(parents=True)
    meta = json.loads((root / "good" / "adapter" / "adapterlab.json").read_text())
    meta["task_info"] = {**meta["task_info"], "members": ["../../good/adapter", member]}
    (ensemble / "adapterlab.json").write_text(json.dumps(meta))
    registry = Registry([f"support={trained_run}"], precision="fp32", adapter_root=root)
    registry.load()
    with pytest.raises(PermissionError, match="its member .* leads outside the adapter root"):
        registry.add("ensemble", "ensemble")
    assert "ensemble" not in registry.names()


def test_symlinks_that_stay_inside_the_root_are_fine(root, trained_run):
    (root / "alias").symlink_to(root / "good", target_is_directory=True)
    registry = Registry([f"support={trained_run}"], precision="fp32", adapter_root=root)
    registry.load()
    assert registry.add("alias", "alias").name == "alias"


# ------------------------------------------------------------------ failed loads


def model_fingerprint(registry: Registry) -> dict:
    model = registry.model
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "parameters_and_trainable": sorted((name, p.requires_grad) for name, p in model.named_parameters()),
        "modules": sorted(name for name, _ in model.named_modules()),
        "adapters": sorted(getattr(model, "peft_config", {})),  # a plain base has none, not even an empty one
        "is_peft": hasattr(model, "peft_config"),
        "served": registry.names(),
    }


@pytest.mark.parametrize("first_adapter", [False, True], ids=["on-a-peft-model", "first-adapter-on-a-plain-base"])
def test_a_failed_load_leaves_the_model_as_it_was(root, trained_run, tiny_model_dir, first_adapter):
    runs = [] if first_adapter else [f"support={trained_run}"]
    registry = Registry(runs, base=str(tiny_model_dir), precision="fp32", adapter_root=root)
    registry.load()
    before = model_fingerprint(registry)
    for broken in break_copies(root):
        with pytest.raises(ServeError, match=r"^path: "):
            registry.add("newcomer", broken)
        assert model_fingerprint(registry) == before, f"{broken} changed the model"
    registry.add("newcomer", "good")  # the name is free and the model takes a good adapter afterwards
    assert "newcomer" in registry.names() and "newcomer" in registry.model.peft_config


def test_loader_failures_are_4xx_with_the_reason_and_the_server_is_unchanged(root, trained_run):
    broken = break_copies(root)
    escape_adapter_entry(root)
    registry = Registry([f"support={trained_run}"], precision="fp32", adapter_root=root)
    settings = ServeSettings(ui=False)
    with TestClient(create_app(registry, settings), raise_server_exceptions=False) as client:
        wait_status(client, 200)
        before = model_fingerprint(registry)
        cases = dict.fromkeys(broken, 400) | {
            "evil": 403,
            "a/" * 600: 400,
            "x" * 300: 400,
            "a/" * 500: 404,
        }
        for path, status in cases.items():
            r = client.post("/admin/adapters", json={"name": "newcomer", "path": path})
            assert r.status_code == status, f"{path[:20]}: {r.status_code} {r.text[:300]}"
            error = r.json()["error"]
            assert error["param"] == "path" and len(error["message"].splitlines()) == 1
            assert str(root) not in error["message"]  # the reason, not the server's directory layout
        assert model_fingerprint(registry) == before
        assert client.post("/admin/adapters", json={"name": "newcomer", "path": "good"}).status_code == 201


def test_reasons_name_what_is_wrong(root, trained_run):
    registry = Registry([f"support={trained_run}"], precision="fp32", adapter_root=root)
    registry.load()
    reasons = {}
    for broken in break_copies(root):
        with pytest.raises(ServeError) as caught:
            registry.add("newcomer", broken)
        reasons[broken] = str(caught.value)
    assert "symlink loop" in reasons["symlink_loop"]
    assert "pickle format" in reasons["refused_pickle"] and "safetensors only" in reasons["refused_pickle"]
    assert all("/tmp" not in reason and "pytest" not in reason for reason in reasons.values())  # no server paths
    assert "size mismatch" in reasons["weights_of_the_wrong_shape"]
    assert "adapterlab.json" in reasons["broken_adapterlab_json"]


def test_unreadable_meta_is_a_serve_error_not_a_crash(tmp_path):
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapterlab.json").write_text(json.dumps(["not", "an", "object"]))
    registry = Registry([str(tmp_path)])
    with pytest.raises(ServeError, match="not an adapterlab.json"):
        registry.load()
    assert os.path.isdir(tmp_path)
