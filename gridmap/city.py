"""City-scale synthetic data: many invented subdistricts side by side, written into a store.

Each subdistrict is the sample's layout (:func:`gridmap.sample.build_sample`) with its own
seed, so its households, people, tags and visits are its own, moved to its place on a
grid of tiles east and north of the sample's. Ids run on across subdistricts (every
reference is moved with them), grid codes take the subdistrict's number, and names its
label, so nothing repeats. 67 subdistricts hold about a million households and 2,680
grids. Deterministic for a seed, count and date. Every feature goes through the store's
rules (validated, grids derived, references checked), as the sample's do.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from typing import Any

import shapely

from gridmap.layers import get_layer
from gridmap.sample import ORDER, Sample, autumn_campaign, build_sample, layer_rows
from gridmap.store import SYNTHETIC, UNFINISHED, FeatureStore, create_store

GAP_M = 300.0
"""Open ground between neighbouring subdistricts, in metres."""
HOUSEHOLDS_PER_SUBDISTRICT = 15_000
"""About how many households one subdistrict holds (the sample's layout)."""
_SAMPLE_CODE = "410106001"
"""The sample's subdistrict code (上街区 410106, street 001) that grid codes begin with."""

Step = Callable[[str, int, int], None]


def label(k: int) -> str:
    """The invented name of subdistrict ``k`` (0-based): 示例一街道, 示例二街道, …"""
    return f"示例{k + 1}街道"


def places(n: int, sample: Sample) -> list[tuple[float, float]]:
    """Where each of ``n`` subdistricts goes: metres east and north of the sample's place,
    row by row on a near-square grid of tiles."""
    x0, y0, x1, y1 = sample.boundary.bounds
    w, h = x1 - x0 + GAP_M, y1 - y0 + GAP_M
    cols = math.ceil(math.sqrt(n))
    return [((k % cols) * w, (k // cols) * h) for k in range(n)]


def build_city(
    url: str,
    subdistricts: int,
    *,
    seed: int = 20261124,
    today: dt.date | None = None,
    step: Step | None = None,
) -> FeatureStore:
    """Write ``subdistricts`` invented subdistricts into a new store at ``url`` (a
    GeoPackage path or an empty PostgreSQL database) and return it."""
    if not 1 <= subdistricts <= 999:
        msg = f"between 1 and 999 subdistricts, not {subdistricts}"
        raise ValueError(msg)
    first = build_sample(seed=seed, today=today)
    shifts = places(subdistricts, first)
    area = shapely.union_all(
        [shapely.affinity.translate(first.boundary, dx, dy) for dx, dy in shifts]
    )
    store = create_store(url, service_area=first.frame.to_wgs84([area.buffer(30.0)])[0])
    try:
        started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        store.set_meta(UNFINISHED, f"gridmap city --subdistricts {subdistricts}, started {started}")
        store.set_meta(SYNTHETIC, "true")  # invented people: identifiers nobody can own
        autumn_campaign(store, first.today)  # the campaign every visit belongs to
        before: dict[str, int] = dict.fromkeys(ORDER, 0)
        for k, shift in enumerate(shifts):
            sample = first if k == 0 else build_sample(seed=seed + k, today=first.today)
            for layer in ORDER:
                geoms, props = layer_rows(sample, layer, shift)
                props = [_moved(layer, p, k, before) for p in props]
                store.insert(layer, geoms, props, trusted=layer == "visits")
            for layer in ORDER:
                before[layer] += len(sample.layers[layer][0])
            if step:
                step("subdistricts", k + 1, subdistricts)
        store.set_meta("subdistrict", f"{subdistricts} synthetic subdistricts")
        store.set_meta("built_at", dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
        store.set_meta(UNFINISHED, "")
    except BaseException:
        store.close()
        raise
    return store


def _moved(layer: str, props: dict[str, Any], k: int, before: dict[str, int]) -> dict[str, Any]:
    """A feature's properties in subdistrict ``k``: references moved past the features of
    the subdistricts before it, codes, worker ids and names made its own."""
    out = dict(props)
    for p in get_layer(layer).references:
        if out.get(p.name) is not None:
            out[p.name] = int(out[p.name]) + before[p.ref or ""]
    if isinstance(out.get("community_ids"), list):  # a zone's communities (ids as text)
        out["community_ids"] = [str(int(c) + before["communities"]) for c in out["community_ids"]]
    if isinstance(out.get("code"), str) and out["code"].startswith(_SAMPLE_CODE):
        out["code"] = f"410106{k + 1:03d}" + out["code"][len(_SAMPLE_CODE) :]
    for key in ("worker_id", "worker"):
        if isinstance(out.get(key), str):
            out[key] = f"S{k + 1:03d}{out[key]}"
    if layer in ("zones", "communities", "grids") and isinstance(out.get("name"), str):
        out["name"] = f"{label(k)}{out['name']}"
    return out
