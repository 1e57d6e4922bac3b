"""WGS84 ⇄ GCJ-02 ⇄ BD-09 against an independent implementation, inverses and CRS URIs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import shapely

from gridmap import crs

REF = Path(__file__).resolve().parents[1] / "tests" / "data" / "gcj02_reference.csv"
M_PER_DEG = 111_320.0


@pytest.fixture(scope="module")
def ref() -> pd.DataFrame:
    return pd.read_csv(REF)


def test_reference_has_points_all_over_china(ref: pd.DataFrame) -> None:
    assert len(ref) >= 100
    assert crs.in_china(ref.wgs_lon, ref.wgs_lat).all()


def test_wgs84_to_gcj02_matches_reference(ref: pd.DataFrame) -> None:
    x, y = crs.wgs84_to_gcj02(ref.wgs_lon.to_numpy(), ref.wgs_lat.to_numpy())
    assert np.abs(x - ref.gcj_lon).max() * M_PER_DEG < 0.001
    assert np.abs(y - ref.gcj_lat).max() * M_PER_DEG < 0.001


def test_wgs84_to_bd09_matches_reference(ref: pd.DataFrame) -> None:
    x, y = crs.wgs84_to_bd09(ref.wgs_lon, ref.wgs_lat)
    assert np.abs(x - ref.bd_lon).max() * M_PER_DEG < 0.001
    assert np.abs(y - ref.bd_lat).max() * M_PER_DEG < 0.001


def test_gcj02_to_bd09_matches_reference(ref: pd.DataFrame) -> None:
    x, y = crs.gcj02_to_bd09(ref.gcj_lon, ref.gcj_lat)
    assert np.abs(x - ref.bd_lon).max() * M_PER_DEG < 0.001
    assert np.abs(y - ref.bd_lat).max() * M_PER_DEG < 0.001


@pytest.mark.parametrize(
    ("inverse", "src"),
    [(crs.gcj02_to_wgs84, ("gcj_lon", "gcj_lat")), (crs.bd09_to_wgs84, ("bd_lon", "bd_lat"))],
)
def test_inverses_recover_wgs84_to_a_centimetre(ref: pd.DataFrame, inverse, src) -> None:  # type: ignore[no-untyped-def]
    x, y = inverse(ref[src[0]], ref[src[1]])
    err_m = np.hypot(x - ref.wgs_lon, y - ref.wgs_lat) * M_PER_DEG
    assert err_m.max() < 0.01


def test_round_trip_dense_grid_over_china() -> None:
    lon, lat = np.meshgrid(np.linspace(73.5, 135, 120), np.linspace(18, 53.5, 80))
    gx, gy = crs.wgs84_to_gcj02(lon.ravel(), lat.ravel())
    wx, wy = crs.gcj02_to_wgs84(gx, gy)
    assert (np.hypot(wx - lon.ravel(), wy - lat.ravel()) * M_PER_DEG).max() < 0.01
    bx, by = crs.wgs84_to_bd09(lon.ravel(), lat.ravel())
    wx, wy = crs.bd09_to_wgs84(bx, by)
    assert (np.hypot(wx - lon.ravel(), wy - lat.ravel()) * M_PER_DEG).max() < 0.01


def test_shift_in_zhengzhou_is_hundreds_of_metres() -> None:
    gx, gy = crs.wgs84_to_gcj02([113.2919], [34.8096])
    shift = np.hypot(
        (gx - 113.2919) * M_PER_DEG * np.cos(np.radians(34.8)), (gy - 34.8096) * M_PER_DEG
    )
    assert 300 < shift[0] < 800


@pytest.mark.parametrize(
    ("lon", "lat"), [(2.35, 48.85), (-74.0, 40.7), (139.7, 35.7), (151.2, -33.9), (60.0, 30.0)]
)
def test_outside_china_no_shift_either_way(lon: float, lat: float) -> None:
    for fn in (
        crs.wgs84_to_gcj02,
        crs.gcj02_to_wgs84,
        crs.wgs84_to_bd09,
        crs.bd09_to_wgs84,
        crs.gcj02_to_bd09,
        crs.bd09_to_gcj02,
    ):
        x, y = fn([lon], [lat])
        assert (x[0], y[0]) == (lon, lat)


def test_vectorised_shapes_and_nan_passthrough() -> None:
    x, _y = crs.wgs84_to_gcj02(np.full((3, 4), 113.3), np.full((3, 4), 34.8))
    assert x.shape == (3, 4)
    x, _y = crs.gcj02_to_wgs84([np.nan, 113.3], [34.8, 34.8])
    assert np.isnan(x[0]) and np.isfinite(x[1])
    with pytest.raises(ValueError, match="same shape"):
        crs.wgs84_to_gcj02([1.0, 2.0], [1.0])


@pytest.mark.parametrize(
    ("alias", "uri"),
    [
        ("gcj02", crs.GCJ02),
        ("BD09", crs.BD09),
        ("EPSG:4326", "http://www.opengis.net/def/crs/EPSG/0/4326"),
        ("urn:ogc:def:crs:EPSG::4547", "http://www.opengis.net/def/crs/EPSG/0/4547"),
        ("http://www.opengis.net/def/crs/OGC/1.3/CRS84", crs.CRS84),
    ],
)
def test_normalize_crs(alias: str, uri: str) -> None:
    assert crs.normalize_crs(alias) == uri


@pytest.mark.parametrize("bad", ["EPSG:2000", "wgs", "", "http://example.com/crs"])
def test_unknown_crs_is_rejected(bad: str) -> None:
    with pytest.raises(crs.UnsupportedCRSError, match="unsupported CRS"):
        crs.normalize_crs(bad)


def test_metric_projection_distances() -> None:
    a, b = crs.to_metric([shapely.Point(113.29, 34.80), shapely.Point(113.30, 34.80)])
    # 0.01° of longitude at 34.8° N ≈ 914 m
    assert a.distance(b) == pytest.approx(914.2, abs=1.0)
    back = crs.from_metric([a])[0]
    assert back.distance(shapely.Point(113.29, 34.80)) < 1e-9


def test_transform_geometries_gcj02_round_trip() -> None:
    poly = shapely.box(113.28, 34.80, 113.30, 34.82)
    g = crs.transform_geometries([poly], src="crs84", dst="gcj02")[0]
    assert not g.equals_exact(poly, 1e-5)
    back = crs.transform_geometries([g], src="gcj02", dst="crs84")[0]
    assert back.equals_exact(poly, 1e-9)
