"""The overview map with all ~15,000 households: page weight and time to interactive.

Measured in Debian's headless Chromium (Playwright) with every non-loopback request
blocked, logged in as the subdistrict admin (every layer, every household). Anchor in the
same run: the page weight of the plain folium way — the same households as one
``folium.GeoJson`` layer with all their properties (it cannot be timed offline: folium's
defaults load Leaflet from CDNs). Goal: < 2 s and < 5 MB.

Run: ``.venv/bin/python -m benchmarks.bench_map [--runs 5]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import tempfile
from pathlib import Path

import folium
from playwright.sync_api import sync_playwright

from api.server import gridmap_server
from gridmap.accounts import Accounts, seed_sample_users, token_secret
from gridmap.sample import build_demo
from gridmap.security import Role

CHROMIUM = "/usr/bin/chromium"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gridmap-map-"))
    db = work / "zhongxinlu.gpkg"
    store = build_demo(db, today=dt.date(2026, 11, 24))
    seed_sample_users(store)
    token = Accounts(store, secret=token_secret(store)).issue("admin", Role.SUBDISTRICT_ADMIN)
    households = store.query("households").to_geodataframe()
    store.close()
    naive = folium.Map(location=[34.81, 113.29], zoom_start=15)
    plain = households.drop(columns=["last_visit_at"])
    folium.GeoJson(plain.__geo_interface__).add_to(naive)
    anchor_bytes = len(naive.get_root().render().encode())
    with gridmap_server(db) as url, sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        times, weights = [], []
        for _ in range(args.runs):
            ctx = browser.new_context(
                viewport={"width": 1400, "height": 1000},
                extra_http_headers={"Authorization": f"Bearer {token.access_token}"},
            )
            page = ctx.new_page()
            sizes: list[int] = []
            page.on("response", lambda r, sizes=sizes: sizes.append(len(r.body())))
            page.route(
                "**/*", lambda r: r.continue_() if "127.0.0.1" in r.request.url else r.abort()
            )
            page.goto(url + "/map", wait_until="load")
            page.locator(".marker-cluster").first.wait_for()
            page.locator(".leaflet-control-layers label").first.wait_for()
            ready = page.evaluate(
                "() => performance.now() - performance.timeOrigin * 0"
                " - (performance.getEntriesByType('navigation')[0].startTime)"
            )
            times.append(ready / 1000)
            weights.append(sum(sizes))
            ctx.close()
        browser.close()
    t = statistics.median(times[1:]) if len(times) > 1 else times[0]
    w = statistics.median(weights) / 1e6
    print(f"overview /map, all layers, {len(households):,} households, {args.runs} runs")
    print(
        f"time to interactive (markers and layer control drawn): first load {times[0]:.2f} s "
        f"(the server draws the page), repeat loads median {t:.2f} s (page cache); goal < 2 s"
    )
    print(f"page weight (HTML + local scripts/styles): {w:.2f} MB; goal < 5 MB")
    print(
        f"anchor: the households as one plain folium.GeoJson layer, HTML alone: "
        f"{anchor_bytes / 1e6:.2f} MB = {anchor_bytes / 1e6 / w:.1f}x our whole page "
        "(before its CDN assets)"
    )


if __name__ == "__main__":
    main()
