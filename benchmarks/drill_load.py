"""Load drill: locust (benchmarks/locustfile.py) against a real server over a copy of the
sample, on loopback, ramping to ``--users`` users for ``--minutes`` minutes; per endpoint
p50/p95/p99 and throughput, reads and writes against their targets, 5xx counted by both
locust and the server's own /metrics, the server's CPU and memory sampled every 5 s.

    .venv/bin/python -m benchmarks.drill_load [--users 200] [--minutes 10] [--workers 1]
        [--postgis]

Targets (a report, not a test): reads p95 ≤ 300 ms and p99 ≤ 800 ms, writes p99 ≤ 1 s,
no 5xx, memory flat after the warm-up (the first fifth of the run is left out).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from api.server import UVICORN_STACK, free_port, wait_until_up
from benchmarks.drill_common import drill_store, percentile_ms

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
WRITES = ("PATCH ", "POST ")
TARGETS = {"read_p95": 300.0, "read_p99": 800.0, "write_p99": 1000.0}


def drill_users(database: str | Path) -> dict[str, Any]:
    """Tokens of the sample's admin, community admin and grid worker, with the grids and
    household ids each may see, and the subdistrict's extent (for locustfile.py)."""
    from gridmap.accounts import Accounts, token_secret
    from gridmap.security import Role
    from gridmap.store import open_store

    store = open_store(database)
    try:
        accounts = Accounts(store, secret=token_secret(store), token_minutes=24 * 60)
        grids = store.query("grids")
        grid_of = store.values("households", "grid_id")
        by_community: dict[int, list[int]] = defaultdict(list)
        for gid, p in zip(grids.ids.tolist(), grids.properties, strict=True):
            by_community[int(p["community_id"])].append(int(gid))
        roles = []
        for u in store.users():
            role = Role(u["role"])
            if role is Role.SUBDISTRICT_ADMIN:
                seen = [int(g) for g in grids.ids.tolist()]
            elif role is Role.COMMUNITY_ADMIN:
                seen = by_community[int(u["community_id"])]
            elif role is Role.GRID_WORKER:
                seen = list(u["grid_ids"])
            else:
                continue
            ids = [h for h, g in grid_of.items() if g in set(seen)]
            token = accounts.issue(u["username"], role).access_token
            cameras = role is not Role.GRID_WORKER
            roles.append(
                {"token": token, "grids": seen, "households": ids[:5000], "cameras": cameras}
            )
        x0, y0, x1, y1 = store.extent("grids")  # type: ignore[misc]
    finally:
        store.close()
    return {"roles": roles, "extent": [x0, y0, x1, y1]}


