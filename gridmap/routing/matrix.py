"""Distance and duration matrices between points: straight-line (metric CRS) or walking.

Integer metres and seconds, as the solver takes them. Vectorised over all pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from gridmap.crs import METRIC_EPSG, from_wgs84_xy

WALK_SPEED_M_S = 1.2
"""A grid worker's walking speed between doors (about 4.3 km/h)."""
DETOUR_FACTOR = 1.3
"""Straight-line distance × this ≈ walking distance where no network is known (a typical
circuity of urban street networks)."""


@dataclass(frozen=True)
class Matrix:
    """Distances (m) and durations (s) between n points, and how they were obtained."""

    distance: npt.NDArray[np.int64]
    duration: npt.NDArray[np.int64]
    mode: str
    """"walk" (on the walking network) or "straight" (straight line × detour factor)."""


def straight(
    lon: npt.ArrayLike,
    lat: npt.ArrayLike,
    *,
    detour: float = DETOUR_FACTOR,
    speed_m_s: float = WALK_SPEED_M_S,
) -> Matrix:
    """Straight-line distances between WGS84 points in the metric CRS, × ``detour``.

    Vectorised: one projection of all points, one broadcast of all pairs.
    """
    x, y = from_wgs84_xy(lon, lat, f"http://www.opengis.net/def/crs/EPSG/0/{METRIC_EPSG}")
    dx = x[:, None] - x[None, :]
    dy = y[:, None] - y[None, :]
    metres = np.hypot(dx, dy) * detour
    distance = np.rint(metres).astype(np.int64)
    duration = np.rint(metres / speed_m_s).astype(np.int64)
    return Matrix(distance, duration, "straight")
