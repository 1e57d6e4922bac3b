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


def test_users_commands(tmp_path: Path) -> None:
    db = tmp_path / "demo.gpkg"
    assert runner.invoke(app, ["demo", "--database", str(db)]).exit_code == 0
    r = runner.invoke(
        app, ["users", "add", "w7", "--role", "grid_worker", "--grid", "7", "--generate",
              "--database", str(db)],
    )  # fmt: skip
    assert r.exit_code == 0 and "password:" in r.output
    password = r.output.split("password:")[1].strip()
    r = runner.invoke(app, ["users", "add", "w8", "--role", "grid_worker", "--password",
                            "short", "--grid", "1", "--database", str(db)])  # fmt: skip
    assert r.exit_code == 1 and "password refused" in r.output
    r = runner.invoke(app, ["users", "add", "w9", "--role", "grid_worker", "--generate",
                            "--database", str(db)])  # fmt: skip
    assert r.exit_code == 1 and "--grid" in r.output
    r = runner.invoke(app, ["users", "list", "--database", str(db)])
    assert r.exit_code == 0 and "w7" in r.output and "grid_worker" in r.output
    r = runner.invoke(app, ["users", "assign", "w7", "--grid", "8", "--grid", "9",
                            "--database", str(db)])  # fmt: skip
    assert r.exit_code == 0
    r = runner.invoke(app, ["users", "disable", "w7", "--database", str(db)])
    assert r.exit_code == 0 and "disabled" in r.output
    r = runner.invoke(app, ["users", "reset", "w7", "--database", str(db)])
    assert r.exit_code == 0
    new = r.output.split(" to ")[1].strip()
    r = runner.invoke(app, ["users", "reset", "ghost", "--database", str(db)])
    assert r.exit_code == 1 and "no user" in r.output
    from gridmap.accounts import Accounts, token_secret
    from gridmap.errors import AuthenticationError
    from gridmap.store import GeoPackageStore

    store = GeoPackageStore.open(db)
    rec = store.user("w7")
    assert rec["grid_ids"] == [8, 9] and rec["disabled"]
    accounts = Accounts(store, secret=token_secret(store))
    import pytest

    with pytest.raises(AuthenticationError):
        accounts.login("w7", new)  # disabled
    store.close()
    assert (
        runner.invoke(app, ["users", "disable", "w7", "--enable", "--database", str(db)]).exit_code
        == 0
    )
    store = GeoPackageStore.open(db)
    accounts = Accounts(store, secret=token_secret(store))
    assert accounts.login("w7", new).access_token
    with pytest.raises(AuthenticationError):
        accounts.login("w7", password)  # the old password no longer works
    store.close()


def test_serve_answers_and_refuses_a_missing_database(tmp_path: Path) -> None:
    import subprocess
    import sys

    from api.server import free_port, running

    db = tmp_path / "demo.gpkg"
    assert runner.invoke(app, ["demo", "--database", str(db)]).exit_code == 0
    port = free_port()
    cmd = [sys.executable, "-m", "gridmap.cli", "serve", "--database", str(db), "--port", str(port)]
    import httpx

    with running(cmd, url=f"http://127.0.0.1:{port}", probe="/conformance") as url:
        assert httpx.get(f"{url}/collections/grids/items?limit=1").json()["numberMatched"] == 40
        # a client cannot choose its source address (the log-in throttle keys on it)
        codes = [
            httpx.post(
                f"{url}/token",
                data={"username": "planner", "password": f"Wrong-password-{i}"},
                headers={"X-Forwarded-For": f"10.9.8.{i}"},
            ).status_code
            for i in range(5)
        ]
        assert codes == [401, 401, 401, 429, 429]
    r = subprocess.run(
        [sys.executable, "-m", "gridmap.cli", "serve", "--database", str(tmp_path / "no.gpkg")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 1 and "gridmap demo" in r.stdout + r.stderr
