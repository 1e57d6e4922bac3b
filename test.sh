#!/usr/bin/env bash
# Run the whole test suite (lint included): set up the virtual environment, then ruff and pytest.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/bootstrap.sh
venv="${GRIDMAP_VENV:-.venv}"
"$venv/bin/ruff" check gridmap api tests benchmarks
"$venv/bin/ruff" format --check gridmap api tests benchmarks
exec "$venv/bin/python" -m pytest "$@"
