#!/usr/bin/env bash
# Run the whole test suite (lint included): set up .venv, then ruff and pytest.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/bootstrap.sh
.venv/bin/ruff check gridmap api tests benchmarks
.venv/bin/ruff format --check gridmap api tests benchmarks
exec .venv/bin/python -m pytest "$@"
