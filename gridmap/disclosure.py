"""Small-cell protection of counts that are related: sums over a hierarchy (grid ⊂ community ⊂
zone) and orderings between measures (a tag count or a visit count is at most the households
of its area, visits in a shorter window at most those in a longer one), for roles that see
statistics but not households.

Primary suppression hides every count from 1 to ``threshold − 1`` (shown as ``"<5"``).
That alone does not hold: a community's total minus its grids' visible counts gives a
hidden grid back, and so can "visited ≤ households". Complementary suppression therefore
withholds further counts (shown as ``"x"``) until an attacker who knows every published
count, every sum and ordering, and the ranges the markers imply (a ``"<5"`` cell lies in
1..4, an ``"x"`` cell is at least 1) still cannot work out any hidden count exactly. Each
candidate table is audited with linear programs (HiGHS through SciPy): for every hidden
cell, its smallest and largest feasible value, over the hidden cells linked to it. Sums
over a hierarchy and orderings form network-like constraints whose linear bounds are the
integer ones.
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
Order = tuple[Cell, Cell]
"""(a, b): the count of a is at most the count of b."""

SMALL = "small"
"""A count from 1 to threshold − 1, shown as ``"<5"``: an attacker knows it lies there."""
WITHHELD = "withheld"
"""Any other withheld count, shown as ``"x"``: an attacker knows only that it is positive."""


@dataclass(frozen=True)
class Protected:
    """Which cells are withheld, and how they are shown."""

    hidden: Mapping[Cell, str]

    def shown(self, cell: Cell, value: int, threshold: int) -> int | str:
        """What a protected table publishes for ``cell``."""
        how = self.hidden.get(cell)
        if how == SMALL:
            return f"<{threshold}"
        if how == WITHHELD:
            return "x"
        return value


@dataclass(frozen=True)
class Table:
    """Counts and how they are related."""

    values: Mapping[Cell, int]
    equations: Sequence[Equation] = ()
    orders: Sequence[Order] = ()

    def groups(self) -> list[tuple[Cell, ...]]:
        """Every relation as the cells it ties together."""
        return [(p, *c) for p, c in self.equations] + [tuple(o) for o in self.orders]


def feasible_range(
    cell: Cell, table: Table, hidden: Mapping[Cell, str], threshold: int
) -> tuple[float, float]:
    """The smallest and largest value of a hidden ``cell`` consistent with what is published.

    Published cells are fixed; a SMALL cell lies in ``1..threshold−1``, a WITHHELD cell is
    at least 1 (zeros are always published). Only the hidden cells linked to ``cell``
    through relations with other hidden cells take part (the others cannot move it).
    """
    unknown = _component(cell, table, hidden)
    col = {c: i for i, c in enumerate(unknown)}
    n = len(unknown)

    def row_of(terms: list[tuple[Cell, float]]) -> tuple[np.ndarray, float] | None:
        if not any(c in col for c, _ in terms):
            return None
        row = np.zeros(n)
        b = 0.0
        for c, sign in terms:
            if c in col:
                row[col[c]] += sign
            else:
                b -= sign * table.values.get(c, 0)
        return row, b

    eq = [row_of([(p, 1.0), *((c, -1.0) for c in ch)]) for p, ch in table.equations]
    ub = [row_of([(a, 1.0), (b, -1.0)]) for a, b in table.orders]  # a − b ≤ 0
    eq_rows = [r for r in eq if r is not None]
    ub_rows = [r for r in ub if r is not None]
    bounds = [(1.0, float(threshold - 1)) if hidden[c] == SMALL else (1.0, None) for c in unknown]
    out = []
    for sign in (1.0, -1.0):
        objective = np.zeros(n)
        objective[col[cell]] = sign
        res = linprog(
            objective,
            A_eq=np.array([r for r, _ in eq_rows]) if eq_rows else None,
            b_eq=np.array([b for _, b in eq_rows]) if eq_rows else None,
            A_ub=np.array([r for r, _ in ub_rows]) if ub_rows else None,
            b_ub=np.array([b for _, b in ub_rows]) if ub_rows else None,
            bounds=bounds,
            method="highs",
        )
        if res.status == 3:  # unbounded above
            out.append(float("inf"))
            continue
        if res.status != 0:  # a true table is always feasible; count it as pinned
            return (float(table.values[cell]), float(table.values[cell]))
        out.append(sign * float(res.fun))
    return out[0], out[1]


def _component(cell: Cell, table: Table, hidden: Mapping[Cell, str]) -> list[Cell]:
    """The hidden cells linked to ``cell`` by relations (through hidden cells only)."""
    by_cell: dict[Cell, list[tuple[Cell, ...]]] = {}
    for g in table.groups():
        for c in g:
            if c in hidden:
                by_cell.setdefault(c, []).append(g)
    seen = {cell}
    todo = [cell]
    while todo:
        c = todo.pop()
        for g in by_cell.get(c, []):
            for other in g:
                if other in hidden and other not in seen:
                    seen.add(other)
                    todo.append(other)
    return sorted(seen, key=repr)


def protect(table: Table, *, threshold: int = 5, key: bytes = b"") -> Protected:
    """Choose the cells to withhold so that no withheld count can be worked out exactly.

    Every count in ``1..threshold−1`` is withheld as SMALL. Then, while some withheld count
    is pinned to a single value by what is published, one more published count of at least
    ``threshold`` related to it is withheld; where none is left, the small cells of those
    relations are shown as WITHHELD instead (which tells less). Withholding every non-zero
    count is always safe, so this ends.

    Which count is withheld next is decided by a keyed hash of the cell (``key`` is the
    service's secret), never by the counts: were it "the smallest", an ``"x"`` would be
    known to lie below its published neighbours, and a hidden cell could be worked out.
    """
    values = table.values
    hidden: dict[Cell, str] = {c: SMALL for c, v in values.items() if 0 < v < threshold}

    def rank(c: Cell) -> bytes:
        return hmac.new(key, repr(c).encode(), hashlib.sha256).digest()

    groups = table.groups()
    n_sums = len(table.equations)  # groups[:n_sums] are sums, the rest orderings
    members: dict[Cell, list[int]] = {}
    for k, g in enumerate(groups):
        for c in g:
            members.setdefault(c, []).append(k)
    # Withholding more only widens what is feasible, so a cell once free stays free: each
    # withheld cell (small, or withheld to protect one) is checked until it is free.
    done: set[Cell] = set()
    while todo := sorted((c for c in hidden if c not in done), key=repr):
        for cell in todo:
            while _pinned(cell, table, hidden, threshold):
                if not _withhold_more(
                    cell, values, groups, n_sums, members, hidden, threshold, rank
                ):
                    return Protected(hidden)
            done.add(cell)
    return Protected(hidden)


def _pinned(cell: Cell, table: Table, hidden: Mapping[Cell, str], threshold: int) -> bool:
    lo, hi = feasible_range(cell, table, hidden, threshold)
    return hi - lo < 1 - 1e-9


def _withhold_more(
    cell: Cell,
    values: Mapping[Cell, int],
    groups: Sequence[tuple[Cell, ...]],
    n_sums: int,
    members: Mapping[Cell, list[int]],
    hidden: dict[Cell, str],
    threshold: int,
    rank: Callable[[Cell], bytes],
) -> bool:
    """Withhold one more thing to free ``cell``; False when everything is withheld."""
    # In this order: another term of a sum it is in; or its sums' small cells shown as "x"
    # (four 1s under a total of 4 are pinned by the "<5" ranges alone); only then a count
    # it is ordered against.
    args = (cell, values, groups, members, hidden, threshold, rank)
    extra = _complement_for(*args, n_sums=n_sums)
    if extra is not None:
        hidden[extra] = WITHHELD
        return True
    around = {c for k in members.get(cell, []) if k < n_sums for c in groups[k]}
    relabel = [c for c in sorted(around | {cell}, key=repr) if hidden.get(c) == SMALL]
    if relabel:
        for c in relabel:
            hidden[c] = WITHHELD
        return True
    extra = _complement_for(*args)
    if extra is not None:
        hidden[extra] = WITHHELD
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
    groups: Sequence[tuple[Cell, ...]],
    members: Mapping[Cell, list[int]],
    hidden: Mapping[Cell, str],
    threshold: int,
    rank: Callable[[Cell], bytes],
    *,
    n_sums: int | None = None,
) -> Cell | None:
    """The published count to withhold next beside ``cell``: one of at least ``threshold``
    related to ``cell`` (else to a withheld cell related to it), first by ``rank``; with
    ``n_sums``, through the first ``n_sums`` groups (the sums) only."""
    ring = [cell]
    seen_groups: set[int] = set()
    for _ in range(3):
        candidates: list[Cell] = []
        nxt: list[Cell] = []
        for c in ring:
            for k in members.get(c, []):
                if k in seen_groups or (n_sums is not None and k >= n_sums):
                    continue
                seen_groups.add(k)
                for other in groups[k]:
                    if other in hidden:
                        nxt.append(other)
                    elif values[other] >= threshold:
                        candidates.append(other)
        if candidates:
            return min(candidates, key=rank)
        ring = nxt
    return None
