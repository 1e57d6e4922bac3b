"""Serve the sample households from gridmap and from pygeoapi (PostgreSQL provider) and compare.

Everything the anchor needs is set up by this script, in a scratch folder:

* a throw-away PostgreSQL + PostGIS cluster from Debian's packages (``apt-get install
  postgresql postgis`` once; the script runs ``initdb`` as the ``postgres`` user on a free
  port and removes the cluster at the end), loaded with the same 15,024 households;
* pygeoapi in its own virtual environment (``pip install pygeoapi psycopg2-binary
  sqlalchemy geoalchemy2 uvicorn[standard] starlette``), configured as a user would for this
  data: its PostgreSQL provider over that table, served by uvicorn (Starlette app);
* gridmap over the GeoPackage, twice: as it runs (its encoded-feature cache warms up with
  the first requests) and with the cache off (``GRIDMAP_FEATURE_CACHE=0``: every feature
  read from SQLite and encoded for every request, the "cold" row).

Every server runs on the same stack: one uvicorn worker with uvloop and httptools. The same
requests go to each, sequentially over a keep-alive connection and with 4 concurrent
clients (each with its own bboxes): ``items?bbox=…&limit=100`` for one bbox and for a list
of varying bboxes, and a single item. Before timing, every request of every case is asked
of both and must return the same features. Printed: requests/s, p50 and p99 latency, and
each gridmap row as a multiple of pygeoapi's.

Run: ``.venv/bin/python -m benchmarks.bench_ogcapi [--requests 300]``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import csv
import datetime as dt
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx
import numpy as np
import shapely

from api.server import UVICORN_STACK, free_port, gridmap_server, running
from gridmap.accounts import Accounts, seed_sample_users, token_secret
from gridmap.sample import build_demo
from gridmap.security import Role

PG_BIN = Path("/usr/lib/postgresql/15/bin")
BBOX = "113.285,34.805,113.295,34.815"
HOUSEHOLD = 1234


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def,type-arg]
    return subprocess.run(cmd, check=True, **kw)


def as_postgres(cmd: list[str], **kw) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def,type-arg]
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    return run(cmd, **kw)


def start_postgis(work: Path, gpkg: Path) -> tuple[subprocess.Popen, int, Path]:  # type: ignore[type-arg]
    if not (PG_BIN / "initdb").exists():
        sys.exit("PostgreSQL 15 is not installed: apt-get install postgresql postgis")
    data = work / "pgdata"
    sock = work / "pgsock"
    data.mkdir()
    sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(work, "postgres")
        shutil.chown(data, "postgres")
        shutil.chown(sock, "postgres")
    as_postgres(
        [str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
        stdout=subprocess.DEVNULL,
    )
    port = free_port()
    cmd = [
        str(PG_BIN / "postgres"),
        "-D",
        str(data),
        "-p",
        str(port),
        "-k",
        str(sock),
        "-c",
        "listen_addresses=127.0.0.1",
        "-c",
        "fsync=off",
    ]
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        if (
            subprocess.run(
                ["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-c", "select 1"],
                capture_output=True,
            ).returncode
            == 0
        ):
            break
        time.sleep(0.2)
    psql = [
        "psql",
        "-q",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-U",
        "postgres",
        "-v",
        "ON_ERROR_STOP=1",
    ]
    run([*psql, "-c", "CREATE DATABASE bench"])
    psql = [*psql, "-d", "bench"]
    run([*psql, "-c", "CREATE EXTENSION postgis"])
    run(
        [
            *psql,
            "-c",
            textwrap.dedent("""
        CREATE TABLE households (
          fid integer PRIMARY KEY, building_id integer, grid_id integer, room text,
          head_name text, phone text, id_number text, members integer, tags text,
          last_visit_at timestamp, last_visit_status text, geom geometry(Point, 4326));
    """),
        ]
    )
    # export from the GeoPackage with gridmap itself, load with COPY
    from gridmap.store import open_store

    store = open_store(gpkg)
    fs = store.query("households")
    store.close()
    rows = work / "households.csv"
    with rows.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        for fid, p, g in zip(fs.ids.tolist(), fs.properties, fs.geometries, strict=True):
            w.writerow(
                [
                    fid,
                    p["building_id"],
                    p["grid_id"],
                    p["room"],
                    p["head_name"],
                    p["phone"],
                    p["id_number"],
                    p["members"],
                    ",".join(p["tags"]),
                    p["last_visit_at"] or "",
                    p["last_visit_status"] or "",
                    "SRID=4326;" + shapely.to_wkt(g, rounding_precision=-1),
                ]
            )
    run([*psql, "-c", f"\\copy households FROM '{rows}' WITH (FORMAT csv, NULL '')"])
    run([*psql, "-c", "CREATE INDEX ON households USING gist (geom); ANALYZE households"])
    return proc, port, sock


def pygeoapi_command(work: Path, pg_port: int) -> tuple[list[str], str, dict[str, str]]:
    """Install and configure pygeoapi; return its server command, URL and environment."""
    venv = work / "pygeoapi-venv"
    run([sys.executable, "-m", "venv", str(venv)])
    pip = [
        str(venv / "bin" / "python"),
        "-m",
        "pip",
        "install",
        "-q",
        "--disable-pip-version-check",
    ]
    run(
        [
            *pip,
            "pygeoapi",
            "psycopg2-binary",
            "sqlalchemy",
            "geoalchemy2",
            "uvicorn[standard]",
            "starlette",
        ],
        stdout=subprocess.DEVNULL,
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = work / "pygeoapi.yml"
    config.write_text(
        textwrap.dedent(f"""
        server:
          bind: {{host: 127.0.0.1, port: {port}}}
          url: {url}
          mimetype: application/json; charset=UTF-8
          encoding: utf-8
          languages: [en-US]
          cors: false
          pretty_print: false
          limits: {{default_items: 100, max_items: 1000}}
          map:
            url: https://tile.openstreetmap.org/{{z}}/{{x}}/{{y}}.png
            attribution: OpenStreetMap
        logging:
          level: ERROR
        metadata:
          identification:
            title: bench
            description: bench
            keywords: [bench]
            keywords_type: theme
            terms_of_service: https://creativecommons.org/licenses/by/4.0/
            url: {url}
          license: {{name: CC-BY 4.0, url: https://creativecommons.org/licenses/by/4.0/}}
          provider: {{name: bench, url: {url}}}
          contact: {{name: bench, position: bench, address: bench, city: bench,
                     stateorprovince: bench, postalcode: '0', country: CN, phone: '0',
                     fax: '0', email: a@b.c, url: {url}, hours: '0', instructions: '0',
                     role: pointOfContact}}
        resources:
          households:
            type: collection
            title: households
            description: households
            keywords: [households]
            extents:
              spatial: {{bbox: [113.2, 34.7, 113.4, 34.9],
                        crs: http://www.opengis.net/def/crs/OGC/1.3/CRS84}}
            providers:
              - type: feature
                name: PostgreSQL
                data: {{host: 127.0.0.1, port: {pg_port}, dbname: bench, user: postgres,
                        password: postgres, search_path: [public]}}
                id_field: fid
                table: households
                geom_field: geom
    """)
    )
    openapi = work / "pygeoapi-openapi.yml"
    env = {"PYGEOAPI_CONFIG": str(config), "PYGEOAPI_OPENAPI": str(openapi)}
    run(
        [
            str(venv / "bin" / "pygeoapi"),
            "openapi",
            "generate",
            str(config),
            "--output-file",
            str(openapi),
        ],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
    )
    command = [
        str(venv / "bin" / "uvicorn"), "pygeoapi.starlette_app:APP",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", *UVICORN_STACK,
    ]  # fmt: skip
    return command, url, env


def varying_bboxes(n: int, seed: int = 7) -> list[str]:
    """``n`` bbox paths of 300–1,000 m boxes spread over the subdistrict (fixed seed)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        w = rng.uniform(0.003, 0.011)
        x = rng.uniform(113.275, 113.31 - w)
        y = rng.uniform(34.795, 34.825 - w)
        out.append(
            f"/collections/households/items?bbox={x:.5f},{y:.5f},{x + w:.5f},{y + w:.5f}&limit=100"
        )
    return out


def measure(
    base: str, paths: list[str], n: int, clients: int, headers: dict[str, str]
) -> tuple[float, float, float, int]:
    """(requests/s, p50 ms, p99 ms, bytes of the last answer) for ``n`` GETs cycling ``paths``."""

    def worker(client: int) -> tuple[list[float], int]:
        lat = []
        size = 0
        first = client * per  # each client walks its own part of ``paths``
        with httpx.Client(timeout=30, headers=headers) as c:
            c.get(base + "/conformance")  # open the connection
            for k in range(per):
                url = base + paths[(first + k) % len(paths)]
                t = time.perf_counter()
                r = c.get(url)
                lat.append(time.perf_counter() - t)
                if r.status_code != 200:
                    raise RuntimeError(f"{url}: {r.status_code} {r.text[:200]}")
                size = len(r.content)
        return lat, size

    per = n // clients
    start = time.perf_counter()
    with cf.ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(worker, range(clients)))
    wall = time.perf_counter() - start
    lat = np.concatenate([np.array(r[0]) for r in results]) * 1000
    return (
        per * clients / wall,
        float(np.percentile(lat, 50)),
        float(np.percentile(lat, 99)),
        results[0][1],
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=300)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gridmap-bench-"))
    pg: subprocess.Popen | None = None  # type: ignore[type-arg]
    try:
        with contextlib.ExitStack() as stack:
            gpkg = work / "zhongxinlu.gpkg"
            store = build_demo(gpkg, today=dt.date(2026, 11, 24))
            seed_sample_users(store)
            accounts = Accounts(store, secret=token_secret(store), token_minutes=24 * 60)
            token = accounts.issue("admin", Role.SUBDISTRICT_ADMIN).access_token
            store.close()
            if os.geteuid() == 0:
                shutil.chown(gpkg, "postgres")
            pg, pg_port, _ = start_postgis(work, gpkg)
            print("starting pygeoapi (installing it into a scratch venv) …", flush=True)
            command, url, env = pygeoapi_command(work, pg_port)
            py_url = stack.enter_context(running(command, url=url, env=env, probe="/conformance"))
            gm_url = stack.enter_context(
                gridmap_server(gpkg, household_reads_per_minute="100000000")
            )
            cold_url = stack.enter_context(
                gridmap_server(gpkg, household_reads_per_minute="100000000", feature_cache="0")
            )
            servers = {"gridmap": gm_url, "gridmap cold": cold_url}
            compare(py_url, servers, args.requests, {"Authorization": f"Bearer {token}"})
    finally:
        if pg is not None:
            pg.terminate()
            pg.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


# Fields the two servers write differently: masked for gridmap's admin, a JSON list
# against pygeoapi's text column, a timestamp format.
_DIFFERENT = {"phone", "id_number", "tags", "last_visit_at"}


def same_answers(py_url: str, gm_url: str, paths: list[str], auth: dict[str, str]) -> int:
    """Ask every path of both servers; exit unless each returns the same features."""
    with httpx.Client(timeout=60) as c:
        for path in paths:
            a = c.get(gm_url + path, headers=auth).json()
            b = c.get(py_url + path + ("&" if "?" in path else "?") + "f=json").json()
            if "features" in a:
                same = sorted(f["id"] for f in a["features"]) == sorted(
                    int(f["id"]) for f in b["features"]
                ) and a["numberMatched"] == b.get("numberMatched")
            else:
                same = (
                    a["id"] == int(b["id"])
                    and _rounded(a["geometry"]["coordinates"])
                    == _rounded(b["geometry"]["coordinates"])
                    and all(
                        str(b["properties"].get(k)) == str(v)
                        for k, v in a["properties"].items()
                        if k not in _DIFFERENT
                    )
                )
            if not same:
                sys.exit(f"{path}: the two servers answer differently; fix the configuration")
    return len(paths)


def _rounded(coords: list[float]) -> list[float]:
    return [round(c, 9) for c in coords]


def compare(py_url: str, servers: dict[str, str], requests: int, auth: dict[str, str]) -> None:
    """Check the servers answer alike, then measure and print the table.

    gridmap is asked as its subdistrict admin (households are not public there; every
    household read is audited, so the figures include the audit write); pygeoapi has no
    access control. "gridmap" answers from its encoded-feature cache once warm;
    "gridmap cold" has the cache off.
    """
    cases = [
        ("items, one bbox", ["/collections/households/items?bbox=" + BBOX + "&limit=100"]),
        ("items, varying bbox", varying_bboxes(requests)),
        ("single item", [f"/collections/households/items/{HOUSEHOLD}"]),
    ]
    checked = sum(same_answers(py_url, servers["gridmap"], paths, auth) for _, paths in cases)
    print(f"same features from both for all {checked} distinct requests")
    print(
        f"{'request':<22}{'clients':>8}{'server':>14}{'req/s':>10}{'p50 ms':>9}"
        f"{'p99 ms':>9}{'bytes':>9}{'ratio':>8}"
    )
    for label, paths in cases:
        for clients in (1, 4):
            anchor = measure(py_url, paths, requests, clients, {})
            rows = [("pygeoapi", anchor)] + [
                (name, measure(url, paths, requests, clients, auth))
                for name, url in servers.items()
            ]
            for name, m in rows:
                ratio = f"{m[0] / anchor[0]:7.1f}x" if name != "pygeoapi" else ""
                print(
                    f"{label:<22}{clients:>8}{name:>14}{m[0]:>10.1f}{m[1]:>9.1f}{m[2]:>9.1f}"
                    f"{m[3]:>9}{ratio:>8}"
                )


if __name__ == "__main__":
    main()
