"""Importing 100,000 households: gridmap's import (every row checked: types, identifiers,
location in a grid, the building in the same grid, duplicates; one transaction) from a
GeoPackage and from a CSV, against GDAL's ``ogr2ogr -append`` of the same rows into the
same GeoPackage (no checks at all), in the same run. Each copies the sample first.

    .venv/bin/python -m benchmarks.bench_import [--rows 100000]

Needs ``ogr2ogr`` on the PATH (Debian: ``apt-get install gdal-bin``).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import shutil
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely

from gridmap.io.importer import Options, run
from gridmap.sample import build_demo, synthetic_id_number, synthetic_phone
from gridmap.security import Principal, Role
from gridmap.store import open_store

ADMIN = Principal("bench", Role.SUBDISTRICT_ADMIN)
COLUMNS = ["building_id", "room", "head_name", "phone", "id_number", "members", "tags"]


def households(sample: Path, n: int, seed: int = 7) -> gpd.GeoDataFrame:
    """``n`` invented households spread over the sample's buildings (inside each footprint)."""
    rng = np.random.default_rng(seed)
    store = open_store(sample)
    b = store.query("buildings")
    used = {p["id_number"] for p in store.query("households").properties}  # one person, one ID
    store.close()
    pick = rng.integers(0, len(b), size=n)
    rows, geoms = [], []
    inner = shapely.buffer(b.geometries, -1e-5)  # about a metre inside each footprint
    inner = np.where(shapely.is_empty(inner), b.geometries, inner)
    for k, i in enumerate(pick.tolist()):
        x0, y0, x1, y1 = inner[i].bounds
        p = shapely.Point(rng.uniform(x0, x1), rng.uniform(y0, y1))
        if not inner[i].covers(p):
            p = inner[i].point_on_surface()
        birth = dt.date(1940 + k % 60, 1 + k % 12, 1 + k % 28)
        idn = synthetic_id_number(rng, birth)
        while idn in used:
            idn = synthetic_id_number(rng, birth)
        used.add(idn)
        rows.append(
            {
                "building_id": int(b.ids[i]),
                "room": f"新{k + 1}号",
                "head_name": f"测某{k}",
                "phone": synthetic_phone(rng),
                "id_number": idn,
                "members": int(rng.integers(1, 6)),
                "tags": "hardship" if k % 17 == 0 else None,
            }
        )
        geoms.append(p)
    return gpd.GeoDataFrame(rows, geometry=geoms, crs=4326)


def _copy(src: Path, dst: Path) -> Path:
    a, b = sqlite3.connect(src), sqlite3.connect(dst)
    a.backup(b)
    a.close()
    b.close()
    return dst


def _count(path: Path) -> int:
    with sqlite3.connect(path) as c:
        return int(c.execute("SELECT COUNT(*) FROM households").fetchone()[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=100_000)
    args = ap.parse_args()
    ogr = shutil.which("ogr2ogr")
    if ogr is None:
        raise SystemExit("ogr2ogr not found: apt-get install gdal-bin")
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        sample = d / "sample.gpkg"
        build_demo(sample).close()
        base = _count(sample)
        frame = households(sample, args.rows)
        gpkg = d / "households.gpkg"
        frame.to_file(gpkg, layer="households")
        with (d / "households.csv").open("w", encoding="utf-8-sig", newline="") as f:
            w = csv.writer(f)
            w.writerow(
                ["楼栋", "门牌", "户主", "联系电话", "身份证号", "人口", "标签", "经度", "纬度"]
            )
            cells = frame[COLUMNS].astype(object).where(frame[COLUMNS].notna(), "")
            for r, g in zip(cells.itertuples(index=False), frame.geometry, strict=True):
                w.writerow([*r, f"{g.x:.9f}", f"{g.y:.9f}"])
        version = subprocess.run([ogr, "--version"], capture_output=True, text=True).stdout
        print(f"{args.rows:,} households over {base:,} in the sample; ogr2ogr: {version.strip()}")
        figures = {}
        for label, source, opts in (
            ("gridmap import, GeoPackage", gpkg, {}),
            ("gridmap import, CSV", d / "households.csv", {"crs": "wgs84"}),
        ):
            target = _copy(sample, d / "t.gpkg")
            store = open_store(target)
            t = time.perf_counter()
            report = run(store, source, Options(layer="households", **opts), principal=ADMIN)
            figures[label] = time.perf_counter() - t
            store.close()
            assert report.inserted == args.rows and _count(target) == base + args.rows
            target.unlink()
        target = _copy(sample, d / "t.gpkg")
        t = time.perf_counter()
        subprocess.run(
            [ogr, "-append", "-nln", "households", str(target), str(gpkg), "households"],
            check=True,
        )
        figures["ogr2ogr -append (no checks)"] = time.perf_counter() - t
        assert _count(target) == base + args.rows
        anchor = figures["ogr2ogr -append (no checks)"]
        print(f"{'':34} {'seconds':>8} {'rows/s':>9} {'× ogr2ogr time':>15}")
        for label, s in figures.items():
            print(f"{label:34} {s:8.2f} {args.rows / s:9,.0f} {s / anchor:15.2f}")


if __name__ == "__main__":
    main()
