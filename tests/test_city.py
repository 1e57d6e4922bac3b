"""City-scale synthetic data (`gridmap city`): subdistricts side by side on the backend under
test, checked by the database's own spatial functions or GDAL, not by gridmap."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import geopandas as gpd
import pyogrio
import pytest
import shapely
from typer.testing import CliRunner

from gridmap.city import build_city, label
from gridmap.cli import app
from gridmap.integrity import check_store
from gridmap.sample import build_sample
from tests.conftest import BACKEND, raw_sql

pytestmark = pytest.mark.slow
DAY = dt.date(2026, 11, 24)
N = 3


def _target(request: pytest.FixtureRequest, folder: Path, name: str) -> str:
    """A new store's place on the backend under test."""
    if BACKEND == "postgis":
        return request.getfixturevalue("pg_cluster").new_database(name)
    return str(folder / f"{name}.gpkg")


@pytest.fixture(scope="module")
def city(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Three invented subdistricts."""
    url = _target(request, tmp_path_factory.mktemp("city"), "gm_city")
    store = build_city(url, N, today=DAY)
    assert check_store(store) == []
    store.close()
    yield url


def test_every_subdistrict_is_there_with_its_own_people(city: str) -> None:
    """Each subdistrict holds what its seed lays out; names and codes never repeat."""
    expected = sum(
        len(build_sample(seed=20261124 + k, today=DAY).layers["households"][0]) for k in range(N)
    )
    assert raw_sql(city, "SELECT count(*) FROM households") == [(expected,)]
    (grids, codes, names) = raw_sql(
        city, "SELECT count(*), count(DISTINCT code), count(DISTINCT name) FROM grids"
    )[0]
    assert grids == codes == names == N * 40
    for k in range(N):
        named = raw_sql(city, "SELECT count(*) FROM communities WHERE name LIKE ?", f"{label(k)}%")
        assert named == [(8,)]
    # every zone lists its own communities, those naming it (ids moved with them)
    zones = raw_sql(city, "SELECT fid, community_ids FROM zones ORDER BY fid")
    members = raw_sql(city, "SELECT zone_id, fid FROM communities")
    for fid, listed in zones:
        ids = json.loads(listed) if isinstance(listed, str) else listed
        assert sorted(int(c) for c in ids) == sorted(c for z, c in members if z == fid)
    # people differ between subdistricts: not one town copied (phones are drawn at random)
    (phones,) = raw_sql(city, "SELECT count(DISTINCT phone) FROM households")[0]
    assert phones > 0.9 * expected


def test_every_household_lies_in_the_grid_it_names(city: str) -> None:
    """Checked by PostGIS (ST_Covers) or by GDAL and GEOS through geopandas; grids meet
    without overlapping (slivers under 1 m² where the layout's edges meet a few mm
    apart: the tolerance of `gridmap check`)."""
    if BACKEND == "postgis":
        bad = raw_sql(
            city,
            "SELECT count(*) FROM households h LEFT JOIN grids g ON g.fid = h.grid_id "
            "WHERE g.fid IS NULL OR NOT ST_Covers(g.geom, h.geom)",
        )
        assert bad == [(0,)]
        overlaps = raw_sql(
            city,
            "SELECT count(*) FROM grids a JOIN grids b ON a.fid < b.fid "
            "AND ST_Overlaps(a.geom, b.geom) "
            "AND ST_Area(ST_Intersection(a.geom, b.geom)::geography) >= 1",
        )
        assert overlaps == [(0,)]
        return
    hh = pyogrio.read_dataframe(city, layer="households", columns=["grid_id"], fid_as_index=True)
    grids = pyogrio.read_dataframe(city, layer="grids", columns=[], fid_as_index=True)
    joined = gpd.sjoin(hh, grids.reset_index(names="gfid"), predicate="within", how="left")
    assert len(joined) == len(hh)  # in exactly one grid each
    assert (joined["gfid"] == joined["grid_id"]).all()
    metric = grids.to_crs(4547).geometry.values  # CGCS2000 / 3-degree GK CM 114E, metres
    a, b = grids.sindex.query(grids.geometry, predicate="overlaps")
    shared = shapely.area(shapely.intersection(metric[a], metric[b]))
    assert (shared < 1).all()


def test_the_command_builds_the_same_subdistricts_again(
    city: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """`gridmap city --subdistricts 2` gives the first two subdistricts of the three,
    feature for feature; asked again, it refuses the store it filled."""
    url = _target(request, tmp_path, "gm_city_two")
    args = ["city", "--database", url, "--subdistricts", "2", "--today", DAY.isoformat()]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    q = "SELECT fid, grid_id, building_id, room, head_name, members FROM households ORDER BY fid"
    two = raw_sql(url, q)
    assert two == raw_sql(city, q)[: len(two)]
    again = CliRunner().invoke(app, args)
    said = " ".join(again.output.split())  # as printed, wrapped at the terminal's width
    assert again.exit_code == 1 and "already holds a gridmap store" in said


def test_an_interrupted_build_is_reported_not_passed_off(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A build stopped half-way (Ctrl-C after the first subdistrict) leaves a store that
    `gridmap check` calls unfinished and that `gridmap city` will not build over."""
    from gridmap.store import open_store

    url = _target(request, tmp_path, "gm_city_cut")

    def stop(_what: str, done: int, _total: int) -> None:
        if done == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_city(url, 2, today=DAY, step=stop)
    store = open_store(url)
    try:
        problems = check_store(store)
    finally:
        store.close()
    assert any("interrupted" in p and "--subdistricts 2" in p for p in problems), problems
    args = ["city", "--database", url, "--subdistricts", "2", "--today", DAY.isoformat()]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 1 and "interrupted build" in " ".join(r.output.split())
    r = CliRunner().invoke(app, ["check", "--database", url])
    assert r.exit_code != 0 and "interrupted" in " ".join(r.output.split())
    if BACKEND != "postgis":
        other = tmp_path / "notes.gpkg"
        other.write_text("not a GeoPackage")
        r = CliRunner().invoke(app, ["city", "--database", str(other), "--subdistricts", "1"])
        assert r.exit_code == 1 and "no gridmap store" in " ".join(r.output.split())
