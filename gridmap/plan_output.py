"""A stored plan as the field needs it: GeoJSON (routes and numbered stops), GPX for a
phone's navigation app, and the roster in visit order (CSV, masked as the caller sees it).

Households are read through the caller's scope (so audited and masked); a plan itself
holds only ids, times and the route.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from typing import Any

import gpxpy.gpx

from gridmap import campaigns as camp
from gridmap.exports import neutralise
from gridmap.layers import HOUSEHOLD_TAG_ZH, VISIT_STATUS_ZH
from gridmap.plans import planned_households
from gridmap.store.base import Query, Scope, Store

MARKED_TAGS = ("hardship", "elderly_alone", "disabled")
"""Tags shown on the stops and the roster (who needs care at the door)."""


def when(doc: dict[str, Any], seconds: int) -> str:
    """Seconds since the plan's first day began as local ``YYYY-MM-DD HH:MM``."""
    day0 = dt.datetime.fromisoformat(doc["body"]["date"])
    return (day0 + dt.timedelta(seconds=int(seconds))).strftime("%Y-%m-%d %H:%M")


def details(
    store: Store, doc: dict[str, Any], scope: Scope
) -> tuple[dict[int, dict[str, Any]], dict[int, str], dict[int, camp.Standing]]:
    """The plan's households (as the scope shows them), building addresses, standings."""
    ids = planned_households(doc)
    hh = store.query("households", Query(ids=ids), scope=scope) if ids else None
    people = {int(i): p for i, p in zip(hh.ids, hh.properties, strict=True)} if hh else {}
    b_ids = sorted({s["building_id"] for r in doc["body"]["routes"] for s in r["stops"]})
    bs = store.query("buildings", Query(ids=b_ids), scope=scope) if b_ids else None
    addresses = (
        {int(i): str(p.get("address") or "") for i, p in zip(bs.ids, bs.properties, strict=True)}
        if bs
        else {}
    )
    c = camp.get(store, doc["body"]["campaign_id"])
    standing = camp.standings(store, c, scope=scope, households=ids)
    return people, addresses, standing


def stop_label(stop: dict[str, Any], addresses: dict[int, str]) -> str:
    """A stop's name: the building's address and unit."""
    base = addresses.get(stop["building_id"], f"楼栋{stop['building_id']}")
    return base + (f" {stop['unit']}" if stop.get("unit") else "")


def to_geojson(store: Store, doc: dict[str, Any], scope: Scope) -> dict[str, Any]:
    """Routes (LineStrings) and numbered stops (Points) as one FeatureCollection."""
    people, addresses, standing = details(store, doc, scope)
    b = doc["body"]
    features: list[dict[str, Any]] = []
    for k, r in enumerate(b["routes"], start=1):
        features.append(
            {
                "type": "Feature",
                "id": f"route-{k}",
                "geometry": {"type": "LineString", "coordinates": r["line"]},
                "properties": {
                    "kind": "route",
                    "worker": r["worker"],
                    "shift": r["shift"],
                    "depart": when(doc, r["depart"]),
                    "back": when(doc, r["back"]),
                    "distance_m": r["distance_m"],
                    "duration_s": r["duration_s"],
                },
            }
        )
        for n, s in enumerate(r["stops"], start=1):
            features.append(
                {
                    "type": "Feature",
                    "id": f"stop-{k}-{n}",
                    "geometry": {"type": "Point", "coordinates": [s["lon"], s["lat"]]},
                    "properties": {
                        "kind": "stop",
                        "route": k,
                        "seq": n,
                        "worker": r["worker"],
                        "shift": r["shift"],
                        "name": stop_label(s, addresses),
                        "building_id": s["building_id"],
                        "arrival": when(doc, s["arrival"]),
                        "start": when(doc, s["start"]),
                        "end": when(doc, s["end"]),
                        "must": s["must"],
                        "households": [
                            _household(h, people.get(h), standing.get(h)) for h in s["households"]
                        ],
                    },
                }
            )
    return {
        "type": "FeatureCollection",
        "features": features,
        "plan": summary(doc),
        "unassigned": b["unassigned"],
    }


