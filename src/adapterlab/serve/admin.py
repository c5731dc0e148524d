"""Run-time adapter loading and unloading (``/admin/adapters``): one change at a time (the state's admin lock), and
a chat adapter under the engine's lock so no decoding step sees a half-changed model."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from adapterlab.serve.batching import Failure
from adapterlab.serve.body import read_body
from adapterlab.serve.errors import ApiError
from adapterlab.serve.registry import ServeError, shown
from adapterlab.serve.routes import Authorized, errors, json_body, model_card
from adapterlab.serve.schemas import AdapterLoad
from adapterlab.serve.state import State, check_ready

router = APIRouter()


@router.post("/admin/adapters", status_code=201, openapi_extra=json_body(AdapterLoad),
             responses=errors(400, 401, 403, 404, 409, 413, 503))  # fmt: skip
async def load_adapter(request: Request, state: Authorized):
    body = await read_body(request, AdapterLoad, state.settings.max_body_bytes)
    check_ready(state)

    def work():
        with state.admin_lock:
            model = state.registry.add(body.name, body.path, chat_lock=lambda: engine_lock(state))
            if state.engine is not None:
                with engine_lock(state):
                    state.engine.mixed_adapters = not state.registry.has_dora
            return model

    model = await run_in_threadpool(admin_call, work)
    return model_card(body.name, model, state.registry)


@router.delete("/admin/adapters/{name}", responses=errors(401, 403, 404, 503))
async def unload_adapter(name: str, state: Authorized):
    check_ready(state)
    gone = Failure(
        409, "model_unloaded", f"model {shown(name)} was unloaded while this request ran; pick another model"
    )

    def work():
        with state.admin_lock, engine_lock(state):
            if state.engine is not None:
                # Its rows leave the batch at the next step, before any forward pass would name the adapter.
                state.engine.abort_adapter(name, gone)
            state.registry.remove(name)

    await run_in_threadpool(admin_call, work)
    return {"id": name, "object": "model", "deleted": True}


def engine_lock(state: State):
    return state.engine.lock if state.engine else threading.Lock()


def admin_call(work: Callable[[], Any]) -> Any:
    """Run an admin change, turning the registry's exceptions into API errors."""
    try:
        return work()
    except PermissionError as exc:
        raise ApiError(403, str(exc), "path" if str(exc).startswith("path") else "name", "forbidden") from None
    except FileNotFoundError as exc:
        raise ApiError(404, str(exc), "path", "not_found") from None
    except FileExistsError as exc:
        raise ApiError(409, str(exc), "name", "exists") from None
    except KeyError as exc:
        raise ApiError(404, f"model {exc} is not served here", "name", "model_not_found") from None
    except ServeError as exc:
        param = str(exc).partition(":")[0]
        raise ApiError(400, str(exc), param if param in ("path", "name") else None, "invalid_adapter") from None
