"""``adapterlab serve``: an OpenAI-compatible server with several adapters on one base, and a web UI."""

from __future__ import annotations

import os
from typing import Any

API_KEY_ENV = "ADAPTERLAB_API_KEY"


def serve(runs: list[str], settings: Any = None, **options: Any) -> None:
    """Start the server and block until it is stopped (SIGINT/SIGTERM drain in-flight requests first).

    ``options`` are the fields of :class:`adapterlab.serve.settings.ServeSettings` (``max_batch=2``,
    ``drain_seconds=5``, ...), or pass a ready ``settings`` object. Without ``api_key`` the key comes from
    ``ADAPTERLAB_API_KEY``.
    """
    try:
        from adapterlab.serve.api import create_app
        from adapterlab.serve.registry import Registry
        from adapterlab.serve.server import run_app
        from adapterlab.serve.settings import settings_from
    except ImportError as exc:  # pragma: no cover - depends on the install
        from adapterlab.errors import AdapterlabError

        raise AdapterlabError(f"serving needs the 'serve' extra: pip install 'adapterlab[serve]' ({exc})") from None

    settings = settings or settings_from(options)
    if not settings.api_key and os.environ.get(API_KEY_ENV):
        settings = settings.model_copy(update={"api_key": os.environ[API_KEY_ENV]})
    registry = Registry(runs, base=settings.base, precision=settings.precision, adapter_root=settings.adapter_root,
                        engine=settings.engine, compile_classifiers=settings.compile)  # fmt: skip
    if settings.engine == "vllm":
        registry.preflight_vllm()  # what vLLM would refuse ends here in one line, before anything starts
    run_app(create_app(registry, settings), settings)
