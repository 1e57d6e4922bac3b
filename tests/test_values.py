"""Values that mean something are checked: references exist and agree with the location,
identifiers are normalised and validated, text holds no control characters; and the
integrity check finds violations already stored."""

from __future__ import annotations

from pathlib import Path

import pytest
import shapely
from fastapi.testclient import TestClient

from gridmap.errors import IntegrityError, InvalidFeatureError
from gridmap.identifiers import (
    IdentifierError,
    id_check_digit,
    normalise_id_number,
    normalise_phone,
)
from gridmap.integrity import check_store
from gridmap.store import FeatureStore, Query, open_store
from tests.conftest import copy_database, external_connection


def _valid_id(first17: str = "41010619820417480") -> str:
    return first17 + id_check_digit(first17)


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        ("13812345678", "13812345678"),
        ("１３８ １２３４ ５６７８", "13812345678"),  # full-width digits and spaces
        ("+86 138-1234-5678", "13812345678"),
        ("0371-68812345", "0371-68812345"),
        ("(0371) 6881 2345", "0371-68812345"),
        ("010 62345678", "010-62345678"),
    ],
)
def test_phone_numbers_are_normalised(raw: str, stored: str) -> None:
    assert normalise_phone(raw) == stored


@pytest.mark.parametrize(
    "raw",
    ["1381234567", "12812345678", "10012345678", "0371-0000001", "138\x001234567", "<b>138</b>",
     "13812345678<script>", "phone", "", "0371-123", "13٨٠٠١٣٨٠٠٠", "１３８００１３８٠٠٠"],
)  # fmt: skip
def test_bad_phone_numbers_are_refused(raw: str) -> None:
    with pytest.raises(IdentifierError):
        normalise_phone(raw)


def test_synthetic_forms_only_in_a_synthetic_store() -> None:
    assert normalise_phone("10012345678", synthetic=True) == "10012345678"
    assert normalise_phone("0371-00005001", synthetic=True) == "0371-00005001"
    wrong = _valid_id()[:17] + ("0" if _valid_id()[17] != "0" else "1")
    assert normalise_id_number(wrong, synthetic=True) == wrong
    with pytest.raises(IdentifierError, match="check character"):
        normalise_id_number(wrong)


def test_id_numbers_are_checked_by_gb11643() -> None:
    good = _valid_id()
    assert normalise_id_number(good) == good
    assert (
        normalise_id_number(
            " " + good.translate(str.maketrans("0123456789", "０１２３４５６７８９"))
        )
        == good
    )
    x = next(
        f + "X" for f in (f"4101061990010100{i}" for i in range(10)) if id_check_digit(f) == "X"
    )
    assert normalise_id_number(x.lower()) == x
    for bad in (
        good[:17],  # too short
        "91" + good[2:],  # no such region
        good[:6] + "19820230" + good[14:],  # 30 February
        good[:6] + "21000101" + good[14:],  # born in the future
        good[:10] + "\x00" + good[11:],
        good.translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")),  # Arabic-Indic digits
    ):
        with pytest.raises(IdentifierError):
            normalise_id_number(bad, synthetic=True)
    assert normalise_id_number("110101" + "20000229" + "123" + id_check_digit("11010120000229123"))


@pytest.fixture
def edit_store(edit_path: Path) -> FeatureStore:
    s = open_store(edit_path)
    yield s
    s.close()


def _household_in(store: FeatureStore, grid: int) -> tuple[int, dict]:
    fs = store.query("households", Query(equals={"grid_id": grid}, limit=1))
    return int(fs.ids[0]), fs.properties[0]


def test_references_must_exist_and_agree_with_the_location(edit_store: FeatureStore) -> None:
    fid, p = _household_in(edit_store, 1)
    other = edit_store.query("buildings", Query(equals={"grid_id": 2}, limit=1)).ids[0]
    for bad in (999_999, int(other)):
        with pytest.raises(InvalidFeatureError, match="names no feature of buildings in this"):
            edit_store.update("households", fid, properties={"building_id": bad})
    assert edit_store.get("households", fid).properties["building_id"] == p["building_id"]
    grid = edit_store.get("grids", 1)
    with pytest.raises(InvalidFeatureError, match="community_id 999 names no feature"):
        edit_store.update("grids", 1, properties={"community_id": 999})
    assert edit_store.get("grids", 1).properties == grid.properties
    # a referenced feature cannot be deleted
    with pytest.raises(IntegrityError, match="still named by"):
        edit_store.delete("buildings", p["building_id"])
    with pytest.raises(IntegrityError, match="still named by"):
        edit_store.delete("communities", grid.properties["community_id"])


