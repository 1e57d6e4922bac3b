"""Small-cell protection holds: an attacker with the planner's responses recovers no hidden count.

The attacker is written here, independently of gridmap.disclosure: it reads the planner's
statistics at every level, the public hierarchy (grids → communities → zones), and
solves linear programs over everything it knows — sums between levels, the ranges the
markers imply, visit coverage × households, and that no tag or visit count exceeds the
households of its area — for the smallest and largest value of every hidden count.
"""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from scipy.optimize import linprog

from gridmap.disclosure import SMALL, WITHHELD, Table, protect

LEVELS = ("grids", "communities", "zones")
WINDOWS = (7, 30, 90, 180, 365)


def _published(client: TestClient, headers: dict[str, str]) -> dict[tuple[str, int], Any]:
    """Every figure a role gets from /stats, per area: all levels, every visit window."""
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for level in LEVELS:
        for days in WINDOWS:
            r = client.get(f"/stats/{level}?days={days}", headers=headers)
            assert r.status_code == 200
            for row in r.json()["areas"]:
                cell = out.setdefault((level, row["id"]), {})
                cell["households"] = row["households"]
                cell["population"] = row["population"]
                cell.update({f"tag:{t}": v for t, v in row["tags"].items()})
                cell[f"visited:{days}"] = row[f"visited_last_{days}_days"]
                cell[f"coverage:{days}"] = row["visit_coverage"]
    return out


def _counts(figures: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in figures.items() if not k.startswith("coverage:")}


def _hierarchy(client: TestClient) -> list[tuple[tuple[str, int], list[tuple[str, int]]]]:
    """Sums between levels, from the public layers (what anyone can read)."""
    kids: dict[tuple[str, int], list[tuple[str, int]]] = {}
    grids = client.get("/collections/grids/items?limit=1000").json()["features"]
    comms = client.get("/collections/communities/items?limit=1000").json()["features"]
    for g in grids:
        kids.setdefault(("communities", g["properties"]["community_id"]), []).append(
            ("grids", g["id"])
        )
    for c in comms:
        kids.setdefault(("zones", c["properties"]["zone_id"]), []).append(("communities", c["id"]))
    return list(kids.items())


def attack(
    rows: dict[tuple[str, int], Any], equations: list[Any]
) -> dict[tuple[tuple[str, int], str], tuple[float, float]]:
    """The feasible range of every hidden count, over all measures and windows at once:
    sums between levels, the markers' ranges, tags and visits at most the households,
    shorter windows at most longer ones, coverage × households = visits."""
    cells = sorted(rows)
    measures = list(_counts(next(iter(rows.values()))))
    var: dict[tuple[tuple[str, int], str], int] = {}
    bounds: list[tuple[float, float | None]] = []
    known: dict[tuple[tuple[str, int], str], float] = {}
    for c in cells:
        for m, v in _counts(rows[c]).items():
            if isinstance(v, int):
                known[(c, m)] = v
            else:
                var[(c, m)] = len(bounds)
                bounds.append((1.0, 4.0) if v == "<5" else (1.0, None))
    n = len(bounds)

    def term(c: Any, m: str) -> tuple[np.ndarray, float]:
        row = np.zeros(n)
        if (c, m) in var:
            row[var[(c, m)]] = 1.0
            return row, 0.0
        return row, known[(c, m)]

    a_eq, b_eq, a_ub, b_ub = [], [], [], []

    def at_most(a: tuple[np.ndarray, float], b: tuple[np.ndarray, float]) -> None:
        if (a[0] - b[0]).any():  # a ≤ b
            a_ub.append(a[0] - b[0])
            b_ub.append(b[1] - a[1])

    for parent, children in equations:
        for m in measures:
            row, const = term(parent, m)
            for ch in children:
                r, k = term(ch, m)
                row, const = row - r, const - k
            if row.any():
                a_eq.append(row)
                b_eq.append(-const)
    visits = [f"visited:{w}" for w in WINDOWS if f"visited:{w}" in measures]
    for c in cells:
        hh = term(c, "households")
        for m in [m for m in measures if m.startswith("tag:")]:
            at_most(term(c, m), hh)  # no tag count exceeds the households
        for a, b in itertools.pairwise(visits):
            at_most(term(c, a), term(c, b))  # a shorter window holds no more visits
        at_most(term(c, visits[-1]), hh)
        for w in WINDOWS:  # coverage × households = visited (rounded to 4 places)
            cov = rows[c].get(f"coverage:{w}")
            if cov is None:
                continue
            v, vk = term(c, f"visited:{w}")
            row = v - cov * hh[0]
            if row.any():
                for sign in (1, -1):
                    a_ub.append(sign * row)
                    b_ub.append(sign * (cov * hh[1] - vk) + 0.5)  # 4 decimals, households < 10⁴
    out = {}
    for key, j in var.items():
        ends = []
        for sign in (1.0, -1.0):
            obj = np.zeros(n)
            obj[j] = sign
            res = linprog(
                obj,
                A_eq=np.array(a_eq) if a_eq else None,
                b_eq=np.array(b_eq) if b_eq else None,
                A_ub=np.array(a_ub) if a_ub else None,
                b_ub=np.array(b_ub) if b_ub else None,
                bounds=bounds,
                method="highs",
            )
            ends.append(float("inf") if res.status == 3 else sign * float(res.fun))
        out[key] = (ends[0], ends[1])
    return out