@dataclass
class Sampler:
    """The server's CPU (% of one core, all its processes) and memory (RSS, MB) every 5 s."""

    pid: int
    every: float = 5.0
    samples: list[tuple[float, float, float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        known: dict[int, psutil.Process] = {}  # the same objects: cpu_percent is since last call
        start = time.monotonic()
        while True:
            try:
                root = psutil.Process(self.pid)
                for p in [root, *root.children(recursive=True)]:
                    if p.pid not in known:
                        known[p.pid] = p
                        p.cpu_percent(None)
                live = [p for p in known.values() if p.is_running()]
                cpu = sum(p.cpu_percent(None) for p in live)
                rss = sum(p.memory_info().rss for p in live) / 2**20
            except psutil.Error:
                cpu = rss = -1.0
            if rss >= 0 and time.monotonic() - start > 0.5:
                self.samples.append((time.monotonic() - start, cpu, rss))
            if self._stop.wait(self.every):
                return

    def __enter__(self) -> Sampler:
        self._thread = threading.Thread(target=self.run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Result:
    """What a load run measured."""

    seconds: float
    requests: list[tuple[float, str, float, int]]
    samples: list[tuple[float, float, float]]
    server_5xx: int
    users: int

    def by_endpoint(self) -> dict[str, list[tuple[float, int]]]:
        out: dict[str, list[tuple[float, int]]] = defaultdict(list)
        for _, name, ms, status in self.requests:
            out[name].append((ms, status))
        return dict(sorted(out.items()))

    def kind(self, writes: bool) -> list[float]:
        """Response times (s) of the reads, or of the writes."""
        return [ms / 1000 for _, n, ms, _ in self.requests if n.startswith(WRITES) == writes]

    @property
    def errors(self) -> int:
        return sum(1 for *_, s in self.requests if s == 0 or s >= 500)

    @property
    def client_5xx(self) -> int:
        return sum(1 for *_, s in self.requests if s >= 500)

    def memory_growth(self) -> tuple[float, float]:
        """RSS (MB) at the end of the warm-up and at the end of the run."""
        warm = [s for s in self.samples if s[0] >= self.seconds / 5]
        if len(warm) < 2:
            return (0.0, 0.0)
        third = max(1, len(warm) // 3)
        first = sum(s[2] for s in warm[:third]) / third
        last = sum(s[2] for s in warm[-third:]) / third
        return first, last


def run_load(database: str | Path, users: int, seconds: float, workers: int, folder: Path,
             think: tuple[float, float] = (0.5, 2.5)) -> Result:  # fmt: skip
    """Serve ``database`` (uvicorn, ``workers`` processes) and run locust against it."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    metrics_dir = folder / "metrics"
    metrics_dir.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "GRIDMAP_DATABASE": str(database),
        "GRIDMAP_LOG_LEVEL": "WARNING",
        "GRIDMAP_HOUSEHOLD_READS_PER_MINUTE": "1000000",  # one token stands for many staff
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    drill = {**drill_users(database), "think": think}
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "api.app:create_app", "--factory", "--host",
         "127.0.0.1", "--port", str(port), "--workers", str(workers), "--log-level", "warning",
         *UVICORN_STACK],
        env=env,
    )  # fmt: skip
    out = folder / "requests.json"
    try:
        wait_until_up(url + "/health")
        rate = max(1.0, users / max(1.0, seconds / 10))  # every user started by a tenth
        with Sampler(server.pid) as sampler:
            start = time.monotonic()
            subprocess.run(
                [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
                 "-u", str(users), "-r", f"{rate:.3f}", "-t", f"{int(seconds)}s", "--host", url,
                 "--only-summary", "--stop-timeout", "10", "--loglevel", "WARNING"],
                env={**os.environ, "GRIDMAP_DRILL": json.dumps(drill),
                     "GRIDMAP_DRILL_OUT": str(out)},
                check=False, capture_output=True,
            )  # fmt: skip
            took = time.monotonic() - start
        metrics = httpx.get(url + "/metrics", timeout=30).text
    finally:
        server.terminate()
        server.wait(timeout=60)
    return Result(took, json.loads(out.read_text()), sampler.samples, _server_5xx(metrics), users)


def _server_5xx(text: str) -> int:
    from prometheus_client.parser import text_string_to_metric_families

    total = 0
    for fam in text_string_to_metric_families(text):
        if fam.name == "gridmap_http_requests":
            for s in fam.samples:
                if s.name.endswith("_total") and s.labels["status"].startswith("5"):
                    total += int(s.value)
    return total


def report(r: Result, label: str) -> bool:
    """Print the figures; True if every target is met."""
    print(f"load drill: {label}, ramp to {r.users} users, {r.seconds:.0f} s, "
          f"{len(r.requests):,} requests ({len(r.requests) / r.seconds:.1f}/s)")  # fmt: skip
    print(
        f"{'endpoint':54} {'count':>7} {'4xx':>4} {'err':>4} {'p50':>6} {'p95':>6} {'p99':>6}  ms"
    )
    for name, rows in r.by_endpoint().items():
        ms = [m / 1000 for m, _ in rows]
        bad = sum(1 for _, s in rows if s == 0 or s >= 500)
        refused = sum(1 for _, s in rows if 400 <= s < 500)
        print(f"{name[:54]:54} {len(rows):7,} {refused:4} {bad:4} {percentile_ms(ms, 50):6.0f} "
              f"{percentile_ms(ms, 95):6.0f} {percentile_ms(ms, 99):6.0f}")  # fmt: skip
    reads, writes = r.kind(False), r.kind(True)
    figures = {
        "read_p95": percentile_ms(reads, 95),
        "read_p99": percentile_ms(reads, 99),
        "write_p99": percentile_ms(writes, 99),
    }
    met = {k: v <= TARGETS[k] for k, v in figures.items()}
    first, last = r.memory_growth()
    flat = last <= first * 1.10 + 20
    cpu = [s[1] for s in r.samples]
    said = {k: "met" if v else "MISSED" for k, v in met.items()}
    print(f"reads  p50 {percentile_ms(reads, 50):.0f} ms, p95 {figures['read_p95']:.0f} ms "
          f"(target ≤ 300: {said['read_p95']}), p99 "
          f"{figures['read_p99']:.0f} ms (≤ 800: {said['read_p99']})")  # fmt: skip
    print(f"writes p50 {percentile_ms(writes, 50):.0f} ms, p99 {figures['write_p99']:.0f} ms "
          f"(≤ 1000: {said['write_p99']})")  # fmt: skip
    print(f"errors: {r.errors} (5xx seen by locust {r.client_5xx}, counted by the server "
          f"{r.server_5xx})")  # fmt: skip
    if cpu:
        print(f"server CPU mean {sum(cpu) / len(cpu):.0f} % of a core (max {max(cpu):.0f} %); "
              f"memory after warm-up {first:.0f} MB → end {last:.0f} MB "
              f"({'flat' if flat else 'GROWING'})")  # fmt: skip
        marks = [
            r.samples[min(len(r.samples) - 1, k * (len(r.samples) - 1) // 5)] for k in range(6)
        ]
        print("memory over the run: " + ", ".join(f"{t:.0f} s {m:.0f} MB" for t, _, m in marks))
    return all(met.values()) and r.errors == 0 and r.server_5xx == 0 and flat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    ap.add_argument("--think", default="0.5,2.5", help="seconds between a user's requests")
    ap.add_argument("--postgis", action="store_true", help="over PostGIS (a throw-away cluster)")
    args = ap.parse_args()
    lo, hi = (float(x) for x in args.think.split(","))
    with tempfile.TemporaryDirectory() as tmp, drill_store(Path(tmp), args.postgis) as db:
        r = run_load(db, args.users, args.minutes * 60, args.workers, Path(tmp), (lo, hi))
    kind = "PostGIS" if args.postgis else "GeoPackage"
    ok = report(r, f"{kind}, {args.workers} worker process(es), think {args.think} s")
    print("all targets met" if ok else "NOT every target met")


if __name__ == "__main__":
    main()
