#!/usr/bin/env bash
# Run gridmap over the sample subdistrict: set up, build data/zhongxinlu.gpkg if missing, serve.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/bootstrap.sh
db="${GRIDMAP_DATABASE:-data/zhongxinlu.gpkg}"
.venv/bin/gridmap demo --database "$db" --if-missing
exec .venv/bin/gridmap serve --database "$db" --host "${GRIDMAP_HOST:-127.0.0.1}" --port "${GRIDMAP_PORT:-8000}"
