"""Serve the sample households from gridmap (GeoPackage and PostGIS), TiPG and pygeoapi.

One run, the same 15,024 households everywhere, one uvicorn worker (uvloop, httptools)
per server:

* gridmap over the built sample GeoPackage, as it runs (its encoded-feature cache warms up
  with the first requests) and "cold" (``GRIDMAP_FEATURE_CACHE=0``: every feature read
  and encoded for every request);
* gridmap over PostGIS, the same two ways: the GeoPackage copied with
  ``gridmap.transfer.copy_store`` into a new database of a throw-away PostgreSQL + PostGIS
  cluster (``tests.postgres``; Debian's ``postgresql postgis`` packages);
* TiPG (developmentseed) over that same database and table (``public.households``), in
  its own scratch virtual environment (``pip install tipg uvicorn[standard]``), run as
  ``uvicorn tipg.main:app``;
* pygeoapi's PostgreSQL provider over that same table, in its own scratch virtual
  environment (``pip install pygeoapi psycopg2-binary sqlalchemy geoalchemy2
  uvicorn[standard] starlette``), served by uvicorn (Starlette app).

The same requests go to each, sequentially over a keep-alive connection and with 4
concurrent clients (each with its own bboxes): ``items?bbox=…&limit=100`` for one bbox
and for a list of varying bboxes, and a single item. Every client asks for an
uncompressed answer (``Accept-Encoding: identity``: TiPG would otherwise spend time
compressing, the others do not compress). Before timing, every request of every case is
asked of every server, and all must return the same features (ids and numberMatched of
each page; id, coordinates and the properties gridmap does not mask for the single
item); each client then warms up before its timed requests. gridmap is asked as its
subdistrict admin (every household read is checked and audited, so the figures include
the audit write); the anchors have no access control.

Printed: requests/s, p50 and p99 latency, answer bytes, and each gridmap row's
requests/s as a multiple of TiPG's and of pygeoapi's.

At city scale, ``--database postgresql://…`` measures over an existing PostGIS store
instead (``gridmap city --subdistricts 67``: a million households; the first subdistrict
lies where the sample does, so the one bbox and the single item are the same requests),
gridmap on PostGIS only, the varying bboxes drawn over all its households.

Run: ``.venv/bin/python -m benchmarks.bench_ogcapi [--requests 300] [--database URL]``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import dataclasses
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg

from api.server import UVICORN_STACK, free_port, gridmap_server, running
from gridmap.accounts import Accounts, seed_sample_users, token_secret
from gridmap.sample import build_demo
from gridmap.security import Role
from gridmap.store import open_store
from gridmap.transfer import copy_store
from tests import postgres

BBOX = "113.285,34.805,113.295,34.815"
HOUSEHOLD = 1234
WARM_UP = 10  # untimed requests per client before the timed ones
IDENTITY = {"Accept-Encoding": "identity"}


@dataclasses.dataclass(frozen=True)
class Server:
    """One service under test: where it is, its households collection, how to ask it."""

    name: str
    base: str
    collection: str = "households"
    headers: dict[str, str] = dataclasses.field(default_factory=dict)

    def url(self, path: str) -> str:
        """The URL of ``path`` (relative to the households collection)."""
        return f"{self.base}/collections/{self.collection}/{path}"


def run(cmd: list[str], **kw: Any) -> None:
    """Run ``cmd`` quietly; its output is shown only if it fails."""
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd[:4])} … failed ({done.returncode}):\n{done.stdout[-3000:]}")


def scratch_venv(folder: Path, packages: list[str]) -> Path:
    """A new virtual environment in ``folder`` with ``packages``; its bin folder."""
    run([sys.executable, "-m", "venv", str(folder)])
    pip = [str(folder / "bin" / "python"), "-m", "pip", "install", "-q"]
    run([*pip, "--disable-pip-version-check", *packages])
    return folder / "bin"


def version(bindir: Path, package: str) -> str:
    code = f"import importlib.metadata as m; print(m.version({package!r}))"
    out = subprocess.run(
        [str(bindir / "python"), "-c", code], check=True, capture_output=True, text=True
    )
    return out.stdout.strip()


def pygeoapi_command(work: Path, database: str) -> tuple[list[str], str, dict[str, str], str]:
    """Install and configure pygeoapi over gridmap's households table in ``database``;
    return its server command, URL, environment and version."""
    bindir = scratch_venv(
        work / "pygeoapi-venv",
        ["pygeoapi", "psycopg2-binary", "sqlalchemy", "geoalchemy2", "uvicorn[standard]",
         "starlette"],
    )  # fmt: skip
    db = psycopg.conninfo.conninfo_to_dict(database)
    password = db.get("password", "unused")  # the throw-away cluster trusts local users
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
                data: {{host: '{db["host"]}', port: {db["port"]}, dbname: '{db["dbname"]}',
                        user: '{db["user"]}', password: '{password}', search_path: [public]}}
                id_field: fid
                table: households
                geom_field: geom
    """)
    )
    openapi = work / "pygeoapi-openapi.yml"
    env = {"PYGEOAPI_CONFIG": str(config), "PYGEOAPI_OPENAPI": str(openapi)}
    run(
        [str(bindir / "pygeoapi"), "openapi", "generate", str(config), "--output-file",
         str(openapi)],
        env={**os.environ, **env},
    )  # fmt: skip
    command = [
        str(bindir / "uvicorn"), "pygeoapi.starlette_app:APP",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", *UVICORN_STACK,
    ]  # fmt: skip
    return command, url, env, version(bindir, "pygeoapi")


