"""The README's curl examples work as written, for the roles they use, against the sample."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from api.server import gridmap_server
from tests.conftest import copy_database

README = Path(__file__).resolve().parents[1] / "README.md"
BASE = "http://127.0.0.1:8000"


def _commands() -> list[str]:
    """Every command line of the README's bash blocks that talks to the service."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    lines = [ln for b in blocks for ln in b.splitlines()]
    return [ln for ln in lines if BASE in ln and "curl " in ln and not ln.lstrip().startswith("#")]


@pytest.mark.gpkg_only  # the README runs the embedded GeoPackage
def test_readme_examples_run_as_written(
    sample_path: Path, tmp_path: Path, credentials: dict[str, tuple[str, str]]
) -> None:
    if shutil.which("curl") is None:
        pytest.fail("curl is needed to run the README's examples")
    db = tmp_path / "readme.gpkg"
    copy_database(sample_path, db)
    passwords = {user: pw for user, pw in credentials.values()}
    commands = _commands()
    assert len(commands) >= 15
    with gridmap_server(db) as url:
        script = ["set -euo pipefail", 'curl() { command curl -sS --fail-with-body "$@"; }']
        for k, cmd in enumerate(commands):
            cmd = cmd.replace(BASE, url)
            user = re.search(r"username=(\w+)", cmd)
            if user:
                cmd = cmd.replace("<printed password>", passwords[user.group(1)])
            script += [f"echo '@@{k}'", cmd, "echo"]
        done = subprocess.run(
            ["bash", "-c", "\n".join(script)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 0, done.stderr[-2000:] + done.stdout[-2000:]
    outputs = dict(
        (int(m.group(1)), m.group(2).strip())
        for m in re.finditer(r"@@(\d+)\n(.*?)(?=@@\d+\n|\Z)", done.stdout, re.S)
    )
    assert sorted(outputs) == list(range(len(commands)))
    for k, cmd in enumerate(commands):
        out = outputs[k]
        if "/items" in cmd and "-o " not in cmd and "-X" not in cmd and "items/" not in cmd:
            body = json.loads(out)
            assert body["numberReturned"] > 0, cmd  # every listing example finds something
        if "-X POST" in cmd:
            assert json.loads(out)["id"] > 0
        if "-X PATCH" in cmd:
            assert json.loads(out)["properties"]["open_hours"] == "24小时"
    assert (tmp_path / "hh.csv").read_text(encoding="utf-8-sig").startswith("gridmap_id,")
    # the campaign walk-through: files a phone, a spreadsheet and a browser open
    import pyogrio

    assert len(pyogrio.read_dataframe(tmp_path / "plan.gpx", layer="waypoints")) > 0
    assert (tmp_path / "roster.csv").read_text(encoding="utf-8-sig").startswith("路线,")
    assert "gm-stop" in (tmp_path / "plan.html").read_text(encoding="utf-8")
    assert "完成率" in (tmp_path / "coverage.html").read_text(encoding="utf-8")
    visits = next(json.loads(outputs[k]) for k, c in enumerate(commands) if "/visits" in c)
    assert visits["new"] == 1 and not visits["recorded"][0]["duplicate"]
    campaign = next(
        json.loads(outputs[k]) for k, c in enumerate(commands) if '/campaigns/$CAMPAIGN"' in c
    )
    assert sum(r["done"] for r in campaign["coverage"]["grids"]) == 1
    dry = next(json.loads(outputs[k]) for k, c in enumerate(commands) if "/import" in c)
    assert dry["unchanged"] > 0 and dry["inserted"] == dry["updated"] == 0 and not dry["committed"]
    said = {c.split(BASE)[1].split()[0].strip("'\""): outputs[k] for k, c in enumerate(commands)}
    assert json.loads(said["/health"]) == {"status": "ok"}
    assert json.loads(said["/ready"]) == {"status": "ready"}
    assert int(said["/metrics"]) > 3  # series of the requests the examples made
    route = next(json.loads(outputs[k]) for k, c in enumerate(commands) if "/routes/optimize" in c)
    assert route["mode"] == "walk" and route["routes"][0]["stops"]
