"""The reliability drills of benchmarks/ in their short form, on the backend under test:
racing edits and many writers, an import killed at random moments, the server killed under
editing load. The long forms (1,000 pairs, 50,000 rows, a kill a minute) run on demand."""

from __future__ import annotations

from pathlib import Path

import pytest

from api.server import gridmap_server
from benchmarks.drill_common import admin_headers, sample_copy, stored_names
from benchmarks.drill_concurrency import many_writers, race_pairs
from benchmarks.drill_crash import households_csv, import_kills, server_kills, timed_import
from tests.conftest import copy_of_sample

pytestmark = pytest.mark.slow


def test_racing_edits_lose_nothing_and_writers_get_no_500(edit_path: Path | str) -> None:
    headers = admin_headers(edit_path)
    with gridmap_server(edit_path, log_level="WARNING") as url:
        races = race_pairs(url, headers, 60)
        w = many_writers(url, headers, writers=16, each=4, tag="drill-w")
    assert dict(races.outcomes) == {(200, 412): 60}
    assert races.version_rise == 60 and races.last_value_kept and races.clean
    assert 500 not in w.statuses and w.retry_after_missing == 0
    stored = stored_names(edit_path, "drill-w")
    assert len(w.acknowledged) == 64 and set(stored) == set(w.acknowledged)
    assert set(stored.values()) == {1}


def test_an_import_killed_at_random_moments_writes_all_or_nothing(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    source = households_csv(sample_copy(tmp_path / "src"), 3000, tmp_path / "hh.csv")
    full = timed_import(copy_of_sample(request, tmp_path / "probe.gpkg"), source)
    db = copy_of_sample(request, tmp_path / "drill.gpkg")
    kills, finished = import_kills(db, source, 3000, kills=3, full_seconds=full, seed=7)
    assert kills and all(k.outcome in ("nothing", "everything") for k in kills), kills
    assert all(k.sqlite_ok and k.problems == 0 for k in kills), kills
    assert finished


def test_the_server_killed_under_load_loses_no_acknowledged_write(edit_path: Path | str) -> None:
    load, restarts, facts = server_kills(edit_path, interval=2.0, kills=3, writers=4)
    assert len(restarts) == 3 and load.failures > 0  # the kills were felt
    assert len(load.created) > 10 and len(load.edited) == 4
    assert facts["duplicates"] == 0 and facts["missing"] == []
    assert facts["unacknowledged_stored"] == [] and facts["wrong_values"] == []
    assert facts["sqlite_ok"]