def test_text_and_identifiers_over_the_api(
    edit_client: TestClient, edit_store: FeatureStore
) -> None:
    fid, _ = _household_in(edit_store, 1)
    url = f"/collections/households/items/{fid}"
    for field, value in (
        ("phone", "138\x001234567"),
        ("phone", "<img src=x>"),
        ("id_number", "41010619820417480\u202e"),
        ("room", "1单元\x07101"),
        ("room", "1单元\u2028101"),
        ("id_number", _valid_id()[:6] + "19820230" + _valid_id()[14:]),
    ):
        tag = edit_client.get(url).headers["etag"]
        r = edit_client.patch(url, json={"properties": {field: value}}, headers={"If-Match": tag})
        assert r.status_code == 422 and field in r.json()["detail"], (field, value)
    tag = edit_client.get(url).headers["etag"]
    r = edit_client.patch(
        url, json={"properties": {"phone": "１３８ ０３７１ ５６７８"}}, headers={"If-Match": tag}
    )
    assert r.status_code == 200
    assert edit_store.get("households", fid).properties["phone"] == "13803715678"


@pytest.mark.gpkg_only
def test_integrity_check_finds_old_violations(edit_path: Path) -> None:
    store = open_store(edit_path)
    assert check_store(store) == []
    a, _ = _household_in(store, 1)
    b, _ = _household_in(store, 3)
    c, _ = _household_in(store, 4)
    other = int(store.query("buildings", Query(equals={"grid_id": 2}, limit=1)).ids[0])
    store.close()
    conn = external_connection(edit_path)  # as another program (QGIS) would write
    conn.execute("UPDATE households SET building_id = 999999 WHERE fid = ?", (a,))
    conn.execute("UPDATE households SET building_id = ? WHERE fid = ?", (other, b))
    conn.execute("UPDATE households SET phone = 'call me' WHERE fid = ?", (c,))
    conn.execute("UPDATE grids SET community_id = 77 WHERE fid = 5")
    # a household's last visit edited by hand, away from its ledger
    (d,) = conn.execute("SELECT household_id FROM visits ORDER BY fid LIMIT 1").fetchone()
    conn.execute(
        "UPDATE households SET last_visit_status = 'refused', last_visit_at = '2020-01-01T09:00:00'"
        " WHERE fid = ?",
        (d,),
    )
    conn.commit()
    conn.close()
    store = open_store(edit_path)
    problems = check_store(store)
    store.close()
    text = "\n".join(problems)
    assert f"households {a} building_id: names buildings 999999, which does not exist" in text
    assert f"households {b} building_id: lies in grid 3 but its buildings {other} in grid 2" in text
    assert f"households {c}: invalid properties for layer households: phone" in text
    assert "grids 5 community_id: names communities 77" in text
    stale = f"households {d}: last visit 2020-01-01T09:00:00 refused, but the ledger's latest"
    assert stale in text


def test_the_sample_is_synthetic_and_passes(sample_store: FeatureStore) -> None:
    assert sample_store.synthetic and sample_store.meta("synthetic_identifiers") == "true"
    assert check_store(sample_store) == []


def test_a_real_store_refuses_the_synthetic_forms(store: FeatureStore) -> None:
    assert not store.synthetic
    area = [shapely.box(113.27, 34.79, 113.29, 34.81)]
    with pytest.raises(InvalidFeatureError, match="phone"):
        store.insert("communities", area, [{"name": "c", "phone": "0371-00000001"}])
    store.insert("communities", area, [{"name": "c", "phone": "0371-68812345"}])
    assert store.count("communities") == 1


def _move(path: Path, layer: str, fid: int, geom: shapely.Geometry) -> None:
    """Rewrite one geometry as another SQLite client would (no gridmap rule runs)."""
    from gridmap import geometry as geo

    conn = external_connection(path)
    conn.execute(
        f'UPDATE "{layer}" SET geom = ? WHERE fid = ?', (geo.to_gpkg_blobs([geom])[0], fid)
    )
    conn.commit()
    conn.close()


