"""The sample subdistrict 中心路街道: a deterministic, invented layout inside the real 上街区.

Geometry is laid out in a local metric frame (metres east/north of the district seat on
中心路, in EPSG:4547) and converted to WGS84 at the end. The district boundary is real
(GCJ-02, converted to WGS84 first); everything inside it — roads, communities, grids,
buildings, households and their people — is invented. Personal data is visibly synthetic:
names are "surname + 某 + heavenly stem", phone numbers start with 100 (no Chinese mobile
prefix does) and every ID number fails its GB 11643 check digit.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from gridmap import crs
from gridmap.errors import IntegrityError
from gridmap.identifiers import id_check_digit
from gridmap.integrity import check_store
from gridmap.layers import RENOVATION_WORKS
from gridmap.store import SYNTHETIC, FeatureStore, create_store

SEAT_WGS84 = (113.2919, 34.8096)
"""District seat on 中心路 (DataV centre 113.298282, 34.808689 GCJ-02, converted)."""

Step = Callable[[str, int, int], None]
"""Progress: (stage, done, total)."""

# ------------------------------------------------------------------ the invented plan

# North-south roads: (name, u at v=0, skew du/dv).
_NS_ROADS = [
    ("济源路", -1450.0, 0.03),
    ("许昌路", -750.0, 0.035),
    ("汝南路", -50.0, 0.04),
    ("峨眉路", 650.0, 0.03),
    ("工业路", 1400.0, 0.02),
]
# East-west roads: (name, v at u=0, skew dv/du).
_EW_ROADS = [
    ("淮阳路", -1050.0, -0.02),
    ("新安路", -400.0, -0.03),
    ("中心路", 20.0, -0.025),
    ("金华路", 650.0, -0.02),
    ("北环路", 1250.0, -0.015),
]
# Columns × rows of superblocks → (zone, community); rows from south, columns from west.
_PLAN = {
    (0, 0): ("江南小镇", "江南小镇"),
    (0, 1): ("江南小镇", "江南小镇"),
    (1, 0): ("江南小镇", "吉祥街"),
    (1, 1): ("江南小镇", "吉祥街"),
    (2, 0): ("聂寨", "鸿园"),
    (2, 1): ("聂寨", "鸿园"),
    (3, 0): ("聂寨", "聂寨"),
    (3, 1): ("聂寨", "聂寨"),
    (0, 2): ("颐苑", "颐苑"),
    (0, 3): ("颐苑", "颐苑"),
    (1, 2): ("颐苑", "如意街"),
    (1, 3): ("颐苑", "如意街"),
    (2, 2): ("盛世", "如意"),
    (2, 3): ("盛世", "如意"),
    (3, 2): ("盛世", "盛世"),
    (3, 3): ("盛世", "盛世"),
}
_ZONES = ["颐苑", "江南小镇", "聂寨", "盛世"]
_COMMUNITIES = ["颐苑", "江南小镇", "聂寨", "盛世", "如意街", "吉祥街", "鸿园", "如意"]
_COMMUNITY_ZONE = {c: z for (z, c) in _PLAN.values()}
# Superblocks cut into three grids (the others into two): 8 × 3 + 8 × 2 = 40 grids.
_THREE_GRIDS = {(0, 0), (1, 1), (2, 0), (3, 0), (3, 1), (0, 2), (2, 3), (3, 3)}
_VILLAGE = {"聂寨"}
_OLD_NEIGHBOURHOODS = [
    "32街坊",
    "15街坊",
    "27街坊",
    "9街坊",
    "铝厂生活区",
    "机械厂家属院",
    "粮食局家属院",
    "供电局家属院",
]

_SURNAMES = list("王李张刘陈杨黄赵周吴徐孙马胡朱郭何罗高林郑梁谢宋唐韩冯于董萧程曹袁邓许傅沈曾彭吕")
_STEMS = list("甲乙丙丁戊己庚辛壬癸")


def synthetic_name(rng: np.random.Generator) -> str:
    """An obviously invented name: surname + 某 + a heavenly stem (e.g. 王某丙)."""
    return f"{_SURNAMES[rng.integers(len(_SURNAMES))]}某{_STEMS[rng.integers(len(_STEMS))]}"


def synthetic_phone(rng: np.random.Generator) -> str:
    """An 11-digit number starting 100: no Chinese mobile number does."""
    return "100" + f"{int(rng.integers(0, 10**8)):08d}"


def synthetic_id_number(rng: np.random.Generator, birth: dt.date) -> str:
    """An ID number of 上街区 whose check digit is deliberately wrong (so it is nobody's)."""
    first17 = f"410106{birth:%Y%m%d}{int(rng.integers(0, 1000)):03d}"
    right = id_check_digit(first17)
    wrong = [c for c in "0123456789" if c != right]
    return first17 + wrong[int(rng.integers(len(wrong)))]


def _unique(id_number: str, used: set[str]) -> str:
    """The ID number, its sequence digits stepped on (no random draw) while another
    household already holds it: one person, one number."""
    while id_number in used:
        seq = (int(id_number[14:17]) + 1) % 1000
        first17 = f"{id_number[:14]}{seq:03d}"
        id_number = first17 + str((int(id_check_digit(first17).replace("X", "10")) + 1) % 10)
    used.add(id_number)
    return id_number


# ------------------------------------------------------------------ geometry helpers


@dataclass
class Frame:
    """Local metric frame: metres east (u) and north (v) of the seat, in EPSG:4547."""

    x0: float
    y0: float

    @classmethod
    def at_seat(cls) -> Frame:
        """The frame centred on the district seat."""
        p = crs.to_metric([shapely.Point(*SEAT_WGS84)])[0]
        return cls(p.x, p.y)

    def to_wgs84(self, geoms: Any) -> np.ndarray:
        """Local (u, v) geometries → WGS84 lon/lat."""
        arr = np.asarray(geoms, dtype=object)
        moved = shapely.transform(arr, lambda c: c + np.array([self.x0, self.y0]))
        return crs.from_metric(moved)

    def from_wgs84(self, geoms: Any) -> np.ndarray:
        """WGS84 lon/lat geometries → local (u, v)."""
        m = crs.to_metric(np.asarray(geoms, dtype=object))
        return shapely.transform(m, lambda c: c - np.array([self.x0, self.y0]))


def district_boundary_wgs84() -> BaseGeometry:
    """The real boundary of 上街区 (adcode 410106), converted from GCJ-02 to WGS84."""
    text = (
        resources.files("gridmap.data")
        .joinpath("shangjie_district_gcj02.geojson")
        .read_text(encoding="utf-8")
    )
    feature = json.loads(text)["features"][0]
    g = shapely.geometry.shape(feature["geometry"])
    return crs.transform_geometries([g], src="gcj02", dst="crs84")[0]


def _ns_line(u0: float, skew: float, v_lo: float, v_hi: float) -> shapely.LineString:
    return shapely.LineString([(u0 + skew * v_lo, v_lo), (u0 + skew * v_hi, v_hi)])


def _ew_line(v0: float, skew: float, u_lo: float, u_hi: float) -> shapely.LineString:
    return shapely.LineString([(u_lo, v0 + skew * u_lo), (u_hi, v0 + skew * u_hi)])


def _quad(ns_w, ns_e, ew_s, ew_n) -> shapely.Polygon:  # type: ignore[no-untyped-def]
    """Block bounded by two N-S and two E-W road lines (corners at their crossings)."""
    pts = [
        shapely.intersection(ns_w, ew_s),
        shapely.intersection(ns_e, ew_s),
        shapely.intersection(ns_e, ew_n),
        shapely.intersection(ns_w, ew_n),
    ]
    return shapely.Polygon([(p.x, p.y) for p in pts])


def _split(poly: shapely.Polygon, parts: int) -> tuple[list[shapely.Polygon], list[Any]]:
    """Cut a block into ``parts`` strips across its longer side; return strips and cut lines."""
    minx, miny, maxx, maxy = poly.bounds
    vertical_cuts = (maxx - minx) >= (maxy - miny)
    pieces: list[shapely.Polygon] = []
    cuts = []
    for k in range(parts):
        if vertical_cuts:
            a = minx + (maxx - minx) * k / parts
            b = minx + (maxx - minx) * (k + 1) / parts
            band = shapely.box(a, miny - 50, b, maxy + 50)
            if k:
                cuts.append(shapely.LineString([(a, miny - 50), (a, maxy + 50)]).intersection(poly))
        else:
            a = miny + (maxy - miny) * k / parts
            b = miny + (maxy - miny) * (k + 1) / parts
            band = shapely.box(minx - 50, a, maxx + 50, b)
            if k:
                cuts.append(shapely.LineString([(minx - 50, a), (maxx + 50, a)]).intersection(poly))
        pieces.append(shapely.intersection(poly, band))
    return pieces, cuts


# ------------------------------------------------------------------ the builder


@dataclass
class Sample:
    """Everything the builder produced, as local-frame geometries plus properties."""

    frame: Frame
    boundary: BaseGeometry
    today: dt.date = dt.date(2026, 11, 24)
    layers: dict[str, tuple[list[BaseGeometry], list[dict[str, Any]]]] = field(default_factory=dict)

    def add(self, layer: str, geom: BaseGeometry, props: dict[str, Any]) -> int:
        """Append a feature; return its 1-based id (the fid it will get in a new store)."""
        geoms, props_list = self.layers.setdefault(layer, ([], []))
        geoms.append(geom)
        props_list.append(props)
        return len(geoms)


def build_sample(*, seed: int = 20261124, today: dt.date | None = None) -> Sample:
    """Lay out the whole subdistrict in memory (no I/O). Deterministic for a seed and date."""
    rng = np.random.default_rng(seed)
    today = today or dt.date.today()
    frame = Frame.at_seat()
    s = Sample(frame=frame, boundary=shapely.Polygon(), today=today)

    v_lo, v_hi = -1300.0, 1500.0
    u_lo, u_hi = -1700.0, 1650.0
    ns = [_ns_line(u0, k, v_lo, v_hi) for _, u0, k in _NS_ROADS]
    ew = [_ew_line(v0, k, u_lo, u_hi) for _, v0, k in _EW_ROADS]
    blocks = {(c, r): _quad(ns[c], ns[c + 1], ew[r], ew[r + 1]) for c in range(4) for r in range(4)}
    boundary = shapely.union_all(list(blocks.values()))
    s.boundary = boundary

    # ---- roads: arterials clipped to the subdistrict, planned sections flagged
    seat_v = 20.0
    for (name, _u0, _k), line in zip(_NS_ROADS, ns, strict=True):
        part = line.intersection(boundary.buffer(1.0))
        if name == "峨眉路":
            north = shapely.box(-5000, 650 - 0.02 * 700, 5000, 5000)
            existing = part.difference(north)
            planned = part.intersection(north)
            s.add("roads", existing, _road(name, "arterial", "existing"))
            s.add("roads", planned, _road("峨眉路北延", "arterial", "planned"))
        else:
            s.add("roads", part, _road(name, "arterial", "existing"))
    for (name, _v0, _k), line in zip(_EW_ROADS, ew, strict=True):
        part = line.intersection(boundary.buffer(1.0))
        if name == "中心路":
            west = shapely.box(-5000, -5000, -750 + 0.035 * seat_v, 5000)
            s.add("roads", part.difference(west), _road(name, "arterial", "existing"))
            s.add("roads", part.intersection(west), _road("中心路西段打通", "arterial", "planned"))
        else:
            cls = "secondary" if name == "北环路" else "arterial"
            s.add("roads", part, _road(name, cls, "existing"))

    # ---- zones, communities, grids
    zone_ids = {z: i + 1 for i, z in enumerate(_ZONES)}
    comm_ids = {c: i + 1 for i, c in enumerate(_COMMUNITIES)}
    comm_blocks: dict[str, list[tuple[int, int]]] = {c: [] for c in _COMMUNITIES}
    for key, (_z, c) in sorted(_PLAN.items()):
        comm_blocks[c].append(key)
    comm_geoms = {c: shapely.union_all([blocks[k] for k in comm_blocks[c]]) for c in _COMMUNITIES}
    for z in _ZONES:
        members = [c for c in _COMMUNITIES if _COMMUNITY_ZONE[c] == z]
        s.add(
            "zones",
            shapely.MultiPolygon([shapely.union_all([comm_geoms[c] for c in members])]),
            {
                "name": f"{z}联合片区",
                "party_committee": f"{z}联合片区党委",
                "community_ids": [str(comm_ids[c]) for c in members],
            },
        )
    for c in _COMMUNITIES:
        code = f"410106001{comm_ids[c]:03d}"
        s.add(
            "communities",
            shapely.MultiPolygon([comm_geoms[c]]),
            {
                "name": f"{c}社区",
                "code": code,
                "zone_id": zone_ids[_COMMUNITY_ZONE[c]],
                "office_address": f"上街区{c}社区服务中心",
                "phone": f"0371-0000{comm_ids[c]:04d}",
            },
        )

    grid_rows: list[tuple[str, int, shapely.Polygon]] = []  # community, seq, polygon
    seq_in_comm: dict[str, int] = {c: 0 for c in _COMMUNITIES}
    lane_no: dict[str, int] = {c: 0 for c in _COMMUNITIES}
    for key in sorted(blocks, key=lambda k: (comm_ids[_PLAN[k][1]], k[1], k[0])):
        c = _PLAN[key][1]
        parts, cuts = _split(blocks[key], 3 if key in _THREE_GRIDS else 2)
        for cut in cuts:
            lane_no[c] += 1
            s.add("roads", cut, _road(f"{c}{_cn(lane_no[c])}巷", "lane", "existing"))
        for poly in parts:
            seq_in_comm[c] += 1
            grid_rows.append((c, seq_in_comm[c], shapely.Polygon(poly.exterior)))

    grid_targets = rng.integers(300, 501, size=len(grid_rows))
    grid_targets = np.round(grid_targets * (15_000 / grid_targets.sum())).astype(int)
    grid_targets = np.clip(grid_targets, 300, 500)
    for gi, (c, seq, poly) in enumerate(grid_rows):
        worker = synthetic_name(rng)
        s.add(
            "grids",
            poly,
            {
                "code": f"410106001{comm_ids[c]:03d}{seq:02d}",
                "name": f"{c}社区第{seq}网格",
                "community_id": comm_ids[c],
                "worker_id": f"W{gi + 1:03d}",
                "worker_name": worker,
                "worker_phone": f"0371-0000{5000 + gi + 1:04d}",
                "target_households": int(grid_targets[gi]),
            },
        )

    # ---- old neighbourhoods: southern part of eight grids outside the village
    old_grids = [
        gi for gi in rng.permutation(len(grid_rows)).tolist() if grid_rows[gi][0] not in _VILLAGE
    ][: len(_OLD_NEIGHBOURHOODS)]
    old_of_grid: dict[int, tuple[int, BaseGeometry]] = {}
    statuses = [
        "planned",
        "planned",
        "approved",
        "approved",
        "in_progress",
        "in_progress",
        "accepted",
        "planned",
    ]
    for k, gi in enumerate(old_grids):
        poly = grid_rows[gi][2].buffer(-14.0)
        minx, miny, maxx, maxy = poly.bounds
        area = poly.intersection(shapely.box(minx, miny, maxx, miny + (maxy - miny) * 0.55))
        area = shapely.Polygon(area.exterior) if area.geom_type == "Polygon" else area.convex_hull
        start = dt.date(today.year + (k % 3) - 1, 3 + (k % 6), 1)
        built = int(rng.integers(1978, 1996))
        nid = s.add(
            "old_neighbourhoods",
            area,
            {
                "name": _OLD_NEIGHBOURHOODS[k],
                "built_year": built,
                "households": 0,
                "renovation_status": statuses[k],
                "planned_start": start.isoformat(),
                "planned_end": dt.date(start.year + 1, start.month, 1).isoformat(),
                "budget_wan": float(round(rng.uniform(300, 2400), 1)),
                "works": sorted(
                    rng.choice(
                        list(RENOVATION_WORKS),
                        size=int(rng.integers(3, 7)),
                        replace=False,
                    ).tolist()
                ),
            },
        )
        old_of_grid[gi] = (nid, area)

    # ---- buildings and households
    hh_count = 0
    birth_base = dt.date(1930, 1, 1)
    courtyards: set[str] = set()
    for gi, (c, seq, poly) in enumerate(grid_rows):
        village = c in _VILLAGE
        target = int(grid_targets[gi])
        inner = poly.buffer(-16.0 if not village else -10.0)
        slots = _building_slots(inner, village)
        if village:
            floors, units, per_floor = 3, 1, 2
        else:
            newer = c in ("盛世", "如意")
            floors = int(rng.choice([11, 18])) if newer and rng.random() < 0.5 else 6
            units, per_floor = 3, 2
        per_building = floors * units * per_floor
        needed = math.ceil(target / per_building)
        if needed > len(slots):
            msg = f"grid {c}{seq}: {needed} buildings needed, room for {len(slots)}"
            raise IntegrityError(msg)
        stride = len(slots) / needed
        chosen = [slots[int(i * stride)] for i in range(needed)]
        left = target
        old = old_of_grid.get(gi)
        rows_y = sorted({round(fp.bounds[1], 3) for fp in chosen})
        for k, y in enumerate(rows_y):
            gx0, _gy0, gx1, _gy1 = poly.bounds
            path = shapely.LineString([(gx0 - 10, y - 4.0), (gx1 + 10, y - 4.0)]).intersection(poly)
            if path.geom_type == "LineString" and path.length > 20:
                s.add(
                    "roads",
                    path,
                    {**_road(f"{c}社区第{seq}网格{k + 1}号通道", "footpath", "existing")},
                )
        for bi, fp in enumerate(chosen):
            n_here = min(per_building, left)
            left -= n_here
            in_old = old is not None and old[1].contains(fp.centroid)
            built = (
                int(rng.integers(1980, 1996))
                if in_old
                else int(rng.integers(1990, 2021))
                if not village
                else int(rng.integers(1985, 2012))
            )
            minx, miny, maxx, maxy = fp.bounds
            entrance = ((minx + maxx) / 2, miny + 0.5)
            street = _NS_ROADS[min(3, int((fp.centroid.x + 1500) // 725))][0]
            number = seq * 10 + bi + 1
            while f"{street}{number}号院" in courtyards:  # one courtyard, one number
                number += 100
            address = f"{c}村{seq}组{bi + 1}号" if village else f"{street}{number}号院{bi + 1}号楼"
            courtyards.add(f"{street}{number}号院")
            bid = s.add(
                "buildings",
                fp,
                {
                    "address": address,
                    "neighbourhood_id": old[0] if in_old else None,
                    "floors": floors,
                    "units": units,
                    "built_year": built,
                    "_entrance": entrance,
                    "_grid": gi + 1,
                },
            )
            if in_old:
                s.layers["old_neighbourhoods"][1][old[0] - 1]["households"] += n_here
            unit_w = (maxx - minx) / units
            for h in range(n_here):
                unit = h // (floors * per_floor)
                floor = (h // per_floor) % floors + 1
                door = h % per_floor + 1
                x = minx + unit_w * (unit + 0.5) + (door - 1.5) * 3.0
                y = miny + 1.5 + floor * ((maxy - miny - 3.0) / (floors + 1))
                room = f"{floor}0{door}室" if village else f"{unit + 1}单元{floor}0{door}室"
                birth = birth_base + dt.timedelta(days=int(rng.integers(0, 365 * 75)))
                s.add(
                    "households",
                    shapely.Point(x, y),
                    {
                        "building_id": bid,
                        "room": room,
                        "head_name": synthetic_name(rng),
                        "phone": synthetic_phone(rng),
                        "_birth": birth,
                        "members": int(rng.choice([1, 2, 2, 3, 3, 3, 4, 4, 5, 6])),
                        "tags": [],
                        "last_visit_at": None,
                        "last_visit_status": None,
                        "_grid": gi + 1,
                        "_community": c,
                    },
                )
                hh_count += 1

    _assign_tags(s, rng, today)
    _visit_ledger(s, rng, today)
    _place_facilities(s, rng, grid_rows, comm_geoms, comm_ids, ew, ns, today)
    return s


def _road(name: str, cls: str, status: str) -> dict[str, Any]:
    return {
        "name": name,
        "road_class": cls,
        "walkable": True,
        "oneway": False,
        "status": status,
    }


def _cn(n: int) -> str:
    digits = "零一二三四五六七八九十"
    return digits[n] if n <= 10 else f"十{digits[n - 10]}"


def _building_slots(inner: BaseGeometry, village: bool) -> list[shapely.Polygon]:
    """Candidate footprints in rows (south-facing slabs, or village houses) inside ``inner``."""
    if inner.is_empty:
        return []
    minx, miny, maxx, maxy = inner.bounds
    if village:
        w, d, gap_x, pitch_y = 12.0, 10.0, 4.0, 16.0
    else:
        w, d, gap_x, pitch_y = 42.0, 12.0, 14.0, 34.0
    shapely.prepare(inner)
    out = []
    y = miny
    while y + d <= maxy:
        x = minx
        while x + w <= maxx:
            fp = shapely.box(x, y, x + w, y + d)
            if inner.contains(fp):
                out.append(fp)
            x += w + gap_x
        y += pitch_y
    return out


def _assign_tags(s: Sample, rng: np.random.Generator, today: dt.date) -> None:
    """Tags in realistic proportions, visits over the last two months, ages, ID numbers."""
    props = s.layers["households"][1]
    n = len(props)
    order = rng.permutation(n)
    # 186 hardship households with a heating subsidy, plus hardship without one.
    hardship = order[:240]
    for i in hardship[:186]:
        props[i]["tags"] += ["hardship", "heating_subsidy"]
    for i in hardship[186:]:
        props[i]["tags"].append("hardship")
    village = np.array([p["_community"] in _VILLAGE for p in props])
    ruyi = np.array([p["_community"] == "如意" for p in props])
    vill_idx = rng.permutation(np.flatnonzero(village))
    other_idx = rng.permutation(np.flatnonzero(~village))
    for i in np.concatenate([vill_idx[:96], other_idx[:24]]):
        props[i]["tags"].append("coal_user")
    ruyi_idx = rng.permutation(np.flatnonzero(ruyi))
    not_ruyi = rng.permutation(np.flatnonzero(~ruyi))
    for i in np.concatenate([ruyi_idx[:63], not_ruyi[:27]]):
        props[i]["tags"].append("overseas_family")
    rest = rng.permutation(n)
    for i in rest[:600]:
        props[i]["tags"].append("elderly_alone")
        props[i]["members"] = 1
        props[i]["_birth"] = dt.date(int(rng.integers(1930, 1957)), int(rng.integers(1, 13)), 1)
    for i in rest[600:975]:
        props[i]["tags"].append("disabled")
    for i in rest[975:1005]:
        props[i]["tags"].append("key_person")
    statuses = ["visited"] * 14 + ["not_home"] * 4 + ["refused", "follow_up"]
    used: set[str] = set()
    for p in props:
        p["tags"] = sorted(set(p["tags"]))
        birth: dt.date = p.pop("_birth")
        p["id_number"] = _unique(synthetic_id_number(rng, birth), used)
        if rng.random() < 0.72:
            days = int(rng.integers(0, 60))
            t = dt.datetime.combine(today - dt.timedelta(days=days), dt.time(9, 0)) + dt.timedelta(
                minutes=int(rng.integers(0, 540))
            )
            p["last_visit_at"] = t.isoformat()
            p["last_visit_status"] = statuses[int(rng.integers(len(statuses)))]


AUTUMN_DAYS = 60
"""The sample's past campaign: the last 60 days, whose ledger the households' visits follow."""
_NOTES = {
    "not_home": ("敲门无人，已留联系卡", "家中无人，邻居称白天上班", None),
    "refused": ("不愿登记，已说明政策", None),
    "follow_up": ("反映楼道照明损坏，需跟进", "咨询取暖补贴申领，需回访", None),
}


def _visit_ledger(s: Sample, rng: np.random.Generator, today: dt.date) -> None:
    """The ledger of the sample's autumn campaign: each household's last visit, and for
    some a not-home attempt a few days before it."""
    geoms, props = s.layers["households"]
    workers = {i + 1: p["worker_id"] for i, p in enumerate(s.layers["grids"][1])}
    start = today - dt.timedelta(days=AUTUMN_DAYS - 1)
    for fid, (g, p) in enumerate(zip(geoms, props, strict=True), start=1):
        if p.get("last_visit_at") is None:
            continue
        last = dt.datetime.fromisoformat(p["last_visit_at"])
        entries = [(last, p["last_visit_status"])]
        earlier = last - dt.timedelta(days=int(rng.integers(1, 8)), hours=int(rng.integers(0, 3)))
        if rng.random() < 0.25 and earlier.date() >= start:
            entries.insert(0, (earlier, "not_home"))
        for when, outcome in entries:
            notes = _NOTES.get(outcome, (None,))
            s.add(
                "visits",
                g,
                {
                    "household_id": fid,
                    "campaign_id": 1,
                    "visited_at": when.isoformat(),
                    "outcome": outcome,
                    "worker": workers.get(p["_grid"]),
                    "note": notes[int(rng.integers(len(notes)))],
                    "client_key": None,
                    "recorded_at": when.isoformat(),
                },
            )


def _place_facilities(  # type: ignore[no-untyped-def]
    s: Sample, rng, grid_rows, comm_geoms, comm_ids, ew, ns, today: dt.date
) -> None:
    """Toilets, cameras and service sites along the streets and in the communities."""
    boundary = s.boundary
    # Toilets: existing ones cluster along the older streets; three planned fill the gaps.
    existing = [
        (-1100, -700),
        (-400, -1000),
        (300, -380),
        (1000, -700),
        (-1420, 300),
        (-760, 350),
        (-60, 60),
        (600, 30),
        (-300, 640),
        (1000, 640),
        (-1100, 1000),
        (1380, -200),
    ]
    for k, (u, v) in enumerate(existing):
        p = shapely.Point(u + 8, v + 8)
        s.add(
            "toilets",
            p,
            {
                "name": f"第{k + 1}号公厕",
                "status": "existing",
                "grade": ["I", "II", "II", "III"][k % 4],
                "open_hours": "06:00-22:00" if k % 3 else "24小时",
                "accessible": bool(k % 2 == 0),
                "units": int(rng.integers(6, 17)),
            },
        )
    for k, (u, v) in enumerate([(1000, 1000), (300, 1000), (-1100, -250)]):
        s.add(
            "toilets",
            shapely.Point(u, v),
            {
                "name": f"规划公厕{k + 1}（厕所革命）",
                "status": "planned",
                "grade": "II",
                "open_hours": "06:00-22:00",
                "accessible": True,
                "units": 10,
            },
        )
    # Cameras: at road crossings (looking along each arm), along the streets, in compounds.
    cam = 0
    for a in ns:
        for b in ew:
            x = shapely.intersection(a, b)
            if not boundary.buffer(1).covers(x):
                continue
            for direction in rng.choice([0, 90, 180, 270], size=3, replace=False):
                cam += 1
                s.add(
                    "cameras",
                    shapely.Point(x.x + 6, x.y + 6),
                    _camera(cam, rng, float(direction), "路口"),
                )
    for line in list(ns) + list(ew):
        part = line.intersection(boundary.buffer(1.0))
        if part.is_empty:
            continue
        for t in np.arange(180, part.length - 100, 260):
            pt = shapely.line_interpolate_point(shapely.line_merge(part), t)
            cam += 1
            heading = _heading(line)
            s.add(
                "cameras",
                shapely.Point(pt.x + 5, pt.y + 5),
                _camera(cam, rng, float((heading + rng.choice([0, 180])) % 360), "沿街"),
            )
    while cam < 150:
        gi = int(rng.integers(len(grid_rows)))
        poly = grid_rows[gi][2].buffer(-12)
        minx, miny, maxx, maxy = poly.bounds
        pt = shapely.Point(rng.uniform(minx, maxx), rng.uniform(miny, maxy))
        if poly.contains(pt):
            cam += 1
            s.add("cameras", pt, _camera(cam, rng, float(rng.uniform(0, 360)), "小区"))
    # Service sites.
    centre = shapely.Point(30, 60)
    sites = [
        ("中心路街道矛盾纠纷调处化解中心", "mediation_room", "subdistrict", centre, None),
        ("中心路街道社会心理服务中心", "psych_service", "subdistrict", shapely.Point(60, 60), None),
        (
            "中心路街道居家养老服务中心",
            "elderly_care",
            "subdistrict",
            shapely.Point(90, 100),
            1200.0,
        ),
        ("中心路街道党群服务中心", "party_service", "subdistrict", shapely.Point(30, 100), None),
    ]
    for c in _COMMUNITIES:
        pt = comm_geoms[c].representative_point()
        sites += [
            (f"{c}社区矛盾纠纷调处化解工作室", "mediation_room", "community", pt, None),
            (
                f"{c}社区社会心理服务工作室",
                "psych_service",
                "community",
                shapely.Point(pt.x + 25, pt.y),
                None,
            ),
            (
                f"{c}社区服务站",
                "community_office",
                "community",
                shapely.Point(pt.x, pt.y + 25),
                None,
            ),
        ]
    extra = 15 - sum(1 for x in sites if x[1] == "mediation_room")
    for k in range(extra):
        gi = (k * 7 + 3) % len(grid_rows)
        pt = grid_rows[gi][2].representative_point()
        sites.append(
            (
                f"{grid_rows[gi][0]}社区第{grid_rows[gi][1]}网格调解室",
                "mediation_room",
                "community",
                shapely.Point(pt.x + 10, pt.y - 10),
                None,
            )
        )
    for k, c in enumerate(["如意", "鸿园", "颐苑"]):
        pt = comm_geoms[c].representative_point()
        sites.append(
            (
                f"{c}社区卫生服务站",
                "health_station",
                "community",
                shapely.Point(pt.x - 25, pt.y + 5 * k),
                None,
            )
        )
    for name, kind, level, pt, area in sites:
        s.add(
            "facilities",
            pt,
            {
                "name": name,
                "kind": kind,
                "level": level,
                "address": f"上街区{name[:2]}",
                "hours": "08:30-17:30",
                "area_m2": area if area is not None else float(rng.integers(40, 300)),
            },
        )


def _heading(line: BaseGeometry) -> float:
    (x0, y0), (x1, y1) = line.coords[0], line.coords[-1]
    return (math.degrees(math.atan2(x1 - x0, y1 - y0)) + 360) % 360


def _camera(k: int, rng: np.random.Generator, direction: float, where: str) -> dict[str, Any]:
    kind = str(rng.choice(["bullet", "bullet", "dome", "ptz"]))
    fov = {"bullet": 60.0, "dome": 90.0, "ptz": 360.0}[kind]
    rng_m = {"bullet": 80.0, "dome": 50.0, "ptz": 120.0}[kind]
    return {
        "name": f"天网{where}点位{k:03d}",
        "kind": kind,
        "direction_deg": round(direction % 360, 1),
        "fov_deg": fov,
        "range_m": rng_m,
        "status": "online" if rng.random() < 0.92 else "offline",
        "installed_at": dt.date(
            2015 + int(rng.integers(0, 10)), int(rng.integers(1, 13)), 1
        ).isoformat(),
    }


ORDER = [
    "zones",
    "communities",
    "grids",
    "roads",
    "old_neighbourhoods",
    "buildings",
    "households",
    "toilets",
    "cameras",
    "facilities",
    "visits",
]


def autumn_campaign(store: FeatureStore, today: dt.date) -> None:
    from gridmap import campaigns

    c = campaigns.create(
        store,
        name=f"{today.year}年秋季常态化入户走访",
        starts=today - dt.timedelta(days=AUTUMN_DAYS - 1),
        ends=today,
        by="sample",
    )
    if c.id != 1:
        raise IntegrityError("the sample's campaign must be the store's first document")


def write_sample(sample: Sample, path: str | Path, *, step: Step | None = None) -> FeatureStore:
    """Write a built sample to a new GeoPackage, then check its integrity (raises if broken)."""
    frame = sample.frame
    service_area = frame.to_wgs84([sample.boundary.buffer(30.0)])[0]
    store = create_store(path, service_area=service_area)
    try:
        store.set_meta(SYNTHETIC, "true")  # invented people: identifiers nobody can own
        for layer in ORDER:
            geoms, clean = layer_rows(sample, layer)
            total = len(clean)
            if step:
                step(layer, 0, total)
            if layer == "visits":  # the ledger's campaign is document 1
                autumn_campaign(store, sample.today)
            store.insert(
                layer,
                geoms,
                clean,
                progress=(lambda done, _l=layer, _t=total: step(_l, done, _t)) if step else None,
                trusted=layer == "visits",  # the ledger's worker and recording time
            )
        problems = check_store(store)
        if problems:
            msg = "sample integrity check failed:\n  " + "\n  ".join(problems[:20])
            raise IntegrityError(msg)
        store.set_meta("subdistrict", "中心路街道")
        store.set_meta("district", "上街区")
        store.set_meta("built_at", dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    except BaseException:
        store.close()
        Path(path).unlink(missing_ok=True)
        for suffix in ("-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
        raise
    return store


def layer_rows(
    sample: Sample, layer: str, shift: tuple[float, float] = (0.0, 0.0)
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """One layer of a built sample as stored: WGS84 geometries (moved ``shift`` metres east
    and north first) and properties without the builder's private keys (an ``_entrance``
    becomes ``entrance_lon``/``entrance_lat``)."""
    frame = sample.frame
    dx, dy = shift
    geoms_local, props = sample.layers[layer]
    offset = np.array([dx, dy])
    moved = shapely.transform(np.asarray(geoms_local, dtype=object), lambda c: c + offset)
    clean = []
    for p in props:
        q = {k: v for k, v in p.items() if not k.startswith("_")}
        if "_entrance" in p:
            ex, ey = shapely.Point(p["_entrance"]).coords[0]
            e = frame.to_wgs84([shapely.Point(ex + dx, ey + dy)])[0]
            q["entrance_lon"] = round(e.x, 7)
            q["entrance_lat"] = round(e.y, 7)
        clean.append(q)
    return frame.to_wgs84(moved), clean


def build_demo(
    path: str | Path,
    *,
    seed: int = 20261124,
    today: dt.date | None = None,
    step: Step | None = None,
) -> FeatureStore:
    """Build the sample subdistrict into a new GeoPackage at ``path`` and return the store."""
    if step:
        step("layout", 0, 1)
    sample = build_sample(seed=seed, today=today)
    if step:
        step("layout", 1, 1)
    district = district_boundary_wgs84()
    inside = sample.frame.from_wgs84([district])[0]
    if not inside.buffer(-20).contains(sample.boundary):
        msg = "the sample layout does not lie inside the 上街区 boundary"
        raise IntegrityError(msg)
    return write_sample(sample, path, step=step)


__all__ = [
    "ORDER",
    "Frame",
    "Sample",
    "autumn_campaign",
    "build_demo",
    "build_sample",
    "district_boundary_wgs84",
    "layer_rows",
    "write_sample",
]
