"""Renovation: the ranking against a hand computation, counts against SQL run as another
client would, the dated timeline and its guards, and the HTTP answers per role."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gridmap.analysis import renovation as rn
from gridmap.store.base import Query, Scope
from tests.conftest import raw_sql

TODAY = dt.date(2026, 12, 1)


def _profile(fid: int, **kw: Any) -> rn.Profile:
    base = dict(
        id=fid, name=f"小区{fid}", status="planned", built_year=2000, households=100,
        buildings=3, hardship=0, elderly=0, works=(), planned_start=None, planned_end=None,
        budget_wan=None,
    )  # fmt: skip
    return rn.Profile(**{**base, **kw})


def test_the_ranking_weighs_each_reason_as_a_hand_would() -> None:
    a = _profile(1, built_year=1986, households=100, hardship=10, elderly=5, works=("gas", "roof"))
    b = _profile(2, built_year=2006, households=300, hardship=0, elderly=30, works=("lighting",))
    done = _profile(3, status="accepted", built_year=1950, households=999)
    rows = rn.rank([a, b, done], today=TODAY)
    assert [r["id"] for r in rows] == [1, 2]  # what is accepted is not ranked
    # two neighbourhoods: each reason scales to 0 or 1; A leads on age, hardship, works
    assert rows[0]["score"] == pytest.approx(0.3 + 0.2 + 0.1)
    assert rows[1]["score"] == pytest.approx(0.25 + 0.15)
    assert rows[0]["reasons"] == ["房龄40年", "困难户占10%", "改造项目2项（急需2项）"]
    assert rows[1]["reasons"] == ["涉及300户", "独居老人占10%"]
    # other weights, other order
    rows = rn.rank([a, b], today=TODAY, weights={"households": 1.0}, lang="en")
    assert [r["id"] for r in rows] == [2, 1] and rows[0]["reasons"] == ["300 households"]
    with pytest.raises(Exception, match="unknown reasons"):
        rn.rank([a], today=TODAY, weights={"beauty": 1})


def test_profiles_count_what_sql_counts(sample_store: Any, sample_path: Path | str) -> None:
    found = {p.id: p for p in rn.profiles(sample_store, Scope.ALL)}
    rows = raw_sql(
        sample_path,
        "SELECT b.neighbourhood_id, COUNT(*), "
        "SUM(CASE WHEN CAST(h.tags AS TEXT) LIKE '%\"hardship\"%' THEN 1 ELSE 0 END), "
        "SUM(CASE WHEN CAST(h.tags AS TEXT) LIKE '%\"elderly_alone\"%' THEN 1 ELSE 0 END) "
        "FROM households h JOIN buildings b ON h.building_id = b.fid "
        "WHERE b.neighbourhood_id IS NOT NULL GROUP BY b.neighbourhood_id",
    )
    assert len(rows) == len(found) > 0
    for hood, n, hard, old in rows:
        p = found[int(hood)]
        assert (p.households, p.hardship, p.elderly) == (int(n), int(hard), int(old))


def test_works_in_a_range_are_those_that_overlap_it(sample_store: Any) -> None:
    found = rn.profiles(sample_store, Scope.ALL)
    start, end = dt.date(2026, 1, 1), dt.date(2026, 6, 30)
    hits = {p.id for p in rn.affected(found, start, end)}
    for p in found:
        s, e = dt.date.fromisoformat(p.planned_start), dt.date.fromisoformat(p.planned_end)
        assert (p.id in hits) == (s <= end and e >= start)
    with pytest.raises(Exception, match="ends before"):
        rn.affected(found, end, start)


def test_status_changes_are_dated_events_and_guarded(
    edit_client: TestClient, edit_auth: dict[str, dict[str, str]], edit_path: Any
) -> None:
    url = "/analysis/renovation/1/status"
    r = edit_client.post(url, json={"status": "approved", "on": "2026-05-01", "note": "立项批复"})
    assert r.status_code == 201, r.text
    r = edit_client.post(
        url,
        json={"status": "in_progress", "on": "2026-09-15"},
        headers={"If-Match": '"old_neighbourhoods-1-v2"'},
    )
    assert r.status_code == 201, r.text
    # stale version, bad status, a date to come, the wrong role: refused, nothing written
    refused = [
        ({"status": "accepted", "on": "2026-10-01"}, {"If-Match": '"old_neighbourhoods-1-v1"'}),
        ({"status": "done", "on": "2026-10-01"}, {}),
        ({"status": "accepted", "on": "2999-01-01"}, {}),
        ({"status": "accepted", "on": "2026-10-01"}, edit_auth["grid_worker"]),
        ({"status": "accepted", "on": "2026-10-01", "note": "a\u202eb"}, {}),
    ]
    for body, headers in refused:
        r = edit_client.post(url, json=body, headers=headers)
        assert r.status_code in (400, 403, 412, 422), (body, r.status_code)
    events = raw_sql(edit_path, "SELECT COUNT(*) FROM gridmap_documents WHERE kind = ?", rn.EVENT)
    assert events[0][0] == 2
    body = edit_client.get("/analysis/renovation").json()
    hood = next(n for n in body["neighbourhoods"] if n["id"] == 1)
    assert [(t["status"], t["on"]) for t in hood["timeline"]] == [
        ("approved", "2026-05-01"),
        ("in_progress", "2026-09-15"),
    ]
    assert hood["status"] == "in_progress"
    from gridmap.store import open_store

    store = open_store(edit_path)
    found = rn.profiles(store, Scope.ALL)
    assert rn.status_on(store, found, dt.date(2026, 4, 30))[1] is None  # before any record
    assert rn.status_on(store, found, dt.date(2026, 6, 1))[1] == "approved"
    assert rn.status_on(store, found, dt.date(2026, 12, 1))[1] == "in_progress"
    assert rn.status_on(store, found, dt.date(2026, 12, 1))[2] == "planned"  # no events: as is
    store.close()
    # the map: before its first dated event it has no record (尚无记录), after it has one
    no_record = "\\u5c1a\\u65e0\\u8bb0\\u5f55"  # as the page's JSON writes 尚无记录
    before = edit_client.get("/map/renovation?on=2026-04-01").text
    after = edit_client.get("/map/renovation?on=2026-06-01").text
    assert before.count(no_record) == after.count(no_record) + 1
    assert 'id=\\"gm-month\\"' in after


def test_renovation_over_http_per_role(
    client: TestClient,
    public_client: TestClient,
    auth: dict[str, dict[str, str]],
    sample_store: Any,
) -> None:
    admin = client.get("/analysis/renovation", headers=auth["subdistrict_admin"]).json()
    planner = client.get("/analysis/renovation", headers=auth["planner"]).json()
    assert admin["rounded"] is False and planner["rounded"] is True
    assert len(admin["neighbourhoods"]) == sample_store.count("old_neighbourhoods")
    for n in planner["neighbourhoods"]:
        assert all(n[k] % 5 == 0 for k in ("households", "hardship", "elderly_alone"))
    assert {r["status"] for r in admin["next"]} <= {"planned", "approved"}
    assert [r["rank"] for r in admin["next"]] == list(range(1, len(admin["next"]) + 1))
    r = client.get("/analysis/renovation?weights=age:1", headers=auth["planner"])
    assert r.status_code == 200
    ages = {n["id"]: n["built_year"] for n in planner["neighbourhoods"]}
    order = [ages[x["id"]] for x in r.json()["next"]]
    assert order == sorted(order)  # oldest first
    for bad in ("weights=beauty:1", "weights=age:-1", "weights=age:x", "weights=age:0"):
        assert client.get(f"/analysis/renovation?{bad}").status_code in (400, 422), bad
    hit = client.get(
        "/analysis/renovation/affected?start=2026-01-01&end=2026-06-30", headers=auth["planner"]
    ).json()
    assert hit["households"] == sum(n["households"] for n in hit["neighbourhoods"])
    ids = {n["id"] for n in hit["neighbourhoods"]}
    assert {f["properties"]["neighbourhood_id"] for f in hit["buildings"]["features"]} == ids
    b = sample_store.query("buildings", Query())
    assert len(hit["buildings"]["features"]) == sum(
        1 for p in b.properties if p.get("neighbourhood_id") in ids
    )
    r = client.get("/analysis/renovation/affected?start=2026-06-30&end=2026-01-01")
    assert r.status_code == 400
    assert public_client.get("/analysis/renovation").status_code == 401
    assert client.get("/analysis/renovation", headers=auth["auditor"]).status_code == 403
    page = client.get("/map/renovation?lang=en", headers=auth["planner"])
    assert page.status_code == 200 and "gm-month" in page.text
