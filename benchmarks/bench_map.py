"""The overview map with all ~15,000 households: page weight and time to interactive.

Measured in Debian's headless Chromium (Playwright) with every non-loopback request
blocked, logged in as the subdistrict admin (every layer, every household). Anchor in the
same run: the page weight of the plain folium way — the same households as one
``folium.GeoJson`` layer with all their properties (it cannot be timed offline: folium's
defaults load Leaflet from CDNs). Goal: < 2 s and < 5 MB.

The page is a shell; its layers come from ``/map/layers/{key}`` (households per grid
when zoomed out). Time to interactive is from navigation to every shown layer drawn.

Run: ``.venv/bin/python -m benchmarks.bench_map [--runs 5] [--database URL]`` (a city
built by ``gridmap city`` for the city-scale figures).
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import tempfile
import time
from pathlib import Path

import folium
from playwright.sync_api import sync_playwright

from api.server import gridmap_server
from gridmap.accounts import Accounts, seed_sample_users, token_secret
from gridmap.sample import build_demo
from gridmap.security import Role
from gridmap.store import open_store

CHROMIUM = "/usr/bin/chromium"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument(
        "--database",
        help="an existing store (e.g. a city from `gridmap city`) instead of the sample",
    )
    args = ap.parse_args()
    if args.database:
        db: str | Path = args.database
        store = open_store(db)
    else:
        db = Path(tempfile.mkdtemp(prefix="gridmap-map-")) / "zhongxinlu.gpkg"
        store = build_demo(db, today=dt.date(2026, 11, 24))
    if store.user("admin") is None:
        seed_sample_users(store)
    token = Accounts(store, secret=token_secret(store)).issue("admin", Role.SUBDISTRICT_ADMIN)
    n_households = store.count("households")
    anchor_bytes = None
    if n_households <= 100_000:
        households = store.query("households").to_geodataframe()
        naive = folium.Map(location=[34.81, 113.29], zoom_start=15)
        folium.GeoJson(households.drop(columns=["last_visit_at"]).__geo_interface__).add_to(naive)
        anchor_bytes = len(naive.get_root().render().encode())
    store.close()
    with gridmap_server(db) as url, sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        runs = [_open(browser, url, token.access_token) for _ in range(args.runs)]
        browser.close()
    first, rest = runs[0], runs[1:] or runs
    tti = statistics.median(r[0] for r in rest)
    weight = statistics.median(r[1] for r in rest) / 1e6
    zoomed = statistics.median(r[2] for r in rest)
    print(f"overview /map, every layer, {n_households:,} households, {args.runs} runs")
    print(
        f"time to interactive (every shown layer fetched and drawn): first load "
        f"{first[0]:.2f} s (layers encoded), repeat loads median {tti:.2f} s (layer caches); "
        "goal < 2 s"
    )
    print(
        f"page weight (HTML + local scripts/styles + layer data): first {first[1] / 1e6:.2f} MB,"
        f" median {weight:.2f} MB; goal < 5 MB"
    )
    print(f"zoom to 17 until the households in view are drawn: median {zoomed:.2f} s")
    if anchor_bytes is not None:
        print(
            f"anchor: the households as one plain folium.GeoJson layer, HTML alone: "
            f"{anchor_bytes / 1e6:.2f} MB = {anchor_bytes / 1e6 / weight:.1f}x our whole page "
            "(before its CDN assets)"
        )


_READY = "() => window.gmPending === 0 && Object.keys(window.gmLoaded || {}).length > 0"


def _open(browser, url: str, token: str) -> tuple[float, int, float]:  # type: ignore[no-untyped-def]
    """One load of /map: seconds to every shown layer drawn, bytes fetched, seconds from a
    zoom to 17 to the households in view drawn."""
    ctx = browser.new_context(
        viewport={"width": 1400, "height": 1000},
        extra_http_headers={"Authorization": f"Bearer {token}"},
    )
    page = ctx.new_page()
    sizes: list[int] = []
    page.on("response", lambda r: sizes.append(len(r.body()) if r.status != 304 else 0))
    page.route("**/*", lambda r: r.continue_() if "127.0.0.1" in r.request.url else r.abort())
    start = time.perf_counter()
    page.goto(url + "/map", wait_until="load")
    page.wait_for_function(_READY, timeout=120_000, polling=20)
    page.wait_for_timeout(100)
    page.wait_for_function(_READY, timeout=120_000, polling=20)
    tti = time.perf_counter() - start - 0.1
    weight = sum(sizes)
    start = time.perf_counter()
    page.evaluate(
        """() => { for (const k in window) { if (window[k] instanceof L.Map) {
            const m = window[k]; m.setView(m.getCenter(), 17, {animate: false}); } } }"""
    )
    page.wait_for_function(
        "() => window.gmPending === 0 && window.gmLoaded.households !== undefined"
        " && document.querySelectorAll('.gm-count').length === 0",
        timeout=120_000,
        polling=20,
    )
    zoomed = time.perf_counter() - start
    ctx.close()
    return tti, weight, zoomed


if __name__ == "__main__":
    main()
