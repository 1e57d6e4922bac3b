"""Readers of the public routing instances in ``tests/data/routing`` (TSPLIB EUC_2D, Solomon
VRPTW) and their published optima, for the routing tests and benchmarks."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "routing"
TSP = ("eil51", "berlin52", "st70", "eil76", "kroA100", "ch150", "a280")
SOLOMON = ("C101", "R101", "RC101")


def read_tsp(name: str) -> npt.NDArray[np.float64]:
    """The node coordinates of a TSPLIB EUC_2D instance, in file order."""
    coords = []
    inside = False
    for line in (DATA / f"{name}.tsp").read_text().splitlines():
        line = line.strip()
        if line.startswith("NODE_COORD_SECTION"):
            inside = True
        elif line.startswith("EOF"):
            break
        elif inside and line:
            _, x, y = line.split()[:3]
            coords.append((float(x), float(y)))
    return np.array(coords)


def tsp_matrix(xy: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """TSPLIB's EUC_2D distances: nint of the Euclidean distance."""
    d = np.hypot(xy[:, None, 0] - xy[None, :, 0], xy[:, None, 1] - xy[None, :, 1])
    return np.floor(d + 0.5).astype(np.int64)


def tour_length(tour: list[int], d: npt.NDArray[np.int64]) -> int:
    """Length of a closed tour under ``d``."""
    return int(sum(d[a, b] for a, b in zip(tour, tour[1:] + tour[:1], strict=True)))


def tsp_optimum(name: str) -> int:
    """The proven optimal tour length."""
    with (DATA / "tsplib_optima.csv").open() as f:
        return next(int(r["optimum"]) for r in csv.DictReader(f) if r["name"] == name)


@dataclass(frozen=True)
class Solomon:
    """A Solomon VRPTW instance: depot is row 0."""

    vehicles: int
    capacity: int
    xy: npt.NDArray[np.float64]
    demand: npt.NDArray[np.int64]
    ready: npt.NDArray[np.int64]
    due: npt.NDArray[np.int64]
    service: npt.NDArray[np.int64]


def read_solomon(name: str) -> Solomon:
    """A Solomon instance as published (integer times, Euclidean distances)."""
    lines = (DATA / f"{name}.txt").read_text().splitlines()
    vehicles, capacity = (int(v) for v in lines[4].split())
    rows = [[float(v) for v in ln.split()] for ln in lines[9:] if ln.strip()]
    a = np.array(rows)
    return Solomon(
        vehicles,
        capacity,
        a[:, 1:3],
        a[:, 3].astype(np.int64),
        a[:, 4].astype(np.int64),
        a[:, 5].astype(np.int64),
        a[:, 6].astype(np.int64),
    )


def solomon_truncated(xy: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Distances each truncated to one decimal (the CVRPLIB convention of the optima)."""
    d = np.hypot(xy[:, None, 0] - xy[None, :, 0], xy[:, None, 1] - xy[None, :, 1])
    return np.floor(10 * d) / 10


def solomon_best(name: str) -> float:
    """The distance-only optimum (arcs truncated to 0.1), from the published table."""
    with (DATA / "solomon_best_known.csv").open() as f:
        for r in csv.DictReader(f):
            if r["instance"] == name and r["distance_convention"].startswith("each arc"):
                return float(r["distance"])
    return math.nan
