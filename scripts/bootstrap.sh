#!/usr/bin/env bash
# Create the virtual environment and install gridmap with its dev extras; reinstall when
# pyproject.toml changes. GRIDMAP_PYTHON picks the interpreter, GRIDMAP_VENV the folder
# (default .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${GRIDMAP_VENV:-.venv}"

pick_python() {
  for cand in "${GRIDMAP_PYTHON:-}" python3.13 python3.12 python3.11 python3; do
    [ -n "$cand" ] || continue
    if command -v "$cand" >/dev/null 2>&1 &&
       "$cand" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
      echo "$cand"; return 0
    fi
  done
  echo "gridmap needs Python 3.11 or newer (set GRIDMAP_PYTHON to its path)" >&2
  return 1
}

if [ ! -x "$venv/bin/python" ]; then
  py=$(pick_python)
  echo "» creating $venv with $($py --version)"
  if ! "$py" -m venv "$venv"; then
    echo "could not create a virtual environment; on Debian/Ubuntu: sudo apt-get install python3-venv" >&2
    rm -rf "$venv"
    exit 1
  fi
fi

stamp="$venv/.gridmap-installed"
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "» installing gridmap and its dependencies into $venv"
  "$venv/bin/python" -m pip install --disable-pip-version-check -q --upgrade pip
  "$venv/bin/python" -m pip install --disable-pip-version-check -q -e ".[dev]"
  echo "$want" > "$stamp"
fi
