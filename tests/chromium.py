"""Debian's Chromium driven by Playwright, with every non-loopback request blocked."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def require_chromium() -> None:
    """Skip the calling module without Chromium; in CI (``CI=true``) fail instead."""
    if CHROMIUM is None:
        if os.environ.get("CI"):
            raise RuntimeError("CI must have Debian's chromium installed (.ci/run installs it)")
        pytest.skip(
            "Debian's chromium is not installed (apt-get install chromium)",
            allow_module_level=True,
        )


def launch() -> Iterator[Any]:
    """A headless Chromium for a module (use as a generator fixture)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


class Watch:
    """What a page did wrong: console errors, uncaught exceptions, blocked and failed requests,
    and content-security-policy violations."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.blocked: list[str] = []
        self.failed: list[str] = []


def open_page(
    browser: Any, url: str, headers: dict[str, str] | None = None, *, wait_for: str | None = None
) -> tuple[Any, Watch]:
    """Open ``url`` with loopback-only networking; wait for ``wait_for`` (a CSS selector)."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000}, extra_http_headers=headers)
    w = Watch()
    page.on("console", lambda m: w.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: w.errors.append(str(e)))
    page.on(  # a fetch the page itself cancelled (the view moved on) is not a failure
        "requestfailed",
        lambda r: None if r.failure == "net::ERR_ABORTED" else w.failed.append(r.url),
    )

    def guard(route: Any) -> None:
        host = urlparse(route.request.url).hostname or ""
        if host in ("127.0.0.1", "localhost", "::1") or route.request.url.startswith("data:"):
            route.continue_()
        else:
            w.blocked.append(route.request.url)
            route.abort()

    page.route("**/*", guard)
    page.add_init_script(
        "window.__csp = []; document.addEventListener('securitypolicyviolation',"
        " (e) => window.__csp.push(e.violatedDirective + ' ' + (e.sample || '')));"
    )
    page.goto(url, wait_until="load")
    if wait_for:
        page.locator(wait_for).first.wait_for(state="attached")
    return page, w


def wait_for_layers(page: Any, *, every: bool = False, zoom: int | None = None) -> None:
    """Wait until the overview's layers have come from the API (``gridmap-layers.js``);
    ``every`` turns the hidden ones on too, ``zoom`` zooms to that level first."""
    if every:
        for box in page.locator(".leaflet-control-layers-overlays input").all():
            if not box.is_checked():
                box.check()
    if zoom is not None:
        page.evaluate(
            """(z) => { for (const k in window) { if (window[k] instanceof L.Map) {
                window[k].setZoom(z, {animate: false}); } } }""",
            zoom,
        )
    page.wait_for_function(
        "() => window.gmLoadLayers === undefined"
        " || (window.gmPending === 0 && Object.keys(window.gmLoaded).length > 0)",
        timeout=30_000,
    )
    page.wait_for_timeout(150)  # a move just made may start one more fetch
    page.wait_for_function("() => window.gmLoadLayers === undefined || window.gmPending === 0")