def test_planner_cannot_recover_any_hidden_count(
    client: TestClient, auth: dict[str, dict[str, str]]
) -> None:
    planner = _published(client, auth["planner"])
    truth = _published(client, auth["subdistrict_admin"])
    equations = _hierarchy(client)
    ranges = attack(planner, equations)
    hidden = {k: planner[k[0]] for k in ranges}
    assert len(hidden) > 50  # there is something to protect
    recovered = []
    for (cell, m), (lo, hi) in ranges.items():
        true = truth[cell][m]
        assert lo - 1e-6 <= true <= hi + 1e-6, (cell, m)  # the attack model is sound
        if hi - lo < 1 - 1e-6:
            recovered.append((cell, m, true))
    assert recovered == []
    # published figures are exact, and coverage shows only where both its counts show
    for cell, row in planner.items():
        for m, v in _counts(row).items():
            if isinstance(v, int):
                assert v == truth[cell][m]
        for w in WINDOWS:
            if row[f"coverage:{w}"] is not None:
                assert isinstance(row["households"], int) and isinstance(row[f"visited:{w}"], int)


def test_planner_windows_are_fixed(client: TestClient, auth: dict[str, dict[str, str]]) -> None:
    """Nearby windows would tell the visits of one day by difference."""
    assert client.get("/stats/grids?days=29", headers=auth["planner"]).status_code == 400
    assert client.get("/stats/grids?days=90", headers=auth["planner"]).status_code == 200
    assert client.get("/stats/grids?days=29", headers=auth["subdistrict_admin"]).status_code == 200


def _sums(rows: dict[str, int]) -> list[tuple[str, list[str]]]:
    return [("C", [k for k in rows if k.startswith("g")])]


