"""The gridmap command: demo, info, check."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gridmap.cli import app
from tests.conftest import raw_sql

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


@pytest.mark.postgis
def test_demo_copy_info_check_over_postgis(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """The sample built in an empty database, checked there, copied back into a file (a
    progress bar per layer), and a second build refused with what to do."""
    from tests.conftest import require_postgis

    require_postgis()
    url = request.getfixturevalue("pg_cluster").new_database("gm_cli")
    r = runner.invoke(app, ["demo", "--database", url, "--today", "2026-11-24"])
    assert r.exit_code == 0, r.output
    assert "households 15024" in r.output and "synthetic" in r.output
    r = runner.invoke(app, ["demo", "--database", url])
    assert r.exit_code == 1 and "dropdb" in r.output
    r = runner.invoke(app, ["check", "--database", url])
    assert r.exit_code == 0 and "passed" in r.output, r.output
    r = runner.invoke(app, ["copy", url, str(tmp_path / "back.gpkg"), "--batch", "5000"])
    assert r.exit_code == 0, r.output
    assert "households" in r.output and "15024/15024" in r.output
    r = runner.invoke(app, ["info", "--database", str(tmp_path / "back.gpkg")])
    assert r.exit_code == 0 and "15024" in r.output
    r = runner.invoke(app, ["copy", str(tmp_path / "back.gpkg"), url])
    assert r.exit_code == 1 and "a copy of another store" in " ".join(r.output.split())
    wrong = url.replace("postgres@", "nobody:secret-pw@")
    r = runner.invoke(app, ["info", "--database", wrong])
    said = " ".join(r.output.split())
    assert r.exit_code == 1 and 'role "nobody" does not exist' in said
    assert "secret-pw" not in said and said.count("nobody") == 2  # the URL, the reason


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
    from gridmap.store import open_store

    store = open_store(db)
    rec = store.user("w7")
    assert rec["grid_ids"] == [8, 9] and rec["disabled"]
    logged = raw_sql(db, "SELECT action, object, source, result FROM gridmap_audit "
                         "WHERE object LIKE 'users/%' ORDER BY id")  # fmt: skip
    assert logged == [  # review: account changes made in the shell were not audited
        ("account_add", "users/w7", "cli", "ok"),
        ("account_assign", "users/w7", "cli", "ok"),
        ("account_disable", "users/w7", "cli", "ok"),
        ("account_reset", "users/w7", "cli", "ok"),
    ]
    accounts = Accounts(store, secret=token_secret(store))
    import pytest

    with pytest.raises(AuthenticationError):
        accounts.login("w7", new)  # disabled
    store.close()
    assert (
        runner.invoke(app, ["users", "disable", "w7", "--enable", "--database", str(db)]).exit_code
        == 0
    )
    store = open_store(db)
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


def test_campaign_and_plan_commands(tmp_path: Path) -> None:
    """Create a campaign, plan two grids, write the GPX (read back by GDAL) and the roster,
    see the status, close it; every step in the audit log as the shell user."""
    import csv

    import pyogrio

    db = tmp_path / "demo.gpkg"
    assert runner.invoke(app, ["demo", "-d", str(db), "--today", "2026-11-24"]).exit_code == 0
    elderly = "A_CONTAINS(tags, ('elderly_alone'))"
    r = runner.invoke(
        app,
        ["campaign", "create", "独居老人冬季走访", "--starts", "2026-11-24", "--ends",
         "2026-12-31", "--target", elderly, "-d", str(db)],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    cid = int(r.output.split("campaign ")[1].split()[0])
    con = sqlite3.connect(db)
    (n_target,) = con.execute(
        "SELECT count(*) FROM households WHERE tags LIKE '%\"elderly_alone\"%'"
    ).fetchone()
    assert f"{n_target} households" in r.output
    out = tmp_path / "plan.gpx"
    r = runner.invoke(
        app,
        ["plan", "--campaign", str(cid), "--grid", "1", "--grid", "2", "--date", "2026-11-25",
         "--workers", "2", "--time-limit", "0.5", "--out", str(out), "-d", str(db)],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    plans = con.execute(
        "SELECT id, grid_id, body FROM gridmap_documents WHERE kind = 'plan' ORDER BY id"
    ).fetchall()
    assert [g for _, g, _ in plans] == [1, 2]
    for _, gid, body in plans:
        b = json.loads(body)
        stops = [s for route in b["routes"] for s in route["stops"]]
        gpx = tmp_path / f"plan-{gid}.gpx"
        waypoints = pyogrio.read_dataframe(gpx, layer="waypoints")
        assert len(waypoints) == len(stops) > 0
        assert len(pyogrio.read_dataframe(gpx, layer="tracks")) == len(b["routes"])
        planned = {h for s in stops for h in s["households"]}
        (in_grid,) = con.execute(
            "SELECT count(*) FROM households WHERE grid_id = ? AND tags LIKE '%\"elderly_alone\"%'",
            (gid,),
        ).fetchone()
        assert len(planned) + len(b["unassigned"]) == in_grid
    roster = tmp_path / "roster.csv"
    r = runner.invoke(
        app,
        ["plan", "--campaign", str(cid), "--grid", "3", "--date", "2026-11-25", "--out",
         str(roster), "-d", str(db)],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(roster.read_text(encoding="utf-8-sig").splitlines()))
    assert rows and {row["户主"] for row in rows} != {""}
    (body,) = con.execute(
        "SELECT body FROM gridmap_documents WHERE kind = 'plan' AND grid_id = 3"
    ).fetchone()
    assert len(rows) == sum(len(s["households"]) for rt in json.loads(body)["routes"]
                            for s in rt["stops"])  # fmt: skip
    r = runner.invoke(app, ["campaign", "status", str(cid), "-d", str(db)])
    assert r.exit_code == 0 and f"done 0 of {n_target} households" in r.output, r.output
    assert runner.invoke(app, ["campaign", "close", str(cid), "-d", str(db)]).exit_code == 0
    r = runner.invoke(
        app, ["plan", "--campaign", str(cid), "--grid", "4", "--date", "2026-11-25", "-d", str(db)]
    )
    assert r.exit_code == 1 and "closed" in r.output
    audit = con.execute(
        "SELECT action, object FROM gridmap_audit WHERE username LIKE 'cli:%' ORDER BY id"
    ).fetchall()
    assert ("create", f"campaigns/{cid}") in audit and ("update", f"campaigns/{cid}") in audit
    assert sum(1 for a, o in audit if a == "create" and o.startswith("plans/")) == 3
    assert sum(1 for a, _ in audit if a == "read") == 1  # the roster left the database
    con.close()


def test_campaign_commands_refuse_bad_input(tmp_path: Path) -> None:
    db = tmp_path / "demo.gpkg"
    assert runner.invoke(app, ["demo", "-d", str(db), "--today", "2026-11-24"]).exit_code == 0
    bad = [
        (["campaign", "create", "x", "--starts", "2026-12-01", "--ends", "2026-11-01"], "end"),
        (["campaign", "create", "x", "--starts", "1.12", "--ends", "2026-11-01"], "YYYY-MM-DD"),
        (["campaign", "create", "x", "--starts", "2026-11-24", "--ends", "2026-12-01",
          "--target", "nonsense ((("], "filter"),
        (["campaign", "status", "99"], "no campaign"),
        (["campaign", "create", "x", "--starts", "2026-11-24", "--ends", "2026-12-01",
          "--target", "phone LIKE '%7'"], "personal fields"),
        (["plan", "--campaign", "1", "--grid", "1", "--date", "2026-11-24", "--out", "x.pdf"],
         ".gpx"),
        (["plan", "--campaign", "1", "--grid", "999", "--date", "2026-11-24"], "999"),
        (["plan", "--campaign", "1", "--grid", "1", "--date", "2027-01-01"], "outside"),
        (["plan", "--campaign", "1", "--grid", "1", "--date", "2026-11-24", "--out",
          "/nonexistent/dir/plan.csv"], "no folder"),
    ]  # fmt: skip
    # a name with console markup is shown as it is
    r = runner.invoke(
        app,
        ["campaign", "create", "[/]oops[bold]", "--starts", "2026-11-24", "--ends", "2026-12-01",
         "-d", str(db)],
    )  # fmt: skip
    assert r.exit_code == 0 and "[/]oops[bold]" in r.output, r.output
    r = runner.invoke(app, ["campaign", "list", "-d", str(db)])
    assert r.exit_code == 0 and "[/]oops[bold]" in r.output, r.output
    con = sqlite3.connect(db)
    before = con.execute("SELECT count(*) FROM gridmap_documents").fetchone()
    for args, said in bad:
        r = runner.invoke(app, [*args, "-d", str(db)])
        assert r.exit_code != 0 and said in r.output, (args, r.output)
    assert con.execute("SELECT count(*) FROM gridmap_documents").fetchone() == before
    con.close()
