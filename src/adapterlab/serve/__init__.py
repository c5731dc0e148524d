"""``adapterlab serve``: an OpenAI-compatible server with several adapters on one base, and a web UI."""

from __future__ import annotations

import os
from pathlib import Path

API_KEY_ENV = "ADAPTERLAB_API_KEY"


def serve(
    runs: list[str],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    base: str | None = None,
    api_key: str | None = None,
    adapter_root: str | Path | None = None,
    precision: str = "auto",
    max_batch: int = 8,
    max_queue: int = 64,
    max_body_bytes: int = 1 << 20,
    max_n: int = 4,
    default_max_tokens: int = 256,
    default_temperature: float = 0.0,
    cors_origins: list[str] | None = None,
    ui: bool = True,
    drain_seconds: int = 30,
    log_level: str = "info",
) -> None:
    """Start the server and block until it is stopped (SIGINT/SIGTERM drain in-flight requests first)."""
    try:
        import uvicorn

        from adapterlab.serve.api import Settings, create_app
        from adapterlab.serve.registry import Registry
        from adapterlab.serve.schemas import Limits
        from adapterlab.serve.server import DrainingServer
    except ImportError as exc:  # pragma: no cover - depends on the install
        from adapterlab.errors import AdapterlabError

        raise AdapterlabError(f"serving needs the 'serve' extra: pip install 'adapterlab[serve]' ({exc})") from None

    registry = Registry(runs, base=base, precision=precision, adapter_root=adapter_root)
    settings = Settings(
        api_key=api_key or os.environ.get(API_KEY_ENV) or None,
        max_body_bytes=max_body_bytes,
        limits=Limits(max_n=max_n, default_max_tokens=default_max_tokens),
        cors_origins=list(cors_origins or []),
        default_temperature=default_temperature,
        max_batch=max_batch,
        max_queue=max_queue,
        ui=ui,
    )
    app = create_app(registry, settings)
    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=drain_seconds, access_log=False
    )
    DrainingServer(config).run()