def tipg_command(work: Path, database: str) -> tuple[list[str], str, dict[str, str], str]:
    """Install and configure TiPG over gridmap's households table in ``database``; return
    its server command, URL, environment and version.

    Settings (environment, as TiPG reads them): ``DATABASE_URL``; only the households
    table is published (``TIPG_DB_SCHEMAS``, ``TIPG_DB_TABLES``; gridmap's other tables
    are not part of the comparison); ``TIPG_CATALOG_TTL=0`` so that it does not re-read
    the database catalog every 5 minutes in the middle of a timed run. Its primary key
    (``fid``) is found in the catalog and is the feature id; ``limit=100`` is within its
    ``TIPG_MAX_FEATURES_PER_QUERY`` (10,000).
    """
    bindir = scratch_venv(work / "tipg-venv", ["tipg", "uvicorn[standard]"])
    port = free_port()
    env = {
        "DATABASE_URL": database,
        "TIPG_DB_SCHEMAS": '["public"]',
        "TIPG_DB_TABLES": '["public.households"]',
        "TIPG_CATALOG_TTL": "0",
    }
    command = [
        str(bindir / "uvicorn"), "tipg.main:app",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", *UVICORN_STACK,
    ]  # fmt: skip
    return command, f"http://127.0.0.1:{port}", env, version(bindir, "tipg")


SUBDISTRICT = (113.275, 34.795, 113.31, 34.825)
"""Where the sample's households are (lon/lat box); the varying bboxes are drawn in it."""


def varying_bboxes(
    n: int, seed: int = 7, area: tuple[float, float, float, float] = SUBDISTRICT
) -> list[str]:
    """``n`` items paths with 300–1,000 m bboxes spread over ``area`` (fixed seed)."""
    rng = np.random.default_rng(seed)
    out = []
    x0, y0, x1, y1 = area
    for _ in range(n):
        w = rng.uniform(0.003, 0.011)
        x = rng.uniform(x0, x1 - w)
        y = rng.uniform(y0, y1 - w)
        out.append(f"items?bbox={x:.5f},{y:.5f},{x + w:.5f},{y + w:.5f}&limit=100")
    return out


