#!/usr/bin/env bash
# Run the whole test suite (lint included): set up the virtual environment, then ruff and pytest.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/bootstrap.sh
venv="${GRIDMAP_VENV:-.venv}"
"$venv/bin/ruff" check gridmap api tests benchmarks
"$venv/bin/ruff" format --check gridmap api tests benchmarks
"$venv/bin/python" -m pytest "$@"
# The same suite over the PostGIS backend (tests of the GeoPackage file itself left out).
# Without PostgreSQL + PostGIS installed this pass is skipped, except in CI (CI=true).
if [ "${GRIDMAP_POSTGIS_PASS:-1}" = "0" ]; then
  echo "» PostGIS pass left out on request (GRIDMAP_POSTGIS_PASS=0)"
  exit 0
fi
why=$("$venv/bin/python" -c 'from tests.postgres import unavailable; print(unavailable() or "")')
if [ -n "$why" ] && [ "${CI:-}" != "true" ]; then
  echo "» PostGIS pass skipped: $why"
  exit 0
fi
echo "» the suite again over PostGIS (GRIDMAP_TEST_BACKEND=postgis)"
GRIDMAP_TEST_BACKEND=postgis exec "$venv/bin/python" -m pytest "$@"
