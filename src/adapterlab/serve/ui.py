"""The web UI: one static page served by the API app at /ui (chat, compare, classify)."""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, RedirectResponse


def mount_ui(app: FastAPI) -> None:
    page = resources.files("adapterlab.serve").joinpath("ui.html")

    @app.get("/ui", response_class=HTMLResponse, include_in_schema=False)
    async def ui_page():
        return HTMLResponse(page.read_text(encoding="utf-8"), headers={"Cache-Control": "no-store"})

    @app.get("/", include_in_schema=False)
    async def root():
        return RedirectResponse("/ui")