def _household(fid: int, p: dict[str, Any] | None, st: camp.Standing | None) -> dict[str, Any]:
    if p is None:  # no longer in the caller's grids, or moved away
        return {"id": fid}
    return {
        "id": fid,
        "room": p.get("room"),
        "head_name": p.get("head_name"),
        "marks": [t for t in MARKED_TAGS if t in (p.get("tags") or ())],
        "standing": st.outcome if st else None,
    }


def summary(doc: dict[str, Any]) -> dict[str, Any]:
    """What a plan is, without its routes."""
    b = doc["body"]
    keys = ("campaign_id", "grid_id", "date", "days", "workers", "shifts", "evening", "weekend")
    out: dict[str, Any] = {"id": doc["id"], **{k: b.get(k) for k in keys}}
    out.update(
        start=b.get("start"),
        mode=b.get("mode"),
        note=b.get("note"),
        solver=b.get("solver"),
        households_open=b.get("households_open"),
        households_planned=len(planned_households(doc)),
        created_by=doc.get("created_by"),
        created_at=doc.get("created_at"),
    )
    return out


def to_gpx(store: Store, doc: dict[str, Any], scope: Scope) -> str:
    """GPX 1.1: one numbered waypoint per stop (no names of people) and one track per route."""
    _, addresses, _ = details(store, doc, scope)
    g = gpxpy.gpx.GPX()
    g.creator = "gridmap"
    g.name = f"走访计划 {doc['id']}"
    for k, r in enumerate(doc["body"]["routes"], start=1):
        for n, s in enumerate(r["stops"], start=1):
            g.waypoints.append(
                gpxpy.gpx.GPXWaypoint(
                    latitude=s["lat"],
                    longitude=s["lon"],
                    name=f"{k}-{n} {stop_label(s, addresses)}",
                    description=f"{when(doc, s['arrival'])} 到达，{len(s['households'])}户",
                    symbol="Flag, Red" if s["must"] else "Flag, Blue",
                )
            )
        track = gpxpy.gpx.GPXTrack(name=f"{k} {r['shift']} 网格员{r['worker']}")
        seg = gpxpy.gpx.GPXTrackSegment()
        seg.points = [gpxpy.gpx.GPXTrackPoint(latitude=y, longitude=x) for x, y in r["line"]]
        track.segments.append(seg)
        g.tracks.append(track)
    return g.to_xml(version="1.1")


ROSTER_COLUMNS = (
    ("route", "路线"),
    ("shift", "班次"),
    ("seq", "顺序"),
    ("arrival", "预计到达"),
    ("stop", "楼栋单元"),
    ("household_id", "住户编号"),
    ("room", "门牌"),
    ("head_name", "户主"),
    ("phone", "联系电话"),
    ("marks", "关注"),
    ("standing", "本次走访结果"),
    ("result", "走访结果（现场填写）"),
)


def roster(store: Store, doc: dict[str, Any], scope: Scope) -> list[dict[str, Any]]:
    """One row per household in visit order, as the caller's scope shows them."""
    people, addresses, standing = details(store, doc, scope)
    rows = []
    for k, r in enumerate(doc["body"]["routes"], start=1):
        for n, s in enumerate(r["stops"], start=1):
            for h in s["households"]:
                p = people.get(h) or {}
                st = standing.get(h)
                rows.append(
                    {
                        "route": k,
                        "shift": r["shift"],
                        "seq": n,
                        "arrival": when(doc, s["arrival"]),
                        "stop": stop_label(s, addresses),
                        "household_id": h,
                        "room": p.get("room"),
                        "head_name": p.get("head_name"),
                        "phone": p.get("phone"),
                        "marks": "、".join(
                            HOUSEHOLD_TAG_ZH[t] for t in MARKED_TAGS if t in (p.get("tags") or ())
                        ),
                        "standing": VISIT_STATUS_ZH.get(st.outcome, st.outcome) if st else "",
                        "result": "",
                    }
                )
    return rows


def roster_csv(rows: list[dict[str, Any]]) -> bytes:
    """The roster as UTF-8 CSV with a BOM (Excel), Chinese headers, formulas neutralised."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow([zh for _, zh in ROSTER_COLUMNS])
    for row in rows:
        w.writerow(
            [neutralise(row.get(k)) if row.get(k) is not None else "" for k, _ in ROSTER_COLUMNS]
        )
    return ("\ufeff" + buf.getvalue()).encode()
