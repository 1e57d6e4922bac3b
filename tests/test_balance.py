"""Grid balance: hand-balanced lattices, the redrawing applied to a copy of the sample and read
back through GDAL and SQL, and the HTTP answers per role."""

from __future__ import annotations

import collections
from typing import Any

import numpy as np
import pyogrio
import pytest
import shapely
from fastapi.testclient import TestClient

from gridmap.analysis import balance as bl
from gridmap.integrity import check_store
from gridmap.store import open_store
from gridmap.store.base import Query, Scope
from tests.conftest import raw_sql


def _lattice(cells: dict[tuple[int, int], tuple[int, int, int]]) -> bl.Cells:
    """Square 100 m cells at (column, row) → (grid, community, households)."""
    keys = sorted(cells)
    shapes = np.array(
        [shapely.box(x * 100, y * 100, x * 100 + 100, y * 100 + 100) for x, y in keys]
    )
    c = bl.Cells(
        np.arange(1, len(keys) + 1),
        np.array([cells[k][0] for k in keys]),
        np.array([cells[k][1] for k in keys]),
        np.array([cells[k][2] for k in keys]),
        shapes,
    )
    c.neighbours = bl.adjacency(c.shape)
    return c


def test_one_building_moves_where_one_is_enough() -> None:
    # grid 1: columns 0–2 of two rows (600 households); grid 2: column 3 (200)
    cells = {(x, y): (1 if x < 3 else 2, 1, 100) for x in range(4) for y in range(2)}
    c = _lattice(cells)
    moves = bl.propose(c, lo=300, hi=500)
    assert len(moves) == 1
    (m,) = moves
    assert (m.source, m.target, m.households) == (1, 2, 100)
    moved = int(np.flatnonzero(c.building == m.building)[0])
    assert c.shape[moved].bounds[0] == 200  # a cell of column 2, the one beside grid 2
    assert bl.counts(c, moves) == {1: 500, 2: 300}


def test_no_move_across_a_community_or_that_splits_a_grid() -> None:
    cells = {
        (x, y): (1 if x < 3 else 2, 1 if x < 3 else 2, 100) for x in range(4) for y in range(2)
    }
    assert bl.propose(_lattice(cells), lo=300, hi=500) == []
    # grid 1 a row of three; grid 2 sits on its middle cell only: taking it would split grid 1
    cells = {(0, 0): (1, 1, 200), (1, 0): (1, 1, 200), (2, 0): (1, 1, 200), (1, 1): (2, 1, 100)}
    assert bl.propose(_lattice(cells), lo=300, hi=500) == []


def test_moves_repeat_until_nothing_helps() -> None:
    # grid 1 holds a 3×3 block of 100s (900); grids 2 and 3 hold one cell each beside it
    cells = {(x, y): (1, 1, 100) for x in range(3) for y in range(3)}
    cells[(3, 1)] = (2, 1, 100)
    cells[(1, 3)] = (3, 1, 100)
    c = _lattice(cells)
    moves = bl.propose(c, lo=300, hi=500)
    after = bl.counts(c, moves)
    assert after == {1: 500, 2: 300, 3: 300}  # 400 out of grid 1, 200 into each other
    assert sum(m.households for m in moves) == 400  # the fewest that can do it
    members = collections.defaultdict(set)
    grid = dict(zip(c.building.tolist(), c.grid.tolist(), strict=True))
    for m in moves:
        grid[m.building] = m.target
    for k, b in enumerate(c.building.tolist()):
        members[grid[b]].add(k)
    for g, ks in members.items():  # every grid still one piece
        assert shapely.union_all(c.shape[sorted(ks)]).geom_type == "Polygon", g


@pytest.mark.gpkg_only  # read back through GDAL from the file
def test_applied_redrawing_is_what_gdal_and_sql_read_back(edit_path: Any) -> None:
    store = open_store(edit_path)
    p = bl.plan(store, Scope.ALL, lo=350, hi=420)
    assert p.moves and p.after_shapes
    area_before = shapely.union_all(pyogrio.read_dataframe(edit_path, layer="grids").geometry).area
    bl.apply(store, p.after_shapes)
    assert check_store(store) == []
    store.close()
    per_grid = dict(raw_sql(edit_path, "SELECT grid_id, COUNT(*) FROM households GROUP BY grid_id"))
    assert per_grid == {g: n for g, n in bl.counts(p.cells, p.moves).items() if n}
    # households follow their buildings; each moved building is in its new grid
    split = raw_sql(
        edit_path,
        "SELECT COUNT(*) FROM households h JOIN buildings b ON h.building_id = b.fid "
        "WHERE h.grid_id != b.grid_id",
    )
    assert split[0][0] == 0
    grids_of = dict(raw_sql(edit_path, "SELECT fid, grid_id FROM buildings"))
    assert all(grids_of[m.building] == m.target for m in p.moves)
    grids = pyogrio.read_dataframe(edit_path, layer="grids")
    assert len(grids) == 40 and set(grids.geometry.geom_type) == {"Polygon"}
    assert shapely.union_all(grids.geometry).area == pytest.approx(area_before, rel=1e-4)
    in_range = sum(350 <= n <= 420 for n in per_grid.values())
    assert in_range > sum(350 <= n <= 420 for n in bl.counts(p.cells).values())


