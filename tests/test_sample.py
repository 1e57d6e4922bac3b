"""The sample subdistrict: counts, integrity, realism, determinism, synthetic personal data."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import shapely

from gridmap.errors import IntegrityError, InvalidFeatureError
from gridmap.integrity import check_store
from gridmap.layers import LAYERS
from gridmap.sample import (
    build_sample,
    district_boundary_wgs84,
    id_check_digit,
    write_sample,
)
from gridmap.store import FeatureStore
from tests.conftest import REFERENCE_DATE, copy_database


def gdal_copy(path: Path, tmp_path: Path) -> Path:
    """A copy of a database for GDAL to open in this process.

    GDAL brings its own SQLite: two SQLite libraries on one file in one process break each
    other's POSIX locks (see :func:`tests.conftest.copy_database`).
    """
    return copy_database(path, tmp_path / f"gdal-{path.name}")


@pytest.mark.gpkg_only
def test_gdal_lists_every_layer_with_counts_and_types(
    sample_path: Path, sample_store: FeatureStore, tmp_path: Path
) -> None:
    sample_path = gdal_copy(sample_path, tmp_path)
    listed = dict(pyogrio.list_layers(sample_path).tolist())
    for layer in LAYERS:
        assert listed[layer.id] == layer.geometry_type
        info = pyogrio.read_info(sample_path, layer=layer.id)
        assert info["features"] == sample_store.count(layer.id) > 0
        assert info["crs"] == "EPSG:4326"


def test_sizes_are_as_specified(sample_store: FeatureStore) -> None:
    assert sample_store.count("zones") == 4
    assert sample_store.count("communities") == 8
    assert 30 <= sample_store.count("grids") <= 50
    assert 14_000 <= sample_store.count("households") <= 16_000
    assert 140 <= sample_store.count("cameras") <= 180
    names = {p["name"] for p in sample_store.query("zones").properties}
    assert names == {f"{z}联合片区" for z in ("颐苑", "江南小镇", "聂寨", "盛世")}
    comms = {p["name"] for p in sample_store.query("communities").properties}
    assert comms == {
        f"{c}社区" for c in ("颐苑", "江南小镇", "聂寨", "盛世", "如意街", "吉祥街", "鸿园", "如意")
    }


def test_grids_hold_300_to_500_households(sample_store: FeatureStore) -> None:
    per_grid = Counter(p["grid_id"] for p in sample_store.query("households").properties)
    grids = sample_store.query("grids")
    assert set(per_grid) == set(grids.ids.tolist())
    assert min(per_grid.values()) >= 300 and max(per_grid.values()) <= 500
    for gid, p in zip(grids.ids.tolist(), grids.properties, strict=True):
        assert p["target_households"] == per_grid[gid]
        assert p["worker_name"] and p["worker_phone"].startswith("0371-0000")


def test_tags_in_realistic_proportions(sample_store: FeatureStore) -> None:
    hh = sample_store.query("households")
    tags = Counter(t for p in hh.properties for t in p["tags"])
    both = sum(1 for p in hh.properties if {"hardship", "heating_subsidy"} <= set(p["tags"]))
    assert both == 186 == tags["heating_subsidy"]
    assert tags["hardship"] >= 186
    assert 0.02 < tags["elderly_alone"] / len(hh) < 0.06
    comm_of_grid = {
        gid: p["community_id"]
        for gid, p in zip(
            *(lambda g: (g.ids.tolist(), g.properties))(sample_store.query("grids")), strict=True
        )
    }
    names = {
        i: p["name"]
        for i, p in zip(
            sample_store.query("communities").ids.tolist(),
            sample_store.query("communities").properties,
            strict=True,
        )
    }
    overseas = Counter(
        names[comm_of_grid[p["grid_id"]]] for p in hh.properties if "overseas_family" in p["tags"]
    )
    assert overseas.most_common(1)[0][0] == "如意社区"
    assert overseas["如意社区"] > sum(overseas.values()) / 2
    coal = Counter(
        names[comm_of_grid[p["grid_id"]]] for p in hh.properties if "coal_user" in p["tags"]
    )
    assert coal.most_common(1)[0][0] == "聂寨社区"
    for p in hh.properties:
        if "elderly_alone" in p["tags"]:
            assert p["members"] == 1


def test_personal_data_is_visibly_synthetic(sample_store: FeatureStore) -> None:
    for p in sample_store.query("households").properties:
        assert re.fullmatch(r".某[甲乙丙丁戊己庚辛壬癸]", p["head_name"])
        assert re.fullmatch(r"100\d{8}", p["phone"])
        idn = p["id_number"]
        assert re.fullmatch(r"410106\d{11}[\dX]", idn)
        assert id_check_digit(idn[:17]) != idn[17]  # fails the GB 11643 check: nobody's number


def test_facilities_and_projects(sample_store: FeatureStore) -> None:
    fac = sample_store.query("facilities").properties
    kinds = Counter(p["kind"] for p in fac)
    assert kinds["mediation_room"] == 15
    psych = {p["level"] for p in fac if p["kind"] == "psych_service"}
    assert psych == {"subdistrict", "community"}
    assert any(p["kind"] == "elderly_care" and p["area_m2"] == 1200.0 for p in fac)
    toilets = Counter(p["status"] for p in sample_store.query("toilets").properties)
    assert toilets["planned"] == 3 and toilets["existing"] >= 8
    old = {p["name"]: p for p in sample_store.query("old_neighbourhoods").properties}
    assert "32街坊" in old and all(p["households"] > 0 for p in old.values())
    roads = {p["name"]: p for p in sample_store.query("roads").properties}
    for name in ("中心路", "峨眉路", "济源路", "新安路", "淮阳路", "汝南路", "许昌路", "工业路"):
        assert roads[name]["status"] == "existing"
    assert roads["峨眉路北延"]["status"] == "planned"
    cams = sample_store.query("cameras").properties
    assert all(0 <= c["direction_deg"] <= 360 and c["fov_deg"] > 0 for c in cams)


def test_integrity_holds(sample_store: FeatureStore) -> None:
    assert check_store(sample_store) == []


def test_layout_lies_inside_the_real_district(sample_store: FeatureStore) -> None:
    district = district_boundary_wgs84()
    for layer in ("zones", "households", "roads"):
        geoms = sample_store.query(layer).geometries
        assert shapely.covered_by(geoms, district).all()
    # around the district seat on 中心路 (WGS84)
    zones = shapely.union_all(sample_store.query("zones").geometries)
    assert zones.contains(shapely.Point(113.2919, 34.8096))


def test_build_is_deterministic() -> None:
    a = build_sample(seed=7, today=REFERENCE_DATE)
    b = build_sample(seed=7, today=REFERENCE_DATE)
    for layer in a.layers:
        ga, pa = a.layers[layer]
        gb, pb = b.layers[layer]
        assert pa == pb
        assert all(x.equals_exact(y, 0) for x, y in zip(ga, gb, strict=True))
    c = build_sample(seed=8, today=REFERENCE_DATE)
    assert c.layers["households"][1] != a.layers["households"][1]


def test_broken_sample_fails_loudly_and_leaves_no_file(tmp_path: Path) -> None:
    sample = build_sample(today=REFERENCE_DATE)
    geoms, _props = sample.layers["grids"]
    # grow grid 2 over grid 1 and out of their community: refused as it is written
    geoms[1] = shapely.buffer(geoms[1], 20.0, join_style="mitre")
    with pytest.raises(InvalidFeatureError, match="does not lie inside communities"):
        write_sample(sample, tmp_path / "broken.gpkg")
    assert not (tmp_path / "broken.gpkg").exists()
    # grow it over grid 1 only (inside the community): the integrity check refuses it
    sample = build_sample(today=REFERENCE_DATE)
    geoms, _props = sample.layers["grids"]
    community = sample.layers["communities"][0][0]
    geoms[1] = shapely.intersection(shapely.buffer(geoms[1], 20.0, join_style="mitre"), community)
    with pytest.raises(IntegrityError, match="overlap"):
        write_sample(sample, tmp_path / "broken.gpkg")
    assert not (tmp_path / "broken.gpkg").exists()


def test_visit_dates_are_recent(sample_store: FeatureStore) -> None:
    dates = [
        p["last_visit_at"]
        for p in sample_store.query("households").properties
        if p["last_visit_at"]
    ]
    parsed = np.array([dt.datetime.fromisoformat(d).date() for d in dates])
    assert (parsed <= REFERENCE_DATE).all()
    assert (parsed >= REFERENCE_DATE - dt.timedelta(days=60)).all()
    assert 0.6 < len(dates) / sample_store.count("households") < 0.85


@pytest.mark.gpkg_only
def test_gdal_reads_the_same_households_the_store_wrote(
    sample_path: Path, sample_store: FeatureStore, tmp_path: Path
) -> None:
    gdf = pyogrio.read_dataframe(
        gdal_copy(sample_path, tmp_path), layer="households", fid_as_index=True
    )
    fs = sample_store.query("households")
    assert gdf.index.tolist() == fs.ids.tolist()
    assert shapely.equals_exact(gdf.geometry.values, fs.geometries, tolerance=0).all()
    assert gdf["id_number"].tolist() == [p["id_number"] for p in fs.properties]
    assert gdf["grid_id"].tolist() == [p["grid_id"] for p in fs.properties]
    assert [json.loads(t) for t in gdf["tags"]] == [p["tags"] for p in fs.properties]