def measure(
    server: Server, paths: list[str], n: int, clients: int
) -> tuple[float, float, float, int]:
    """(requests/s, p50 ms, p99 ms, bytes of the last answer) for ``n`` GETs cycling
    ``paths``, after a few untimed ones per client."""

    def worker(client: int) -> tuple[list[float], int]:
        lat = []
        size = 0
        first = client * per  # each client walks its own part of ``paths``
        urls = [server.url(paths[(first + k) % len(paths)]) for k in range(per)]
        with httpx.Client(timeout=30, headers={**IDENTITY, **server.headers}) as c:
            for url in urls[:WARM_UP]:
                c.get(url).raise_for_status()
            barrier.wait()
            for url in urls:
                t = time.perf_counter()
                r = c.get(url)
                lat.append(time.perf_counter() - t)
                if r.status_code != 200:
                    raise RuntimeError(f"{url}: {r.status_code} {r.text[:200]}")
                size = len(r.content)
        return lat, size

    per = n // clients
    barrier = threading.Barrier(clients + 1, timeout=600)  # warm-ups done: timing starts
    with cf.ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(worker, k) for k in range(clients)]
        barrier.wait()
        start = time.perf_counter()
        results = [f.result() for f in futures]
    wall = time.perf_counter() - start
    lat = np.concatenate([np.array(r[0]) for r in results]) * 1000
    return (
        per * clients / wall,
        float(np.percentile(lat, 50)),
        float(np.percentile(lat, 99)),
        results[0][1],
    )


# gridmap masks these for its admin (phone and id number shown in part)
_MASKED = {"phone", "id_number"}


def _canonical(value: Any) -> Any:
    """A property value as both sides mean it: timestamps parsed (gridmap writes UTC with
    an offset, the anchors the database's naive timestamp), everything else as is."""
    if isinstance(value, str) and len(value) >= 19 and value[4] == "-" and value[10] == "T":
        with contextlib.suppress(ValueError):
            t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
            return t.astimezone(dt.UTC).replace(tzinfo=None) if t.tzinfo else t
    return value


def essence(answer: dict[str, Any]) -> Any:
    """What must be equal between servers: ids (as integers) and numberMatched for a
    page; id, coordinates and unmasked properties for a single feature."""
    if "features" in answer:
        ids = sorted(int(f["id"]) for f in answer["features"])
        return ("page", ids, answer.get("numberMatched"))
    props = answer["properties"]
    return (
        "feature",
        int(answer["id"]),
        [round(c, 9) for c in answer["geometry"]["coordinates"]],
        {k: _canonical(v) for k, v in props.items() if k not in _MASKED},
    )


def same_answers(servers: list[Server], paths: list[str]) -> int:
    """Ask every server every path; exit unless all return the same features as the
    first (gridmap). Only gridmap's properties are compared (the anchors may publish more
    columns, e.g. ``version``), except those gridmap masks."""
    with contextlib.ExitStack() as stack:
        clients = [
            stack.enter_context(httpx.Client(timeout=120, headers={**IDENTITY, **s.headers}))
            for s in servers
        ]
        for path in paths:
            answers = []
            for s, c in zip(servers, clients, strict=True):
                r = c.get(s.url(path))
                if r.status_code != 200:
                    sys.exit(f"{s.name} {path}: {r.status_code} {r.text[:300]}")
                answers.append(essence(r.json()))
            ref = answers[0]
            for s, got in zip(servers[1:], answers[1:], strict=True):
                if ref[0] == "feature":
                    got = (*got[:3], {k: got[3].get(k) for k in ref[3]})
                if got != ref:
                    sys.exit(
                        f"{path}: {s.name} answers differently from {servers[0].name}:\n"
                        f"  {servers[0].name}: {json.dumps(ref, default=str)[:600]}\n"
                        f"  {s.name}: {json.dumps(got, default=str)[:600]}"
                    )
    return len(paths)


ANCHORS = ("TiPG", "pygeoapi")


