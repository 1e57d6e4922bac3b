"""Convert 1,000,000 points WGS84 ⇄ GCJ-02 ⇄ BD-09; pyproj's WGS84 → EPSG:4547 as the anchor."""

from __future__ import annotations

import numpy as np
from pyproj import Transformer

from benchmarks._common import best_of
from gridmap import crs

N = 1_000_000


def main() -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(113.25, 113.33, N)
    y = rng.uniform(34.78, 34.84, N)
    gx, gy = crs.wgs84_to_gcj02(x, y)
    bx, by = crs.wgs84_to_bd09(x, y)
    tr = Transformer.from_crs(4326, 4547, always_xy=True)
    anchor = best_of(lambda: tr.transform(x, y))
    print(f"{N:,} points; anchor pyproj WGS84 → EPSG:4547: {anchor:.3f} s")
    for name, fn, a, b in [
        ("WGS84 → GCJ-02", crs.wgs84_to_gcj02, x, y),
        ("GCJ-02 → WGS84 (iterative)", crs.gcj02_to_wgs84, gx, gy),
        ("WGS84 → BD-09", crs.wgs84_to_bd09, x, y),
        ("BD-09 → WGS84 (iterative)", crs.bd09_to_wgs84, bx, by),
    ]:
        t = best_of(lambda fn=fn, a=a, b=b: fn(a, b))
        print(
            f"{name:<28} {t:7.3f} s   {N / t / 1e6:5.2f} M points/s   "
            f"{t / anchor:5.2f}x the pyproj anchor"
        )
    wx, wy = crs.gcj02_to_wgs84(gx, gy)
    err = np.hypot(wx - x, wy - y).max() * 111_320
    print(f"max GCJ-02 round-trip error: {err * 1000:.4f} mm")


if __name__ == "__main__":
    main()
