"""The gridmap command: demo, info, check."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from gridmap.cli import app

runner = CliRunner()


def test_demo_info_check(tmp_path: Path) -> None:
    db = tmp_path / "demo.gpkg"
    r = runner.invoke(app, ["demo", "--database", str(db), "--today", "2026-11-24"])
    assert r.exit_code == 0, r.output
    assert db.exists() and "synthetic" in r.output
    r = runner.invoke(app, ["demo", "--database", str(db)])
    assert r.exit_code == 1 and "--force" in r.output
    r = runner.invoke(app, ["demo", "--database", str(db), "--if-missing"])
    assert r.exit_code == 0 and "keeping" in r.output
    r = runner.invoke(app, ["info", "--database", str(db)])
    assert r.exit_code == 0 and "households" in r.output and "住户" in r.output
    r = runner.invoke(app, ["check", "--database", str(db)])
    assert r.exit_code == 0 and "passed" in r.output


def test_errors_say_what_to_do(tmp_path: Path) -> None:
    r = runner.invoke(app, ["info", "--database", str(tmp_path / "missing.gpkg")])
    assert r.exit_code == 1 and "gridmap demo" in r.output
    r = runner.invoke(app, ["demo", "--database", str(tmp_path / "x.gpkg"), "--today", "24/11"])
    assert r.exit_code == 1 and "YYYY-MM-DD" in r.output
