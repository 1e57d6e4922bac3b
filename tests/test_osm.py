"""Streets from OpenStreetMap: the sample's roads written out as an OSM extract (XML, and PBF
by pyosmium), read back through GDAL's OSM driver, walk exactly as the roads they came from."""

from __future__ import annotations

import sqlite3
import xml.etree.ElementTree as ET
from contextlib import closing
from pathlib import Path

import numpy as np
import osmium
import pyogrio
import pytest
import shapely
from typer.testing import CliRunner

from gridmap.cli import app
from gridmap.errors import InvalidFeatureError
from gridmap.osm import other_tags, read_streets
from gridmap.routing import network
from gridmap.store import open_store
from tests.conftest import copy_database

runner = CliRunner()

HIGHWAY = {"arterial": "primary", "secondary": "secondary", "lane": "residential"}
HOSTILE_NAME = '恶意</script>${x}"=>"{{7*7}}'

pytestmark = (
    pytest.mark.gpkg_only
)  # imports into a copy of the GeoPackage read back with GDAL and SQLite


def write_osm(roads: pyogrio.raw, path: Path) -> int:  # type: ignore[valid-type]
    """The roads (a GeoDataFrame read by GDAL) as OSM XML, nodes shared where ways meet."""
    root = ET.Element("osm", version="0.6", generator="gridmap-tests")
    ids: dict[tuple[float, float], int] = {}
    ways = []
    for k, (geom, name, cls, walkable) in enumerate(
        zip(roads.geometry, roads["name"], roads["road_class"], roads["walkable"], strict=True)
    ):
        refs = []
        for x, y in shapely.get_coordinates(geom).tolist():
            key = (round(x, 7), round(y, 7))
            if key not in ids:
                ids[key] = len(ids) + 1
                ET.SubElement(root, "node", id=str(ids[key]), lat=f"{y:.7f}", lon=f"{x:.7f}")
            refs.append(ids[key])
        tags = {"highway": HIGHWAY.get(cls, "footway"), "name": name if k else HOSTILE_NAME}
        if not walkable:
            tags["foot"] = "no"
        ways.append((1000 + k, refs, tags))
    # not on foot: a trunk road and a footway closed to walkers, over the same nodes
    first = ways[0][1]
    ways.append((8001, first, {"highway": "trunk", "name": "快速路"}))
    ways.append((8002, first, {"highway": "footway", "foot": "no"}))
    for wid, refs, tags in ways:
        w = ET.SubElement(root, "way", id=str(wid))
        for r in refs:
            ET.SubElement(w, "nd", ref=str(r))
        for key, v in tags.items():
            ET.SubElement(w, "tag", k=key, v=str(v))
    # not streets: a building and a river
    b = ET.SubElement(root, "way", id="9001")
    for r in [*list(ids.values())[:3], next(iter(ids.values()))]:
        ET.SubElement(b, "nd", ref=str(r))
    ET.SubElement(b, "tag", k="building", v="yes")
    river = ET.SubElement(root, "way", id="9002")
    for r in list(ids.values())[3:6]:
        ET.SubElement(river, "nd", ref=str(r))
    ET.SubElement(river, "tag", k="waterway", v="river")
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
    return len(ways)


def to_pbf(osm: Path, pbf: Path) -> None:
    """The same extract as PBF, written by pyosmium (libosmium)."""
    with osmium.SimpleWriter(str(pbf)) as w:
        for obj in osmium.FileProcessor(str(osm)):
            w.add(obj)


@pytest.fixture
def extract(sample_path: Path, tmp_path: Path) -> tuple[Path, int]:
    # GDAL reads a private copy: closing the shared sample with its own SQLite would drop
    # this process's locks on it (see conftest.copy_database)
    own = copy_database(sample_path, tmp_path / "roads-source.gpkg")
    roads = pyogrio.read_dataframe(own, layer="roads")
    path = tmp_path / "zhongxinlu.osm"
    return path, write_osm(roads, path)


def _matrix(path: Path, *, include_planned: bool = False) -> np.ndarray:
    store = open_store(path)
    con = sqlite3.connect(path)
    pts = con.execute(
        "SELECT entrance_lon, entrance_lat FROM buildings WHERE entrance_lon IS NOT NULL"
        " ORDER BY fid LIMIT 150"
    ).fetchall()
    con.close()
    lon, lat = np.array(pts).T
    net = network.of_store(store, include_planned=include_planned)
    m, att, _ = network.walking_matrix(net, lon, lat)
    store.close()
    assert att.attached.all()
    return m.distance


def test_imported_streets_walk_like_the_roads_they_came_from(
    sample_path: Path, tmp_path: Path, extract: tuple[Path, int]
) -> None:
    osm, n_ways = extract
    db = copy_database(sample_path, tmp_path / "osm.gpkg")
    # OSM has no "planned": the sample's planned roads come back as streets
    before = _matrix(db, include_planned=True)
    r = runner.invoke(app, ["import-osm", str(osm), "--replace", "-d", str(db)])
    assert r.exit_code == 0, r.output
    said = " ".join(r.output.split())
    assert f"imported {n_ways} streets ({n_ways - 2} walkable)" in said
    assert "1 other ways skipped" in said  # the river (the closed building is an area)
    after = _matrix(db)
    assert np.abs(after - before).max() <= 1  # metres, rounding of coordinates only
    got = pyogrio.read_dataframe(db, layer="roads")
    assert len(got) == n_ways and HOSTILE_NAME in set(got["name"])
    con = sqlite3.connect(db)
    (entry,) = con.execute(
        "SELECT detail FROM gridmap_audit WHERE action = 'import' AND username LIKE 'cli:%'"
    ).fetchall()
    con.close()
    assert f"{n_ways} streets" in entry[0]


