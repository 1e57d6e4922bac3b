"""Property-based requests from the OpenAPI document (schemathesis): never a server error."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.conftest import _free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fuzz_server(sample_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real server over a private copy of the sample (the fuzzer writes too)."""
    db = tmp_path_factory.mktemp("fuzz") / "fuzz.gpkg"
    shutil.copy(sample_path, db)
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "api.app:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env={**os.environ, "GRIDMAP_DATABASE": str(db)},
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(150):
        try:
            httpx.get(url + "/", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def test_no_server_errors(fuzz_server: str) -> None:
    """Every operation, positive and negative examples (bounded): no 5xx, ever."""
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
            max_examples=40,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def run(case) -> None:  # type: ignore[no-untyped-def]
            response = case.call(base_url=fuzz_server, timeout=30)
            calls.append(response.status_code)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} -> {response.status_code}")

        run()
    assert operations >= 14
    assert len(calls) > 100  # the fuzzer really sent requests
    assert any(400 <= c < 500 for c in calls) and any(c < 300 for c in calls)
    assert failures == []