@pytest.mark.gpkg_only
def test_each_structural_rule_is_caught_when_broken(edit_path: Path) -> None:
    """Break one rule at a time on a copy of the sample; the check names exactly it."""

    store = open_store(edit_path)
    g1, g2 = store.get("grids", 1), store.get("grids", 2)
    comm = store.get("communities", g1.properties["community_id"])
    hh, _ = _household_in(store, 1)
    far = shapely.Point(store.service_area.bounds[0] + 1e-4, store.service_area.bounds[1] + 1e-4)
    edge = shapely.intersection(g1.geometry.boundary, g2.geometry.boundary)
    assert not edge.is_empty  # grids 1 and 2 share an edge
    store.close()
    away = shapely.box(*far.buffer(1e-4).bounds)
    on_edge = edge.representative_point()
    inside_2 = g2.geometry.representative_point()
    cases = [
        ("communities", comm.id, away, f"community {comm.id}", "is not inside zone"),
        ("grids", 2, g1.geometry, "grids 1 and 2 of community", "overlap"),
        ("grids", 1, away, "grid 1 (", "is not inside community"),
        ("households", hh, far, f"households {hh} lies in no grid", ""),
        ("households", hh, inside_2, f"households {hh} has grid_id 1 but lies in grid 2", ""),
        ("households", hh, on_edge, f"household {hh} lies on the edge of several grids", ""),
    ]
    for layer, fid, geom, first, second in cases:
        copy = edit_path.with_name(f"case-{layer}-{fid}.gpkg")
        copy_database(edit_path, copy)
        _move(copy, layer, fid, geom)
        store = open_store(copy)
        problems = check_store(store)
        store.close()
        assert any(first in p and second in p for p in problems), (first, problems)


@pytest.mark.gpkg_only
def test_check_reads_through_garbage_and_counts_everything(edit_path: Path) -> None:
    """Values another program stored are reported, not fatal; every case is counted."""
    store = open_store(edit_path)
    hh = store.query("households", Query(equals={"grid_id": 1}, limit=16)).ids.tolist()
    store.close()
    conn = external_connection(edit_path)
    conn.execute("UPDATE households SET tags = 'not json' WHERE fid = ?", (hh[0],))
    conn.execute(
        "UPDATE households SET last_visit_at = '2026-11-01T10:00:00+08:00' WHERE fid = ?", (hh[1],)
    )
    conn.execute("UPDATE households SET phone = '+86 100 0000 0000' WHERE fid = ?", (hh[2],))
    conn.execute("UPDATE toilets SET accessible = 7 WHERE fid = 1")
    for fid in hh[3:16]:  # 13 of one kind: 10 listed, the rest counted
        conn.execute("UPDATE households SET room = 'a' || char(7) WHERE fid = ?", (fid,))
    conn.commit()
    conn.close()
    store = open_store(edit_path)
    assert store.get("households", hh[0]).properties["tags"] == "not json"  # read, not crashed
    problems = check_store(store)
    store.close()
    text = "\n".join(problems)
    assert f"households {hh[0]}: invalid properties for layer households: tags" in text
    assert f"households {hh[1]}: last_visit_at is stored as '2026-11-01T10:00:00+08:00'" in text
    normal = "not in its normal form '10000000000'"
    assert f"households {hh[2]}: phone is stored as '+86 100 0000 0000', {normal}" in text
    assert "toilets 1: invalid properties for layer toilets: accessible" in text
    assert "… and 6 more: invalid households values" in text  # 16 bad households in all


def test_times_are_stored_as_local_time(edit_client: TestClient, edit_store: FeatureStore) -> None:
    fid, _ = _household_in(edit_store, 1)
    url = f"/collections/households/items/{fid}"
    r = edit_client.patch(
        url,
        json={"properties": {"last_visit_at": "2026-11-01T02:00:00Z"}},
        headers={"If-Match": "*"},
    )
    assert r.status_code == 200
    assert edit_store.get("households", fid).properties["last_visit_at"] == "2026-11-01T10:00:00"