def test_grid_balance_over_http(
    edit_client: TestClient, edit_auth: dict[str, dict[str, str]], edit_path: Any
) -> None:
    url = "/analysis/grid-balance?min=350&max=420"
    admin = edit_client.get(url).json()
    assert admin["in_range_after"] > admin["in_range_before"] and admin["moves"]
    assert admin["households_moved"] == sum(m["households"] for m in admin["moves"])
    r = edit_client.get(url, headers=edit_auth["planner"])
    assert r.status_code == 400  # targets in steps of 50 for planners
    planner = edit_client.get(
        "/analysis/grid-balance?min=350&max=400", headers=edit_auth["planner"]
    ).json()
    assert planner["rounded"] and all(g["before"] % 5 == 0 for g in planner["grids"])
    community = edit_client.get(url, headers=edit_auth["community_admin"]).json()
    mine = {g["id"] for g in community["grids"]}
    assert 0 < len(mine) < 40
    assert all(m["from"] in mine and m["to"] in mine for m in community["moves"])
    body = {"min": 350, "max": 420, "basis": admin["basis"]}
    grids_now = edit_client.get("/collections/grids/items?limit=100").json()["features"]
    r = edit_client.post("/analysis/grid-balance/apply", json=body, headers=edit_auth["planner"])
    assert r.status_code == 403
    r = edit_client.post("/analysis/grid-balance/apply", json={**body, "basis": "1.2.3.4"})
    assert r.status_code == 412
    assert edit_client.get("/collections/grids/items?limit=100").json()["features"] == grids_now
    r = edit_client.post("/analysis/grid-balance/apply", json=body)
    assert r.status_code == 200, r.text
    again = edit_client.get(url).json()
    assert again["in_range_before"] == admin["in_range_after"] and again["moves"] == []
    for bad in ("min=500&max=300", "min=0", "max=abc"):
        assert edit_client.get(f"/analysis/grid-balance?{bad}").status_code in (400, 422), bad
    page = edit_client.get("/map/grid-balance?min=350&max=400")
    assert page.status_code == 200 and "gm-legend" in page.text


def test_applying_refuses_a_grid_edited_since_the_proposal(edit_path: Any) -> None:
    from gridmap.errors import VersionConflictError

    store = open_store(edit_path)
    p = bl.plan(store, Scope.ALL, lo=350, hi=420)
    g = next(iter(p.after_shapes))
    name = store.get("grids", g).properties["name"]
    store.update("grids", g, properties={"name": f"{name}（改）"})  # another admin, meanwhile
    before = {int(i): int(v) for i, v in zip(*_versions(store), strict=True)}
    with pytest.raises(VersionConflictError):
        bl.apply(store, p.after_shapes, versions=p.versions)
    assert {int(i): int(v) for i, v in zip(*_versions(store), strict=True)} == before
    assert bl.plan(store, Scope.ALL, lo=350, hi=420).basis != p.basis
    store.close()


def _versions(store: Any) -> tuple[Any, Any]:
    fs = store.query("grids", Query())
    return fs.ids, fs.versions


def test_households_with_no_building_move_with_the_land_they_are_on(edit_path: Any) -> None:
    store = open_store(edit_path)
    c, _, _ = bl.cells(store, Scope.ALL)
    total = int(c.households.sum())
    one = int(store.query("households", Query(equals={"grid_id": 1}, limit=1)).ids[0])
    raw_sql(edit_path, "UPDATE households SET building_id = NULL WHERE fid = ?", one)
    c2, _, _ = bl.cells(store, Scope.ALL)
    assert int(c2.households.sum()) == total  # still counted, in the cell it lies in
    assert bl.counts(c2)[1] == bl.counts(c)[1]
    store.close()
