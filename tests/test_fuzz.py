"""Property-based requests from the OpenAPI document (schemathesis): never a server error."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from api.server import gridmap_server
from tests.conftest import copy_of_sample, tokens_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fuzz_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A real server over a private copy of the sample (the fuzzer writes too)."""
    db = copy_of_sample(request, tmp_path_factory.mktemp("fuzz") / "fuzz.gpkg")
    limits = {
        "household_reads_per_minute": "1000000",
        "reveals_per_hour": "1000000",
        "logins_per_minute": "1000000",
    }
    with gridmap_server(db, **limits) as url:
        yield url


@pytest.mark.parametrize(
    "role",
    ["public", "subdistrict_admin", "community_admin", "grid_worker", "planner", "auditor"],
)
def test_no_server_errors(fuzz_server: str, sample_path: Path, role: str) -> None:
    """Every operation as every role, positive and negative examples (bounded): no 5xx."""
    headers = tokens_for(sample_path)[role]
    schema = schemathesis.openapi.from_url(fuzz_server + "/openapi.json")
    failures: list[str] = []
    calls: list[int] = []
    operations = 0
    modes = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        strategy = operation.as_strategy(modes[0]) | operation.as_strategy(modes[1])

        @given(case=strategy)
        @settings(
            max_examples=15,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def run(case) -> None:  # type: ignore[no-untyped-def]
            response = case.call(base_url=fuzz_server, timeout=30, headers=headers)
            calls.append(response.status_code)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} -> {response.status_code}")

        run()
    assert operations >= 14
    assert len(calls) > 100  # the fuzzer really sent requests
    assert any(400 <= c < 500 for c in calls) and any(c < 300 for c in calls)
    assert failures == []
