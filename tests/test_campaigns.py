"""Visit campaigns end to end: campaigns, stored plans, the ledger, coverage and roles — each
figure checked against the GeoPackage read with plain SQL, GDAL, or a recomputation here."""

from __future__ import annotations

import datetime as dt
import itertools
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pyogrio
import pytest
from fastapi.testclient import TestClient

from gridmap.layers import FINAL_OUTCOMES
from gridmap.routing.matrix import WALK_SPEED_M_S
from tests.conftest import REFERENCE_DATE, raw_sql

DAY = REFERENCE_DATE.isoformat()
COAL = "A_CONTAINS(tags, ('coal_user'))"


def _campaign(c: TestClient, headers: dict[str, str], **kw: Any) -> dict[str, Any]:
    body = {"name": "冬季走访", "starts": DAY, "ends": "2026-12-31", **kw}
    r = c.post("/campaigns", json=body, headers=headers)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def _plan(c: TestClient, headers: dict[str, str], cid: int, **kw: Any) -> dict[str, Any]:
    body = {"grid_ids": [1], "date": DAY, "time_limit_s": 1, **kw}
    r = c.post(f"/campaigns/{cid}/plans", json=body, headers=headers)
    assert r.status_code == 201, r.text
    (summary,) = r.json()["plans"]
    g = c.get(f"/plans/{summary['id']}", headers=headers)
    assert g.status_code == 200 and g.headers["content-type"] == "application/geo+json"
    return g.json()  # type: ignore[no-any-return]