@pytest.mark.parametrize(
    ("values", "case"),
    [
        ({"C": 30, "g1": 3, "g2": 12, "g3": 15}, "total minus visible"),
        ({"C": 8, "g1": 4, "g2": 4}, "two small cells that sum to their maximum"),
        ({"C": 4, "g1": 1, "g2": 1, "g3": 1, "g4": 1}, "four ones under a small total"),
        ({"C": 2, "g1": 1, "g2": 1, "g3": 0}, "two ones"),
        ({"C": 9, "g1": 2, "g2": 7, "g3": 0}, "one large sibling"),
    ],
)
def test_protect_frees_every_small_cell(values: dict[str, int], case: str) -> None:
    prot = protect(Table(values, _sums(values)), threshold=5)
    shown = {c: prot.shown(c, v, 5) for c, v in values.items()}
    unknown = [c for c, v in shown.items() if not isinstance(v, int)]
    # brute force over every table consistent with what is shown
    grids = [c for c in values if c.startswith("g")]
    ranges: dict[str, set[int]] = {c: set() for c in unknown}
    domain = {
        c: [shown[c]]
        if isinstance(shown[c], int)
        else range(1, 5)
        if shown[c] == "<5"
        else range(1, 40)
        for c in values
    }
    import itertools

    for combo in itertools.product(*(domain[c] for c in grids)):
        total = sum(combo)
        if total in domain["C"]:
            for c, v in [*zip(grids, combo, strict=True), ("C", total)]:
                if c in ranges:
                    ranges[c].add(v)
    for c, v in values.items():
        if 0 < v < 5:
            assert c in ranges and len(ranges[c]) > 1, (case, c, shown)
    assert all(shown[c] == v for c, v in values.items() if v == 0)
    assert {prot.hidden.get(c) for c in unknown} <= {SMALL, WITHHELD}


def test_complementary_choice_does_not_follow_the_counts() -> None:
    """An attacker who knows the algorithm learns nothing from which count was withheld:
    were it always the smallest, an "x" would be bounded by its published neighbours (the
    review recovered 10 of 41 suppressed groups that way)."""
    import random

    rng = random.Random(7)
    smallest = chosen = differ = 0
    for _ in range(300):
        kids = [f"g{i}" for i in range(5)]
        values = {k: rng.randint(5, 40) for k in kids}
        values["g0"] = rng.randint(1, 4)
        values["C"] = sum(values[k] for k in kids)
        table = Table(values, [("C", kids)])
        prot = protect(table, threshold=5, key=b"one")
        again = protect(table, threshold=5, key=b"one")
        other = protect(table, threshold=5, key=b"two")
        assert prot == again  # the same table is always protected the same way
        differ += prot != other
        extra = [c for c, how in prot.hidden.items() if how == WITHHELD and values[c] >= 5]
        candidates = [c for c in (*kids, "C") if values[c] >= 5]
        if extra:
            chosen += 1
            smallest += extra[0] == min(candidates, key=values.__getitem__)
    assert chosen > 250
    assert smallest / chosen < 0.4  # about 1 in 5 by chance
    assert differ > 100  # another key, another choice


def test_full_coverage_does_not_give_a_hidden_visit_count_away(edit_path) -> None:  # type: ignore[no-untyped-def]
    """The review's case: four grids all visited, a fifth with exactly 4 visits. "Visits at
    most households" plus the sums pinned it when each measure was protected alone."""
    from api.app import create_app
    from gridmap.settings import Settings
    from tests.conftest import REFERENCE_DATE, raw_sql, tokens_for

    when = (REFERENCE_DATE - dt.timedelta(days=200)).isoformat() + "T10:00:00"
    raw_sql(edit_path, "UPDATE households SET last_visit_status = NULL, last_visit_at = NULL")
    raw_sql(
        edit_path,
        "UPDATE households SET last_visit_status = 'visited', last_visit_at = ? "
        "WHERE grid_id IN (37, 38, 39, 40)",
        when,
    )
    raw_sql(
        edit_path,
        "UPDATE households SET last_visit_status = 'visited', last_visit_at = ? WHERE fid IN "
        "(SELECT fid FROM households WHERE grid_id = 36 ORDER BY fid LIMIT 4)",
        when,
    )
    auth = tokens_for(edit_path)
    app = create_app(Settings(database=str(edit_path), household_reads_per_minute=10**6))
    with TestClient(app) as c:
        planner = _published(c, auth["planner"])
        truth = _published(c, auth["subdistrict_admin"])
        ranges = attack(planner, _hierarchy(c))
    assert truth[("grids", 36)]["visited:365"] == 4
    assert planner[("grids", 36)]["visited:365"] == "<5"
    pinned = [(k, r) for k, r in ranges.items() if r[1] - r[0] < 1 - 1e-6]
    assert pinned == []
