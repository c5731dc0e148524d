"""The uvicorn server that runs the app."""

from __future__ import annotations

import uvicorn


class DrainingServer(uvicorn.Server):
    """uvicorn drains in-flight requests on SIGINT/SIGTERM (up to ``timeout_graceful_shutdown``); after a clean
    drain we exit 0 instead of re-raising the signal, so a supervisor sees a normal stop."""

    def handle_exit(self, sig, frame) -> None:
        super().handle_exit(sig, frame)
        self._captured_signals.clear()