def compare(
    servers: list[Server], requests: int, area: tuple[float, float, float, float] = SUBDISTRICT
) -> None:
    """Check the servers answer alike, then measure and print the table."""
    cases = [
        ("items, one bbox", ["items?bbox=" + BBOX + "&limit=100"]),
        ("items, varying bbox", varying_bboxes(requests, area=area)),
        ("single item", [f"items/{HOUSEHOLD}"]),
    ]
    checked = sum(same_answers(servers, paths) for _, paths in cases)
    print(f"same features from all {len(servers)} servers for all {checked} distinct requests")
    head = (
        f"{'request':<21}{'clients':>8}  {'server':<19}{'req/s':>8}{'p50 ms':>8}"
        f"{'p99 ms':>8}{'bytes':>8}{'×TiPG':>8}{'×pygeoapi':>10}"
    )
    print(head)
    print("-" * len(head))
    for label, paths in cases:
        for clients in (1, 4):
            rows = {s.name: measure(s, paths, requests, clients) for s in servers}
            for name, m in rows.items():
                ratios = ["" if name in ANCHORS else f"{m[0] / rows[a][0]:.1f}×" for a in ANCHORS]
                print(
                    f"{label:<21}{clients:>8}  {name:<19}{m[0]:>8.1f}{m[1]:>8.1f}{m[2]:>8.1f}"
                    f"{m[3]:>8}{ratios[0]:>8}{ratios[1]:>10}",
                    flush=True,
                )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument(
        "--database",
        help="measure over this PostGIS store instead of the sample (e.g. one `gridmap city "
        "--subdistricts 67` filled: a million households); gridmap on PostGIS against the "
        "anchors only, varying bboxes drawn over its households; sample users are added "
        "to it if it has none",
    )
    args = ap.parse_args()
    if (reason := postgres.unavailable()) is not None:
        sys.exit(reason)
    work = Path(tempfile.mkdtemp(prefix="gridmap-bench-"))
    cluster: postgres.Cluster | None = None
    try:
        with contextlib.ExitStack() as stack:
            if args.database:
                database, gpkg = args.database, None
            else:
                gpkg = work / "zhongxinlu.gpkg"
                build_demo(gpkg, today=dt.date(2026, 11, 24)).close()
                print("starting PostgreSQL + PostGIS, copying the sample into it …", flush=True)
                cluster = postgres.start()
                database = cluster.new_database("bench")
                t = time.perf_counter()
                copy_store(gpkg, database)
                print(f"  copied in {time.perf_counter() - t:.1f} s", flush=True)
            token, area = _admin_token(database)
            with psycopg.connect(database, autocommit=True) as c:
                c.execute("VACUUM ANALYZE")  # as a loaded database would be
                (n,) = c.execute("SELECT count(*) FROM households").fetchone()
            print(f"{n:,} households", flush=True)
            print("installing TiPG and pygeoapi into scratch venvs …", flush=True)
            with cf.ThreadPoolExecutor(2) as pool:
                tipg = pool.submit(tipg_command, work, database)
                pygeoapi = pool.submit(pygeoapi_command, work, database)
                tipg_cmd, tipg_url, tipg_env, tipg_version = tipg.result()
                py_cmd, py_url, py_env, py_version = pygeoapi.result()
            print(f"TiPG {tipg_version}, pygeoapi {py_version}", flush=True)
            tipg_url = stack.enter_context(
                running(tipg_cmd, url=tipg_url, env=tipg_env, probe="/conformance")
            )
            py_url = stack.enter_context(
                running(py_cmd, url=py_url, env=py_env, probe="/conformance")
            )
            reads = {"household_reads_per_minute": "100000000"}
            auth = {"Authorization": f"Bearer {token}"}
            stores = [("gridmap gpkg", gpkg), ("gridmap PostGIS", database)]
            gridmap = [
                Server(
                    name + cold,
                    stack.enter_context(gridmap_server(db, **reads, **extra)),
                    headers=auth,
                )
                for name, db in stores
                if db is not None
                for cold, extra in [("", {}), (" cold", {"feature_cache": "0"})]
            ]
            anchors = [
                Server("TiPG", tipg_url, collection="public.households"),
                Server("pygeoapi", py_url),
            ]
            compare([*gridmap, *anchors], args.requests, area)
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


def _admin_token(database: str | Path) -> tuple[str, tuple[float, float, float, float]]:
    """A day's token of the subdistrict admin (the sample users are added to a store that
    has none) and the box where the store's households are."""
    store = open_store(database)
    try:
        if not store.users():
            seed_sample_users(store)
        accounts = Accounts(store, secret=token_secret(store), token_minutes=24 * 60)
        token = accounts.issue("admin", Role.SUBDISTRICT_ADMIN).access_token
        area = store.extent("households") or SUBDISTRICT
    finally:
        store.close()
    return token, area


if __name__ == "__main__":
    main()
