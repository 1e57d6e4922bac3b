"""The notebooks run top to bottom against the sample, so they cannot rot."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import copy_of_sample

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    ("name", "artifact"),
    [
        ("01_overview.ipynb", "overview.html"),
        ("02_grid_sheet.ipynb", "grid-1.html"),
        ("03_visit_campaign.ipynb", "campaign-coverage.html"),
        ("04_toilet_siting.ipynb", "toilets.html"),
        ("05_camera_coverage.ipynb", "cameras.html"),
        ("06_renovation.ipynb", "renovation.html"),
        ("07_grid_balance.ipynb", "grid-balance.html"),
    ],
)
def test_notebook_runs(
    name: str,
    artifact: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the kernel gets its own copy: when another process closes its last connection to the
    # shared sample, it may check-point and delete the write-ahead log others still use
    db = copy_of_sample(request, tmp_path / "notebook.gpkg")
    monkeypatch.setenv("GRIDMAP_DATABASE", str(db))
    monkeypatch.setenv("GRIDMAP_NOTEBOOK_OUT", str(tmp_path))
    monkeypatch.setenv("GRIDMAP_NOTEBOOK_WRITE", "1")  # its own copy: it may write
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")  # stripped
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    ).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    html = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert any("leaflet" in h.lower() for h in html)  # the map rendered in the notebook
    page = (tmp_path / artifact).read_text(encoding="utf-8")
    assert "/static/leaflet/leaflet.js" in page and "https://cdn" not in page
    assert os.path.getsize(tmp_path / artifact) > 10_000
