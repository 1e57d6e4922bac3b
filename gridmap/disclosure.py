"""Small-cell protection of hierarchical counts (grid ⊂ community ⊂ zone) for roles that see
statistics but not households.

Primary suppression hides every count from 1 to ``threshold − 1`` (shown as ``"<5"``).
That alone does not hold: a community's total minus its grids' visible counts gives a
hidden grid back. Complementary suppression therefore withholds further counts (shown as
``"x"``) until an attacker who knows every published count, every sum relation of the
hierarchy and the ranges the markers imply (a ``"<5"`` cell lies in 1..4, an ``"x"``
cell is at least ``threshold``) still cannot work out any hidden count exactly. Each
candidate table is audited with linear programs (HiGHS through SciPy): for every hidden
cell, its smallest and largest feasible value. The constraint matrix of a hierarchy of
sums is totally unimodular, so the linear bounds are the integer bounds.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linprog

Cell = Hashable
Equation = tuple[Cell, Sequence[Cell]]
"""A parent cell and the child cells whose counts sum to it."""

SMALL = "small"
"""A count from 1 to threshold − 1, shown as ``"<5"``: an attacker knows it lies there."""
WITHHELD = "withheld"
"""Any other withheld count, shown as ``"x"``: an attacker knows only that it is positive."""


@dataclass(frozen=True)
class Protected:
    """Which cells of one measure are withheld, and how they are shown."""

    hidden: Mapping[Cell, str]

    def shown(self, cell: Cell, value: int, threshold: int) -> int | str:
        """What a protected table publishes for ``cell``."""
        how = self.hidden.get(cell)
        if how == SMALL:
            return f"<{threshold}"
        if how == WITHHELD:
            return "x"
        return value


def feasible_range(
    cell: Cell,
    values: Mapping[Cell, int],
    equations: Sequence[Equation],
    hidden: Mapping[Cell, str],
    threshold: int,
) -> tuple[float, float]:
    """The smallest and largest value of a hidden ``cell`` consistent with what is published.

    Published cells are fixed; a SMALL cell lies in ``1..threshold−1``, a WITHHELD cell is
    at least 1 (zeros are always published).
    """
    unknown = sorted(hidden, key=repr)
    col = {c: i for i, c in enumerate(unknown)}
    rows: list[np.ndarray] = []
    rhs: list[float] = []
    for parent, children in equations:
        terms = [(parent, 1.0), *((c, -1.0) for c in children)]
        if not any(c in col for c, _ in terms):
            continue
        row = np.zeros(len(unknown))
        b = 0.0
        for c, sign in terms:
            if c in col:
                row[col[c]] += sign
            else:
                b -= sign * values.get(c, 0)
        rows.append(row)
        rhs.append(b)
    bounds = [(1.0, float(threshold - 1)) if hidden[c] == SMALL else (1.0, None) for c in unknown]
    a_eq = np.array(rows) if rows else None
    b_eq = np.array(rhs) if rows else None
    out = []
    for sign in (1.0, -1.0):
        objective = np.zeros(len(unknown))
        objective[col[cell]] = sign
        res = linprog(objective, A_eq=a_eq, b_eq=b_eq, bounds=bounds, method="highs")
        if res.status == 3:  # unbounded above
            out.append(float("inf"))
            continue
        if res.status != 0:  # a true table is always feasible; count it as pinned
            return (float(values[cell]), float(values[cell]))
        out.append(sign * float(res.fun))
    return out[0], out[1]


def protect(
    values: Mapping[Cell, int],
    equations: Sequence[Equation],
    *,
    threshold: int = 5,
    key: bytes = b"",
) -> Protected:
    """Choose the cells to withhold so that no small count can be worked out exactly.

    Every count in ``1..threshold−1`` is withheld as SMALL. Then, while some withheld count
    is pinned to a single value by what is published, one more published count of at least
    ``threshold`` sharing a sum with it is withheld; where none is left, the small cells of
    those sums are shown as WITHHELD instead (which tells less). Withholding every non-zero
    count is always safe, so this ends.

    Which count is withheld next is decided by a keyed hash of the cell (``key`` is the
    service's secret), never by the counts: were it "the smallest", an ``"x"`` would be
    known to lie below its published neighbours, and a hidden cell could be worked out.
    """
    hidden: dict[Cell, str] = {c: SMALL for c, v in values.items() if 0 < v < threshold}

    def rank(c: Cell) -> bytes:
        return hmac.new(key, repr(c).encode(), hashlib.sha256).digest()

    members: dict[Cell, list[int]] = {}
    for k, (parent, children) in enumerate(equations):
        for c in (parent, *children):
            members.setdefault(c, []).append(k)
    # Withholding more only widens what is feasible, so a cell once free stays free: each
    # withheld cell (small, or withheld to protect one) is checked until it is free.
    done: set[Cell] = set()
    while todo := sorted((c for c in hidden if c not in done), key=repr):
        for cell in todo:
            while _pinned(cell, values, equations, hidden, threshold):
                if not _withhold_more(cell, values, equations, members, hidden, threshold, rank):
                    return Protected(hidden)
            done.add(cell)
    return Protected(hidden)


def _pinned(
    cell: Cell,
    values: Mapping[Cell, int],
    equations: Sequence[Equation],
    hidden: Mapping[Cell, str],
    threshold: int,
) -> bool:
    lo, hi = feasible_range(cell, values, equations, hidden, threshold)
    return hi - lo < 1 - 1e-9


def _withhold_more(
    cell: Cell,
    values: Mapping[Cell, int],
    equations: Sequence[Equation],
    members: Mapping[Cell, list[int]],
    hidden: dict[Cell, str],
    threshold: int,
    rank: Callable[[Cell], bytes],
) -> bool:
    """Withhold one more thing to free ``cell``; False when everything is withheld."""
    extra = _complement_for(cell, values, equations, members, hidden, threshold, rank)
    if extra is not None:
        hidden[extra] = WITHHELD
        return True
    around = {c for k in members.get(cell, []) for c in (equations[k][0], *equations[k][1])}
    relabel = [c for c in sorted(around | {cell}, key=repr) if hidden.get(c) == SMALL]
    if relabel:
        for c in relabel:
            hidden[c] = WITHHELD
        return True
    rest = [c for c, v in values.items() if v > 0 and c not in hidden]
    if rest:
        hidden[min(rest, key=rank)] = WITHHELD
        return True
    for c in hidden:  # every non-zero count withheld and shown alike: nothing can be pinned
        hidden[c] = WITHHELD
    return False


def _complement_for(
    cell: Cell,
    values: Mapping[Cell, int],
    equations: Sequence[Equation],
    members: Mapping[Cell, list[int]],
    hidden: Mapping[Cell, str],
    threshold: int,
    rank: Callable[[Cell], bytes],
) -> Cell | None:
    """The published count to withhold next beside ``cell``: one of at least ``threshold``
    in a sum with ``cell`` (else in a sum with a withheld cell of those), first by ``rank``."""
    ring = [cell]
    seen_eq: set[int] = set()
    for _ in range(3):
        candidates: list[Cell] = []
        nxt: list[Cell] = []
        for c in ring:
            for k in members.get(c, []):
                if k in seen_eq:
                    continue
                seen_eq.add(k)
                parent, children = equations[k]
                for other in (parent, *children):
                    if other in hidden:
                        nxt.append(other)
                    elif values[other] >= threshold:
                        candidates.append(other)
        if candidates:
            return min(candidates, key=rank)
        ring = nxt
    return None
