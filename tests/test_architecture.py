"""The structure the design promises, checked on the source: the core above the backends,
no layer names or policy in a backend, no import pointing back up, and no FastAPI in the
library."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from gridmap.layers import LAYERS

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = [
    "gridmap/store/geopackage.py",
    "gridmap/store/gpkg_sql.py",
    "gridmap/store/sqlite_filter.py",
    "gridmap/store/postgis.py",
    "gridmap/store/pg_filter.py",
    "gridmap/store/records.py",
]
ABOVE_BACKENDS = ("gridmap.store.core", "gridmap.store.relations", "gridmap.store.views",
                  "gridmap.access", "gridmap.security", "gridmap.accounts", "api")  # fmt: skip


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


def _strings(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {
        n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
    }


@pytest.mark.parametrize("module", BACKENDS)
def test_backends_name_no_layer_and_import_nothing_above_them(module: str) -> None:
    path = ROOT / module
    layer_ids = {lay.id for lay in LAYERS}
    named = layer_ids & _strings(path)
    assert not named, f"{module} names layers {named}: read them from the registry"
    up = [m for m in _imports(path) if m.startswith(ABOVE_BACKENDS)]
    assert not up, f"{module} imports {up}, which sit above the backends"


def test_the_backends_do_not_import_each_other() -> None:
    gpkg = {"gridmap.store.geopackage", "gridmap.store.gpkg_sql", "gridmap.store.sqlite_filter"}
    pg = {"gridmap.store.postgis", "gridmap.store.pg_filter"}
    for module in BACKENDS:
        name = module.removesuffix(".py").replace("/", ".")
        imports = _imports(ROOT / module)
        other = pg if name in gpkg else gpkg if name in pg else set()
        assert not imports & other, f"{module} imports the other backend: {imports & other}"


def test_the_core_knows_no_backend() -> None:
    for module in (
        "gridmap/store/core.py",
        "gridmap/store/relations.py",
        "gridmap/store/backend.py",
    ):
        imports = _imports(ROOT / module)
        assert not {
            i
            for i in imports
            if i.split(".")[-1] in {"geopackage", "postgis", "sqlite3", "psycopg"}
        }, module


def test_the_library_never_imports_fastapi() -> None:
    for path in (ROOT / "gridmap").rglob("*.py"):
        imports = _imports(path)
        assert not {i for i in imports if i.split(".")[0] in {"fastapi", "starlette", "api"}}, path
