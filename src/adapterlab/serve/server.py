"""The uvicorn server that runs the app: a drain on SIGINT/SIGTERM, and JSON for the errors uvicorn answers itself.

Drain: the first signal stops accepting connections (uvicorn) and new work (``/health`` says 503 ``draining``);
in-flight requests run on for up to ``--drain-seconds``, then the engine ends what is left with 503
``shutting_down`` (JSON clients get that error, streams an error event and ``[DONE]``). uvicorn's own limit is
set a little later as a backstop only.

Requests that HTTP parsing refuses (a malformed request line or header, headers too large) are answered by
uvicorn's protocol, not the app; :class:`JSONErrorsH11Protocol` makes that 400 an OpenAI-shaped JSON error.
What uvicorn still answers without the app is a connection it closes without any response (e.g. a client that
stops sending mid-request).
"""

from __future__ import annotations

import json

import h11
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from adapterlab.serve.errors import error_body
from adapterlab.serve.settings import ServeSettings

BACKSTOP_SECONDS = 5  # uvicorn cancels what still runs this long after our own drain deadline


class JSONErrorsH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with its 400 for unparseable requests in JSON instead of plain text."""

    def send_400_response(self, msg: str) -> None:
        body = json.dumps(error_body(400, f"invalid HTTP request: {msg}", code="invalid_http")).encode()
        headers = [(b"content-type", b"application/json"), (b"connection", b"close"),
                   (b"content-length", str(len(body)).encode())]  # fmt: skip
        for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"), h11.Data(data=body),
                      h11.EndOfMessage()):  # fmt: skip
            self.transport.write(self.conn.send(event))
        self.transport.close()


class DrainingServer(uvicorn.Server):
    """Tells the app when a drain begins; after a clean drain exits 0 instead of re-raising the signal, so a
    supervisor sees a normal stop."""

    def __init__(self, config: uvicorn.Config, on_drain=None):
        super().__init__(config)
        self.on_drain = on_drain

    def handle_exit(self, sig, frame) -> None:
        super().handle_exit(sig, frame)
        self._captured_signals.clear()
        if self.on_drain is not None:
            self.on_drain()


def run_app(app: FastAPI, settings: ServeSettings) -> None:
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=settings.drain_seconds + BACKSTOP_SECONDS,
        access_log=False,
        http=JSONErrorsH11Protocol,
    )
    DrainingServer(config, on_drain=app.state.adapterlab.begin_drain).run()
