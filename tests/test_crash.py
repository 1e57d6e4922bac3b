"""A bulk import killed half-way leaves nothing behind (all or nothing)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pyogrio
import pytest
import shapely

from gridmap.store import create_store, open_store

CHILD = textwrap.dedent(
    """
    import sys, numpy as np, shapely
    from gridmap.store import FeatureStore, create_store, open_store
    store = open_store(sys.argv[1])
    n = int(sys.argv[2])
    rng = np.random.default_rng(0)
    pts = shapely.points(rng.uniform(113.26, 113.32, n), rng.uniform(34.79, 34.83, n))
    def progress(done):
        print(done, flush=True)
    store.insert("cameras", pts, [{"name": f"c{i}"} for i in range(n)], progress=progress)
    print("committed", flush=True)
    """
)


@pytest.mark.slow
def test_killed_bulk_insert_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "crash.gpkg"
    store = create_store(path, service_area=shapely.box(113.2, 34.7, 113.4, 34.9))
    store.insert("cameras", [shapely.Point(113.3, 34.8)], [{"name": "before"}])
    store.close()
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), "200000"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line.strip())
        if len(seen) >= 3:  # three chunks written inside the open transaction
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=30)
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert "committed" not in seen
    reopened = open_store(path)
    assert reopened.count("cameras") == 1
    assert [p["name"] for p in reopened.query("cameras").properties] == ["before"]
    reopened.close()
    assert pyogrio.read_info(path, layer="cameras")["features"] == 1


@pytest.mark.slow
def test_completed_bulk_insert_writes_everything(tmp_path: Path) -> None:
    path = tmp_path / "ok.gpkg"
    create_store(path, service_area=shapely.box(113.2, 34.7, 113.4, 34.9)).close()
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), "5000"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert out.stdout.strip().endswith("committed")
    assert pyogrio.read_info(path, layer="cameras")["features"] == 5000