def test_pbf_and_xml_give_the_same_streets(tmp_path: Path, extract: tuple[Path, int]) -> None:
    osm, n_ways = extract
    pbf = tmp_path / "zhongxinlu.osm.pbf"
    to_pbf(osm, pbf)
    a, b = read_streets(osm), read_streets(pbf)
    assert len(a.geometries) == len(b.geometries) == n_ways
    assert a.properties == b.properties
    assert all(
        shapely.equals_exact(g, h, tolerance=1e-7)
        for g, h in zip(a.geometries, b.geometries, strict=True)
    )
    walkable = [p["walkable"] for p in a.properties]
    assert 0 < sum(walkable) < len(walkable)  # foot=no came through


def test_a_street_leaving_the_subdistrict_is_cut_at_its_edge(
    sample_path: Path, tmp_path: Path
) -> None:
    db = copy_database(sample_path, tmp_path / "cut.gpkg")
    store = open_store(db)
    area = store.service_area
    store.close()
    inside = area.representative_point()
    far = (area.bounds[2] + 0.01, inside.y)  # 1 km beyond the east edge
    osm = tmp_path / "leaving.osm"
    osm.write_text(
        f'<osm version="0.6"><node id="1" lat="{inside.y}" lon="{inside.x}"/>'
        f'<node id="2" lat="{far[1]}" lon="{far[0]}"/>'
        '<way id="3"><nd ref="1"/><nd ref="2"/><tag k="highway" v="residential"/>'
        '<tag k="name" v="出城路"/></way></osm>',
        encoding="utf-8",
    )
    r = runner.invoke(app, ["import-osm", str(osm), "-d", str(db)])
    assert r.exit_code == 0, r.output
    roads = pyogrio.read_dataframe(db, layer="roads")
    (cut,) = roads[roads["name"] == "出城路"].geometry
    assert area.covers(cut) and cut.length > 0
    # it ends at the edge: the way's crossing of the boundary (cut a centimetre inside)
    crossing = shapely.intersection(shapely.LineString([inside, far]), area.boundary)
    assert shapely.distance(shapely.Point(cut.coords[-1]), crossing) < 1e-6


def test_clipping_keeps_the_part_near_the_subdistrict(tmp_path: Path) -> None:
    osm = tmp_path / "long.osm"
    osm.write_text(
        '<osm version="0.6"><node id="1" lat="34.80" lon="113.20"/>'
        '<node id="2" lat="34.80" lon="113.40"/>'
        '<way id="3"><nd ref="1"/><nd ref="2"/><tag k="highway" v="tertiary"/>'
        '<tag k="name:zh" v="长路"/></way></osm>',
        encoding="utf-8",
    )
    area = shapely.box(113.29, 34.79, 113.30, 34.81)
    s = read_streets(osm, clip=area)
    (g,) = s.geometries
    assert g.bounds[0] == pytest.approx(113.29) and g.bounds[2] == pytest.approx(113.30)
    assert s.properties[0]["name"] == "长路" and s.properties[0]["road_class"] == "secondary"


def _count_roads(db: Path) -> int:
    with closing(sqlite3.connect(db)) as con:
        return int(con.execute("SELECT count(*) FROM roads").fetchone()[0])


def test_bad_extracts_are_refused_and_nothing_is_written(sample_path: Path, tmp_path: Path) -> None:
    db = copy_database(sample_path, tmp_path / "bad.gpkg")
    roads_before = _count_roads(db)
    garbage = tmp_path / "garbage.osm"
    garbage.write_bytes(b"\x00\x01 not xml at all <<<")
    far = tmp_path / "far.osm"  # Beijing: nothing near the subdistrict
    far.write_text(
        '<osm version="0.6"><node id="1" lat="39.90" lon="116.40"/>'
        '<node id="2" lat="39.91" lon="116.40"/>'
        '<way id="3"><nd ref="1"/><nd ref="2"/><tag k="highway" v="residential"/></way></osm>',
        encoding="utf-8",
    )
    cases = [
        (garbage, "not a readable OpenStreetMap extract"),
        (far, "no streets here"),
        (tmp_path / "roads.shp", ".osm or .pbf"),
        (tmp_path / "missing.pbf", "no file"),
    ]
    for path, said in cases:
        r = runner.invoke(app, ["import-osm", str(path), "--replace", "-d", str(db)])
        assert r.exit_code == 1 and said in " ".join(r.output.split()), (path, r.output)
    roads_after = _count_roads(db)
    assert roads_after == roads_before
    with pytest.raises(InvalidFeatureError):
        read_streets(garbage)


def test_other_tags_reads_gdal_hstore() -> None:
    assert other_tags('"foot"=>"no","name:zh"=>"路\\"一\\""') == {
        "foot": "no",
        "name:zh": '路"一"',
    }
    assert other_tags(None) == {}