def test_locations_agree_with_what_they_name_on_both_sides(edit_store: FeatureStore) -> None:
    """A grid lies inside the community it names, a community inside its zone, a household in
    its building's grid; a move on either side that would break it is refused."""
    g = edit_store.get("grids", 5)
    other = next(
        int(i)
        for i, p in zip(
            *(lambda fs: (fs.ids, fs.properties))(edit_store.query("communities")), strict=True
        )
        if int(i) != g.properties["community_id"]
    )
    with pytest.raises(InvalidFeatureError, match="does not lie inside communities"):
        edit_store.update("grids", 5, properties={"community_id": other})
    community = edit_store.get("communities", g.properties["community_id"])
    shrunk = community.geometry.difference(g.geometry.buffer(1e-5))
    with pytest.raises(IntegrityError, match=r"grids \d+ would no longer lie inside communities"):
        edit_store.update("communities", community.id, geometry=shrunk)
    _, p = _household_in(edit_store, 1)
    building = edit_store.get("buildings", p["building_id"])
    into_grid_2 = (
        edit_store.get("grids", 2).geometry.representative_point().buffer(5e-5, quad_segs=2)
    )
    with pytest.raises(IntegrityError, match="would lie in another grid"):
        edit_store.update("buildings", building.id, geometry=into_grid_2)
    assert edit_store.get("buildings", building.id).version == building.version
    assert edit_store.get("communities", community.id).version == community.version
    assert check_store(edit_store) == []


@pytest.mark.gpkg_only
def test_what_other_programs_store_never_breaks_a_read(
    edit_path: Path, edit_client: TestClient
) -> None:
    """QGIS or a script may write anything into the file: every read and page still answers,
    nothing stored is evaluated, and `gridmap check` names each problem."""
    from gridmap import geometry as geo

    store = open_store(edit_path)
    hh, _ = _household_in(store, 1)
    store.close()
    conn = external_connection(edit_path)
    conn.execute("INSERT INTO toilets (name) VALUES ('无几何')")  # no geometry at all
    empty = geo.to_gpkg_blobs([shapely.Point()])[0]
    conn.execute("INSERT INTO toilets (geom, name) VALUES (?, '空几何')", (empty,))
    conn.execute("INSERT INTO toilets (geom, name) VALUES (X'00010203', '坏几何')")
    conn.execute("UPDATE toilets SET name = X'00ff41' WHERE fid = 2")  # a BLOB for text
    conn.execute("UPDATE toilets SET version = 'v?' WHERE fid = 3")
    conn.execute(
        "UPDATE zones SET community_ids = ? WHERE fid = 2",
        ('{"a": "{{\\"ev\\" ~ \\"al\\"}}"}',),  # an object, not a list, holding a template
    )
    for fid, tags in zip(range(hh, hh + 3), ("5", "true", b"\x00\x01"), strict=True):
        conn.execute("UPDATE households SET tags = ? WHERE fid = ?", (tags, fid))
    conn.commit()
    conn.close()
    for url in (
        "/collections/toilets/items?limit=1000",
        "/collections/toilets/items?limit=1000&crs=gcj02",
        "/collections/toilets/items?limit=1000&f=html",
        "/collections/toilets/items?f=csv",
        "/collections/zones/items",
        "/collections/households/items?filter=A_CONTAINS(tags, ('hardship'))",
        f"/collections/households/items/{hh}",
        "/nearest?collection=toilets&lon=113.29&lat=34.81&k=100",
        "/map",
        "/map?lang=en&measure=hardship",
        "/map/grids/1",
        "/stats/grids",
        "/stats/zones",
    ):
        r = edit_client.get(url)
        assert r.status_code == 200, (url, r.text[:300])
        assert "eval" not in r.text, url
    store = open_store(edit_path)
    text = "\n".join(check_store(store))
    store.close()
    for expected in (
        "has no (readable) geometry",
        "has an empty geometry",
        "toilets 2: invalid properties for layer toilets: name",
        "zones 2: invalid properties for layer zones: community_ids",
        f"households {hh}: invalid properties for layer households: tags",
    ):
        assert expected in text, expected


@pytest.mark.parametrize(
    "path", ["/map/grids/1_0", "/map/grids/+10", "/map/grids/10.0", "/map/grids/%2010"]
)
def test_grid_sheet_ids_are_ascii_digits(public_client: TestClient, path: str) -> None:
    assert public_client.get(path).status_code == 404


def test_odd_digits_in_headers_and_parameters_are_client_errors(edit_client: TestClient) -> None:
    r = edit_client.patch(
        "/collections/toilets/items/3",
        json={"properties": {"units": 3}},
        headers={"If-Match": b'"toilets-3-v\xb2"'},  # a raw 0xB2 (superscript two in latin-1)
    )
    assert r.status_code == 412
    assert edit_client.get("/collections/toilets/items?units=\u0661").status_code == 400