def _stops(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [f["properties"] for f in plan["features"] if f["properties"]["kind"] == "stop"]


def _sql(path: Path, query: str, *args: Any) -> list[tuple[Any, ...]]:
    return raw_sql(path, query, *args)


# ----------------------------------------------------------------------------- plans


def test_a_day_plan_keeps_every_rule(edit_client: TestClient, edit_path: Path) -> None:
    """Each household once, each stop one entrance of one building, arrivals inside the
    shifts and in order, must-visit households all planned, the rest with reasons."""
    admin = dict(edit_client.headers)
    c = _campaign(edit_client, admin)
    plan = _plan(edit_client, admin, c["id"], workers=2)
    stops = _stops(plan)
    hh = [h["id"] for s in stops for h in s["households"]]
    assert len(hh) == len(set(hh)) and hh
    left = {u["household_id"]: u["reason"] for u in plan["unassigned"]}
    assert not set(hh) & set(left)
    grid1 = {
        r[0]: r[1]
        for r in _sql(edit_path, "SELECT fid, building_id FROM households WHERE grid_id = 1")
    }
    assert set(hh) | set(left) == set(grid1)  # every household of the grid, planned or not
    assert set(left.values()) <= {"capacity"}  # a day is too short for all of them
    for s in stops:  # one building per stop, and the stop is that building's entrance
        assert {grid1[h["id"]] for h in s["households"]} == {s["building_id"]}
        assert s["arrival"] <= s["start"] < s["end"]
    routes = [f["properties"] for f in plan["features"] if f["properties"]["kind"] == "route"]
    for r in routes:
        mine = [s for s in stops if s["route"] == routes.index(r) + 1]
        assert [s["seq"] for s in mine] == list(range(1, len(mine) + 1))
        assert r["depart"] <= mine[0]["arrival"] and mine[-1]["end"] <= r["back"]
        assert all(a["end"] <= b["arrival"] for a, b in itertools.pairwise(mine))
        day, part = r["shift"].split()
        lo, hi = {"上午": ("08:30", "12:00"), "下午": ("14:30", "17:30")}[part]
        assert f"{day} {lo}" <= r["depart"] and r["back"] <= f"{day} {hi}"
        # one entry per building in a shift: a building's stops come one after another
        runs = [b for b, _ in itertools.groupby(s["building_id"] for s in mine)]
        assert len(runs) == len(set(runs))
    must = {
        r[0]
        for r in _sql(
            edit_path,
            "SELECT fid FROM households WHERE grid_id = 1 AND "
            "(CAST(tags AS TEXT) LIKE '%hardship%' OR CAST(tags AS TEXT) LIKE '%elderly_alone%')",
        )
    }
    assert must and must <= set(hh)
    marked = {h["id"] for s in stops for h in s["households"] if h["marks"]}
    assert must <= marked


def test_a_week_plan_puts_households_not_met_in_the_evening(
    edit_client: TestClient, edit_path: Path
) -> None:
    admin = dict(edit_client.headers)
    c = _campaign(edit_client, admin)
    first = _plan(edit_client, admin, c["id"])
    stops = _stops(first)
    ids = [h["id"] for s in stops for h in s["households"]]
    outcome = {h: ("not_home", "visited", "refused", "follow_up")[k % 4] for k, h in enumerate(ids)}
    batch = [
        {"household_id": h, "outcome": o, "visited_at": f"{DAY}T10:00:00", "campaign_id": c["id"]}
        for h, o in outcome.items()
    ]
    assert edit_client.post("/visits", json={"visits": batch}).status_code == 201
    week = _plan(edit_client, admin, c["id"], date="2026-11-25", days=5, time_limit_s=3)
    again = {h["id"]: s for s in _stops(week) for h in s["households"]}
    left = {u["household_id"] for u in week["unassigned"]}
    for h, o in outcome.items():
        if o in FINAL_OUTCOMES:
            assert h not in again and h not in left  # done: in no later round
        else:
            assert h in again or h in left
    not_home = [again[h] for h, o in outcome.items() if o == "not_home" and h in again]
    assert not_home, "households not met come back"
    for s in not_home:  # 2026-11-25 is a Wednesday: evenings only, the weekend is off
        assert "晚间" in s["shift"] and s["start"][11:] >= "18:30"
        assert dt.date.fromisoformat(s["start"][:10]).weekday() < 5
    follow = [again[h] for h, o in outcome.items() if o == "follow_up"]
    assert follow and all(s["must"] for s in follow)
    days = {s["start"][:10] for s in _stops(week)}
    assert days <= {"2026-11-25", "2026-11-26", "2026-11-27", "2026-11-30", "2026-12-01"}
    assert len(days) >= 3


def test_walking_times_between_stops_follow_the_streets(edit_client: TestClient) -> None:
    """Between two stops of a route a worker needs at least the straight-line walk."""
    import shapely

    from gridmap.crs import to_metric

    admin = dict(edit_client.headers)
    plan = _plan(edit_client, admin, _campaign(edit_client, admin)["id"])
    feats = [f for f in plan["features"] if f["properties"]["kind"] == "stop"]
    for a, b in itertools.pairwise(feats):
        if a["properties"]["route"] != b["properties"]["route"]:
            continue
        p, q = (shapely.Point(f["geometry"]["coordinates"]) for f in (a, b))
        metres = to_metric([shapely.LineString([p, q])])[0].length
        gap = (
            dt.datetime.fromisoformat(b["properties"]["arrival"])
            - dt.datetime.fromisoformat(a["properties"]["end"])
        ).total_seconds()
        assert gap >= metres / WALK_SPEED_M_S - 60  # minutes are rounded in the output


def test_gpx_and_roster(edit_client: TestClient, tmp_path: Path, edit_path: Path) -> None:
    admin = dict(edit_client.headers)
    plan = _plan(edit_client, admin, _campaign(edit_client, admin)["id"])
    pid = plan["plan"]["id"]
    r = edit_client.get(f"/plans/{pid}?f=gpx")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/gpx+xml")
    path = tmp_path / "plan.gpx"
    path.write_bytes(r.content)
    wpt = pyogrio.read_dataframe(path, layer="waypoints")
    stops = _stops(plan)
    assert len(wpt) == len(stops)
    assert list(wpt["name"].str.split(" ").str[0]) == [f"{s['route']}-{s['seq']}" for s in stops]
    tracks = pyogrio.read_dataframe(path, layer="tracks")
    routes = [f for f in plan["features"] if f["properties"]["kind"] == "route"]
    assert len(tracks) == len(routes)
    for t, f in zip(tracks.geometry, routes, strict=True):
        assert len(t.geoms[0].coords) == len(f["geometry"]["coordinates"])
    names = {r[0] for r in _sql(edit_path, "SELECT head_name FROM households WHERE grid_id = 1")}
    assert not any(n in r.text for n in names)  # a phone's map app gets no names of people

    csv_text = edit_client.get(f"/plans/{pid}?f=csv").content.decode("utf-8-sig")
    rows = csv_text.splitlines()
    assert rows[0].startswith("路线,班次,顺序,预计到达")
    planned = [h["id"] for s in stops for h in s["households"]]
    assert len(rows) - 1 == len(planned)
    phones = [line.split(",")[8] for line in rows[1:]]
    assert all("****" in p for p in phones if p)  # identifiers masked, as elsewhere


def test_the_roster_neutralises_spreadsheet_formulas(edit_client: TestClient) -> None:
    admin = dict(edit_client.headers)
    c = _campaign(edit_client, admin)
    plan = _plan(edit_client, admin, c["id"])
    h = _stops(plan)[0]["households"][0]["id"]
    cur = edit_client.get(f"/collections/households/items/{h}")
    r = edit_client.patch(
        f"/collections/households/items/{h}",
        json={"properties": {"room": '=HYPERLINK("http://x","y")'}},
        headers={"If-Match": cur.headers["etag"]},
    )
    assert r.status_code == 200
    text = edit_client.get(f"/plans/{plan['plan']['id']}?f=csv").content.decode("utf-8-sig")
    assert "'=HYPERLINK" in text and ",=HYPERLINK" not in text.replace('"', "")


# ----------------------------------------------------------------------------- the ledger


def test_offline_batches_are_recorded_once(edit_client: TestClient, edit_path: Path) -> None:
    c = _campaign(edit_client, dict(edit_client.headers))
    hh = [r[0] for r in _sql(edit_path, "SELECT fid FROM households WHERE grid_id = 1 LIMIT 5")]
    batch = {
        "visits": [
            {
                "household_id": h,
                "outcome": "visited",
                "visited_at": f"{DAY}T09:{k:02d}:00+08:00",
                "campaign_id": c["id"],
                "note": "入户宣传",
                "client_key": f"phone-7-{k:06d}",
            }
            for k, h in enumerate(hh)
        ]
    }
    before = _sql(edit_path, "SELECT count(*) FROM visits")[0][0]
    first = edit_client.post("/visits", json=batch)
    assert first.status_code == 201 and first.json()["new"] == 5
    again = edit_client.post("/visits", json=batch)
    assert again.status_code == 200 and again.json()["duplicates"] == 5
    assert [r["id"] for r in again.json()["recorded"]] == [
        r["id"] for r in first.json()["recorded"]
    ]
    assert _sql(edit_path, "SELECT count(*) FROM visits")[0][0] == before + 5
    # the same key for something else: refused, and nothing of the batch is written
    clash = {
        "visits": [
            {**batch["visits"][0], "outcome": "refused"},
            {**batch["visits"][1], "client_key": "phone-7-new-0001"},
        ]
    }
    r = edit_client.post("/visits", json=clash)
    assert r.status_code == 409 and "already used" in r.json()["detail"]
    assert _sql(edit_path, "SELECT count(*) FROM visits")[0][0] == before + 5


def test_client_keys_are_each_workers_own_and_say_nothing_outside_the_scope(
    edit_client: TestClient, edit_auth: dict[str, dict[str, str]], edit_path: Path
) -> None:
    """An admin's key on a household of grid 2 tells grid 1's worker nothing (404 as for
    any household outside their grid, whatever the outcome tried) and does not block the
    same key on their own household."""
    c = _campaign(edit_client, dict(edit_client.headers))
    worker = edit_auth["grid_worker"]
    (h2,) = _sql(edit_path, "SELECT fid FROM households WHERE grid_id = 2 LIMIT 1")[0]
    (h1,) = _sql(edit_path, "SELECT fid FROM households WHERE grid_id = 1 LIMIT 1")[0]
    v = {
        "household_id": h2,
        "outcome": "refused",
        "visited_at": f"{DAY}T09:00:00",
        "campaign_id": c["id"],
        "client_key": "phone9-0001",
    }
    assert edit_client.post("/visits", json={"visits": [v]}).status_code == 201
    for outcome in ("refused", "visited"):
        r = edit_client.post(
            "/visits", json={"visits": [{**v, "outcome": outcome}]}, headers=worker
        )
        assert r.status_code == 404, r.text
    mine = edit_client.post("/visits", json={"visits": [{**v, "household_id": h1}]}, headers=worker)
    assert mine.status_code == 201 and mine.json()["new"] == 1
    denied = _sql(
        edit_path, "SELECT count(*) FROM gridmap_audit WHERE username = 'worker1'"
        " AND action = 'denied_scope'",
    )[0][0]  # fmt: skip
    assert denied >= 2


def test_visit_input_that_would_have_failed_later(
    edit_client: TestClient, edit_auth: dict[str, dict[str, str]], edit_path: Path
) -> None:
    c = _campaign(edit_client, dict(edit_client.headers))
    (h1,) = _sql(edit_path, "SELECT fid FROM households WHERE grid_id = 1 LIMIT 1")[0]
    base = {"household_id": h1, "outcome": "visited", "visited_at": f"{DAY}T09:00:00"}
    before = _sql(edit_path, "SELECT count(*) FROM visits")[0][0]
    for bad in (
        {"visited_at": "0001-01-01T00:00:00+14:00"},
        {"visited_at": "9999-12-31T23:59:59-12:00"},
        {"visited_at": -1},
        {"visited_at": "1999-12-31T09:00:00"},
    ):
        r = edit_client.post("/visits", json={"visits": [{**base, **bad}]})
        assert r.status_code in (400, 422), (bad, r.text)
    assert _sql(edit_path, "SELECT count(*) FROM visits")[0][0] == before
    # a note typed with line breaks is kept on one line; another note under the key: 409
    keyed = {**base, "note": "第一行\n第二行\t完", "client_key": "phone3-0009"}
    r = edit_client.post("/visits", json={"visits": [keyed]})
    assert r.status_code == 201
    assert _sql(edit_path, "SELECT note FROM visits WHERE client_key = 'phone3-0009'") == [
        ("第一行 第二行 完",)
    ]
    r = edit_client.post("/visits", json={"visits": [{**keyed, "note": "别的"}]})
    assert r.status_code == 409
    # a campaign the caller cannot see is not described to them
    other = _campaign(edit_client, dict(edit_client.headers), grid_ids=[5])
    r = edit_client.post(
        "/visits",
        json={"visits": [{**base, "campaign_id": other["id"], "visited_at": "2020-01-01T09:00"}]},
        headers=edit_auth["grid_worker"],
    )
    assert r.status_code == 404 and str(other["id"]) in r.text and "2020" not in r.text
    # plans: shifts out of order, dates no campaign can hold
    for body in (
        {"shifts": [["14:30", "17:30"], ["08:30", "12:00"]]},
        {"date": "9999-12-31", "days": 2},
    ):
        r = edit_client.post(
            f"/campaigns/{c['id']}/plans", json={"grid_ids": [1], "date": DAY, **body}
        )
        assert r.status_code in (400, 422), (body, r.text)
    r = edit_client.post(
        "/campaigns", json={"name": "x", "starts": "9999-12-30", "ends": "9999-12-31"}
    )
    assert r.status_code in (400, 422)


def test_route_solving_is_one_job_per_user_and_bounded(
    edit_client: TestClient, edit_auth: dict[str, dict[str, str]]
) -> None:
    """While a user's routes are being computed, their next request waits its turn (429);
    the server takes a few such jobs at once; a plan asks for a bounded search."""
    from gridmap.ratelimit import SOLVING

    c = _campaign(edit_client, dict(edit_client.headers))
    body = {"stops": [{"id": "a", "lon": 113.2919, "lat": 34.8096}],
            "start": {"lon": 113.2900, "lat": 34.8080}}  # fmt: skip
    with SOLVING.enter("admin"):
        r = edit_client.post("/routes/optimize", json=body)
        assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
        r = edit_client.post(f"/campaigns/{c['id']}/plans", json={"grid_ids": [1], "date": DAY})
        assert r.status_code == 429
        # another user is not held up by it
        r = edit_client.post("/routes/optimize", json=body, headers=edit_auth["community_admin"])
        assert r.status_code == 200
    with SOLVING.enter("x1"), SOLVING.enter("x2"), SOLVING.enter("x3"), SOLVING.enter("x4"):
        r = edit_client.post("/routes/optimize", json=body)
        assert r.status_code == 429 and "busy" in r.json()["detail"]
    assert edit_client.post("/routes/optimize", json=body).status_code == 200
    r = edit_client.post(
        f"/campaigns/{c['id']}/plans",
        json={"grid_ids": list(range(1, 6)), "date": DAY, "time_limit_s": 30},
    )
    assert r.status_code == 422 and "at most 4 grids" in r.json()["detail"]


def test_open_campaigns_are_bounded_and_closed_ones_leave_protected_statistics(
    edit_client: TestClient, edit_auth: dict[str, dict[str, str]]
) -> None:
    from gridmap.campaigns import MAX_OPEN

    admin = dict(edit_client.headers)
    made = [_campaign(edit_client, admin, name=f"走访{k}") for k in range(MAX_OPEN - 1)]
    # the sample's autumn campaign is open too: MAX_OPEN now
    r = edit_client.post("/campaigns", json={"name": "再一个", "starts": DAY, "ends": DAY})
    assert r.status_code == 422 and "close one" in r.json()["detail"]
    last = made[-1]["id"]
    assert edit_client.patch(f"/campaigns/{last}", json={"status": "closed"}).status_code == 200
    r = edit_client.post("/campaigns", json={"name": "再一个", "starts": DAY, "ends": DAY})
    assert r.status_code == 201
    r = edit_client.patch(f"/campaigns/{last}", json={"status": "open"})
    assert r.status_code == 422  # no room to reopen it
    planner = edit_auth["planner"]
    closed = edit_client.get(f"/campaigns/{last}", headers=planner).json()
    assert closed["coverage"] is None and "closed" in closed["note"]
    assert edit_client.get(f"/stats/grids?campaign={last}", headers=planner).status_code == 403
    assert edit_client.get(f"/stats/grids?campaign={last}").status_code == 200  # admin: all


def test_last_visit_follows_the_latest_ledger_entry(
    edit_client: TestClient, edit_path: Path
) -> None:
    c = _campaign(edit_client, dict(edit_client.headers))
    (h,) = _sql(edit_path, "SELECT fid FROM households WHERE grid_id = 1 LIMIT 1")[0]

    def post(outcome: str, at: str) -> None:
        v = {"household_id": h, "outcome": outcome, "visited_at": at, "campaign_id": c["id"]}
        assert edit_client.post("/visits", json={"visits": [v]}).status_code == 201

    post("not_home", f"{DAY}T19:00:00")
    assert _sql(
        edit_path, "SELECT last_visit_at, last_visit_status FROM households WHERE fid = ?", h
    ) == [(f"{DAY}T19:00:00", "not_home")]
    post("visited", f"{DAY}T09:00:00")  # an older outcome, synced late: the ledger keeps it
    assert _sql(edit_path, "SELECT last_visit_status FROM households WHERE fid = ?", h) == [
        ("not_home",)
    ]
    post("visited", "2026-11-25T10:00:00")
    assert _sql(edit_path, "SELECT last_visit_status FROM households WHERE fid = ?", h) == [
        ("visited",)
    ]
    rows = _sql(
        edit_path,
        "SELECT outcome FROM visits WHERE household_id = ? AND campaign_id = ? ORDER BY visited_at",
        h,
        c["id"],
    )
    assert [r[0] for r in rows] == ["visited", "not_home", "visited"]


def test_the_sample_households_follow_their_ledger(sample_path: Path) -> None:
    rows = _sql(
        sample_path,
        "SELECT h.fid, h.last_visit_at, h.last_visit_status, "
        " (SELECT v.visited_at FROM visits v WHERE v.household_id = h.fid"
        "  ORDER BY v.visited_at DESC LIMIT 1),"
        " (SELECT v.outcome FROM visits v WHERE v.household_id = h.fid"
        "  ORDER BY v.visited_at DESC LIMIT 1)"
        " FROM households h",
    )
    assert len(rows) > 10_000
    assert all((r[1], r[2]) == (r[3], r[4]) for r in rows)
    assert sum(1 for r in rows if r[3] is not None) > 0.6 * len(rows)


def test_the_ledger_is_append_only(edit_client: TestClient) -> None:
    one = edit_client.get("/collections/visits/items?limit=1").json()["features"][0]
    url = f"/collections/visits/items/{one['id']}"
    etag = edit_client.get(url).headers["etag"]
    r = edit_client.patch(
        url, json={"properties": {"outcome": "visited"}}, headers={"If-Match": etag}
    )
    assert r.status_code == 403
    assert edit_client.delete(url, headers={"If-Match": etag}).status_code == 403
    r = edit_client.post(
        "/collections/visits/items", json={**one, "id": None} | {"type": "Feature"}
    )
    assert r.status_code in (400, 403)
    # a household with visits is kept (its ledger names it): record moved_out instead
    h = one["properties"]["household_id"]
    etag = edit_client.get(f"/collections/households/items/{h}").headers["etag"]
    r = edit_client.delete(f"/collections/households/items/{h}", headers={"If-Match": etag})
    assert r.status_code == 409


@pytest.mark.parametrize(
    ("visit", "status"),
    [
        ({"outcome": "visited", "visited_at": "2099-01-01T10:00:00"}, 422),  # the future
        ({"outcome": "visited", "visited_at": "2026-10-01T10:00:00"}, 422),  # before the campaign
        ({"outcome": "gone", "visited_at": f"{DAY}T10:00:00"}, 400),
        ({"outcome": "visited", "visited_at": "yesterday"}, 400),
        ({"outcome": "visited", "visited_at": f"{DAY}T10:00:00", "client_key": "x"}, 400),
        ({"outcome": "visited", "visited_at": f"{DAY}T10:00:00", "note": "\u202e反转"}, 422),
        ({"outcome": "visited", "visited_at": f"{DAY}T10:00:00", "campaign_id": 999}, 404),
        ({"outcome": "visited", "visited_at": f"{DAY}T10:00:00", "household_id": 10**9}, 404),
    ],
)
def test_bad_visits_get_a_clear_4xx_and_nothing_is_written(
    edit_client: TestClient, edit_path: Path, visit: dict[str, Any], status: int
) -> None:
    c = _campaign(edit_client, dict(edit_client.headers))
    (h,) = _sql(edit_path, "SELECT fid FROM households WHERE grid_id = 1 LIMIT 1")[0]
    good = {
        "household_id": h,
        "outcome": "visited",
        "visited_at": f"{DAY}T09:00:00",
        "campaign_id": c["id"],
    }
    before = _sql(edit_path, "SELECT count(*) FROM visits")[0][0]
    r = edit_client.post(
        "/visits", json={"visits": [good, {**good, "campaign_id": c["id"], **visit}]}
    )
    assert r.status_code == status, r.text
    assert _sql(edit_path, "SELECT count(*) FROM visits")[0][0] == before


# ----------------------------------------------------------------------------- coverage


def test_coverage_equals_a_direct_count(edit_client: TestClient, edit_path: Path) -> None:
    c = _campaign(edit_client, dict(edit_client.headers), target=COAL)
    coal = _sql(
        edit_path,
        "SELECT fid, grid_id FROM households WHERE CAST(tags AS TEXT) LIKE '%\"coal_user\"%'",
    )
    outcomes = ["visited", "not_home", "refused", "moved_out", "follow_up"]
    batch = [
        {
            "household_id": h,
            "outcome": outcomes[k % 5],
            "visited_at": f"{DAY}T1{k % 9}:00:00",
            "campaign_id": c["id"],
        }
        for k, (h, _) in enumerate(coal[:40])
    ]
    assert edit_client.post("/visits", json={"visits": batch}).status_code == 201
    body = edit_client.get(f"/campaigns/{c['id']}").json()
    latest = dict(
        _sql(
            edit_path,
            "SELECT household_id, outcome FROM visits v WHERE campaign_id = ? AND visited_at = "
            "(SELECT max(visited_at) FROM visits w"
            " WHERE w.household_id = v.household_id AND w.campaign_id = v.campaign_id)",
            c["id"],
        )
    )
    per_grid = Counter(g for _, g in coal)
    done = Counter(g for h, g in coal if latest.get(h) in ("visited", "refused", "moved_out"))
    got = {r["id"]: (r["households"], r["done"]) for r in body["coverage"]["grids"]}
    assert got == {g: (per_grid.get(g, 0), done.get(g, 0)) for g in got}
    assert sum(d for _, d in got.values()) == 24  # 3 of every 5 outcomes are final
    community = _sql(edit_path, "SELECT fid, community_id FROM grids")
    by_comm = Counter()
    for g, cm in community:
        by_comm[cm] += per_grid.get(g, 0)
    assert {r["id"]: r["households"] for r in body["coverage"]["communities"]} == dict(by_comm)
    stats = edit_client.get(f"/stats/zones?campaign={c['id']}").json()["areas"]
    assert sum(a["campaign"]["households"] for a in stats) == len(coal)


def test_planners_see_protected_coverage_only(
    edit_client: TestClient, edit_auth: dict[str, dict[str, str]]
) -> None:
    c = _campaign(edit_client, dict(edit_client.headers), target=COAL)
    planner = edit_auth["planner"]
    body = edit_client.get(f"/campaigns/{c['id']}", headers=planner).json()
    values = [
        r[k] for rows in body["coverage"].values() for r in rows for k in ("households", "done")
    ]
    assert not any(isinstance(v, int) and 0 < v < 5 for v in values)
    assert "<5" in values or "x" in values  # the sample has grids with one to four coal users
    assert "plans" not in body
    r = edit_client.post(
        f"/campaigns/{c['id']}/plans", json={"grid_ids": [1], "date": DAY}, headers=planner
    )
    assert r.status_code == 403


# ----------------------------------------------------------------------------- roles


def test_a_grid_worker_plans_and_records_in_their_grid_only(
    edit_client: TestClient, edit_auth: dict[str, dict[str, str]], edit_path: Path
) -> None:
    admin = dict(edit_client.headers)
    worker = edit_auth["grid_worker"]
    c = _campaign(edit_client, admin)
    mine = _plan(edit_client, worker, c["id"])  # grid 1 is worker1's
    other = edit_client.post(
        f"/campaigns/{c['id']}/plans", json={"grid_ids": [2], "date": DAY}, headers=admin
    )
    other_id = other.json()["plans"][0]["id"]
    assert edit_client.get(f"/plans/{other_id}", headers=worker).status_code == 404
    r = edit_client.post(
        f"/campaigns/{c['id']}/plans", json={"grid_ids": [1, 2], "date": DAY}, headers=worker
    )
    assert r.status_code == 404
    plans = edit_client.get(f"/campaigns/{c['id']}", headers=worker).json()["plans"]
    assert {p["grid_id"] for p in plans} == {1} and mine["plan"]["id"] in {p["id"] for p in plans}
    (h2,) = _sql(edit_path, "SELECT fid FROM households WHERE grid_id = 2 LIMIT 1")[0]
    before = _sql(edit_path, "SELECT count(*) FROM visits")[0][0]
    v = {
        "household_id": h2,
        "outcome": "visited",
        "visited_at": f"{DAY}T10:00:00",
        "campaign_id": c["id"],
    }
    assert edit_client.post("/visits", json={"visits": [v]}, headers=worker).status_code == 404
    assert _sql(edit_path, "SELECT count(*) FROM visits")[0][0] == before
    audit = _sql(
        edit_path,
        "SELECT action FROM gridmap_audit WHERE username = 'worker1' ORDER BY id DESC LIMIT 3",
    )
    assert ("denied_scope",) in audit
    assert (
        edit_client.post(
            "/campaigns", json={"name": "x", "starts": DAY, "ends": DAY}, headers=worker
        ).status_code
        == 403
    )


def test_a_community_campaign_covers_its_grids(
    edit_client: TestClient, edit_auth: dict[str, dict[str, str]], edit_path: Path
) -> None:
    community = edit_auth["community_admin"]
    c = _campaign(edit_client, community)
    mine = {r[0] for r in _sql(edit_path, "SELECT fid FROM grids WHERE community_id = 1")}
    assert set(c["grid_ids"]) == mine
    assert (
        edit_client.get(f"/campaigns/{c['id']}", headers=edit_auth["grid_worker"]).status_code
        == 200
    )
    r = edit_client.post(
        "/campaigns",
        json={"name": "越界", "starts": DAY, "ends": DAY, "grid_ids": [40]},
        headers=community,
    )
    assert r.status_code == 403


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"ends": "2026-01-01"}, 422),
        ({"target": "tags LIKE"}, 400),
        ({"target": "phone LIKE '138%'"}, 422),  # personal fields choose no campaign
        ({"target": "head_name = '胡某甲'"}, 422),  # (its target is shown to all on it)
        ({"target": "nosuch = 1"}, 400),
        ({"name": ""}, 400),
        ({"grid_ids": [999]}, 422),
        ({"rules": {"service_min": 0}}, 400),
        ({"rules": {"first_tags": ["vip"]}}, 422),
        ({"ends": "2028-12-31"}, 422),
    ],
)
def test_bad_campaigns_get_a_clear_4xx(
    edit_client: TestClient, body: dict[str, Any], status: int
) -> None:
    r = edit_client.post("/campaigns", json={"name": "走访", "starts": DAY, "ends": DAY, **body})
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"date": "2027-06-01"}, 422),  # after the campaign
        ({"grid_ids": []}, 400),
        ({"grid_ids": [1, 1]}, 422),
        ({"shifts": [["12:00", "08:00"]]}, 422),
        ({"shifts": [["08:00", "12:00"], ["11:00", "14:00"]]}, 422),
        ({"days": 99}, 400),
        ({"grid_ids": [999]}, 404),
    ],
)
def test_bad_plan_requests_get_a_clear_4xx(
    edit_client: TestClient, body: dict[str, Any], status: int
) -> None:
    c = _campaign(edit_client, dict(edit_client.headers))
    r = edit_client.post(f"/campaigns/{c['id']}/plans", json={"grid_ids": [1], "date": DAY, **body})
    assert r.status_code == status, r.text


def test_a_closed_campaign_takes_no_plans_or_visits(
    edit_client: TestClient, edit_path: Path
) -> None:
    c = _campaign(edit_client, dict(edit_client.headers))
    r = edit_client.patch(f"/campaigns/{c['id']}", json={"status": "closed"})
    assert r.status_code == 200 and r.json()["status"] == "closed"
    r = edit_client.post(f"/campaigns/{c['id']}/plans", json={"grid_ids": [1], "date": DAY})
    assert r.status_code == 422 and "closed" in r.json()["detail"]
    (h,) = _sql(edit_path, "SELECT fid FROM households LIMIT 1")[0]
    v = {
        "household_id": h,
        "outcome": "visited",
        "visited_at": f"{DAY}T10:00:00",
        "campaign_id": c["id"],
    }
    assert edit_client.post("/visits", json={"visits": [v]}).status_code == 422
    listed = edit_client.get("/campaigns").json()["campaigns"]
    assert {x["id"]: x["status"] for x in listed}[c["id"]] == "closed"
    assert json.loads(json.dumps(listed))  # plain JSON
