"""Concurrency drill: racing edits of one feature, and many writers at once, against a real
server (uvicorn in a child process) over a copy of the sample.

* Racing pairs: two clients PATCH the same toilet with the same ``If-Match`` at the same
  moment, ``--pairs`` times. Exactly one of each pair must win (200) and the other get
  412; the toilet's version must rise by exactly the number of pairs and its last value
  be the last winner's: zero lost updates.
* Writers: ``--writers`` clients each create ``--each`` toilets at once (each with an
  ``Idempotency-Key``, resent after a 503 as its ``Retry-After`` says). No 500 may reach a
  client, and every acknowledged feature must be stored, once.

    .venv/bin/python -m benchmarks.drill_concurrency [--pairs 1000] [--writers 50]
        [--postgis]   (default: a copy of the sample GeoPackage)
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from benchmarks.drill_common import (
    admin_headers,
    drill_store,
    percentile_ms,
    stored_names,
    toilet,
)

TOILETS = "/collections/toilets/items"


@dataclass
class Races:
    """What the racing pairs came to."""

    pairs: int
    outcomes: Counter[tuple[int, int]] = field(default_factory=Counter)
    version_rise: int = 0
    last_value_kept: bool = False
    seconds: float = 0.0

    @property
    def lost_updates(self) -> int:
        """Wins the version does not show (a write that overwrote another unseen)."""
        wins = sum(n for (a, b), n in self.outcomes.items() if (a, b) == (200, 412))
        return wins - self.version_rise if wins >= self.version_rise else 0

    @property
    def clean(self) -> bool:
        """Every pair one winner and one 412, and nothing lost."""
        return (
            self.outcomes == Counter({(200, 412): self.pairs})
            and self.version_rise == self.pairs
            and self.last_value_kept
        )


def race_pairs(url: str, headers: dict[str, str], pairs: int) -> Races:
    """Race ``pairs`` pairs of PATCHes with the same If-Match on one new toilet."""
    out = Races(pairs)
    with httpx.Client(base_url=url, headers=headers, timeout=60) as c:
        made = c.post(TOILETS, json=toilet("竞争编辑"))
        made.raise_for_status()
        fid = made.json()["id"]
        first_version = int(made.headers["ETag"].rsplit("-v", 1)[1].rstrip('"'))
        clients = [httpx.Client(base_url=url, headers=headers, timeout=60) for _ in range(2)]
        start = time.perf_counter()
        winner_value = None
        try:
            for i in range(pairs):
                tag = c.get(f"{TOILETS}/{fid}").headers["ETag"]
                barrier = threading.Barrier(2)
                codes = [0, 0]
                values = [f"甲{i}", f"乙{i}"]

                def patch(k: int, tag: str = tag, barrier: Any = barrier, codes: Any = codes,
                          values: Any = values) -> None:  # fmt: skip
                    barrier.wait()
                    r = clients[k].patch(
                        f"{TOILETS}/{fid}",
                        json={"properties": {"open_hours": values[k]}},
                        headers={"If-Match": tag},
                    )
                    codes[k] = r.status_code

                threads = [threading.Thread(target=patch, args=(k,)) for k in (0, 1)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                out.outcomes[tuple(sorted(codes))] += 1  # type: ignore[index]
                if 200 in codes:
                    winner_value = values[codes.index(200)]
        finally:
            for cl in clients:
                cl.close()
        out.seconds = time.perf_counter() - start
        final = c.get(f"{TOILETS}/{fid}")
        version = int(final.headers["ETag"].rsplit("-v", 1)[1].rstrip('"'))
        out.version_rise = version - first_version
        out.last_value_kept = final.json()["properties"]["open_hours"] == winner_value
    return out


@dataclass
class Writers:
    """What many writers at once came to."""

    writers: int
    each: int
    statuses: Counter[int] = field(default_factory=Counter)
    acknowledged: dict[str, int] = field(default_factory=dict)  # name → id
    latencies: list[float] = field(default_factory=list)
    retry_after_missing: int = 0
    seconds: float = 0.0


def many_writers(url: str, headers: dict[str, str], writers: int, each: int, tag: str) -> Writers:
    """``writers`` clients each create ``each`` toilets named ``{tag}-w-i`` at once."""
    out = Writers(writers, each)
    lock = threading.Lock()
    barrier = threading.Barrier(writers)

    def work(w: int) -> None:
        with httpx.Client(base_url=url, headers=headers, timeout=120) as c:
            barrier.wait()
            for i in range(each):
                name = f"{tag}-{w}-{i}"
                key = str(uuid.uuid4())
                while True:
                    t = time.perf_counter()
                    r = c.post(TOILETS, json=toilet(name), headers={"Idempotency-Key": key})
                    took = time.perf_counter() - t
                    with lock:
                        out.statuses[r.status_code] += 1
                        out.latencies.append(took)
                        if r.status_code == 503 and "Retry-After" not in r.headers:
                            out.retry_after_missing += 1
                    if r.status_code == 503:
                        time.sleep(float(r.headers.get("Retry-After", "1")))
                        continue
                    if r.status_code == 201:
                        with lock:
                            out.acknowledged[name] = int(r.json()["id"])
                    break

    threads = [threading.Thread(target=work, args=(w,)) for w in range(writers)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.seconds = time.perf_counter() - start
    return out


def main() -> None:
    from api.server import gridmap_server

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--pairs", type=int, default=1000)
    ap.add_argument("--writers", type=int, default=50)
    ap.add_argument("--each", type=int, default=20)
    ap.add_argument("--postgis", action="store_true", help="over PostGIS (a throw-away cluster)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, drill_store(Path(tmp), args.postgis) as db:
        headers = admin_headers(db)
        kind = "PostGIS" if str(db).startswith("postgresql") else "GeoPackage"
        with gridmap_server(db, household_reads_per_minute="1000000", log_level="WARNING") as url:
            races = race_pairs(url, headers, args.pairs)
            tag = f"drill-{uuid.uuid4().hex[:8]}"
            w = many_writers(url, headers, args.writers, args.each, tag)
        stored = stored_names(db, tag)
    print(f"concurrency drill on {kind}")
    print(
        f"racing pairs: {args.pairs} in {races.seconds:.1f} s; outcomes "
        f"{dict(races.outcomes)}; version rose {races.version_rise}; last value kept: "
        f"{races.last_value_kept}; lost updates {races.lost_updates}; "
        f"{'PASS' if races.clean else 'FAIL'}"
    )
    dupes = sum(n - 1 for n in stored.values() if n > 1)
    missing = [n for n in w.acknowledged if stored.get(n, 0) == 0]
    ok = (
        w.statuses.get(500, 0) == 0
        and not dupes
        and not missing
        and w.retry_after_missing == 0
        and len(w.acknowledged) == args.writers * args.each
    )
    print(
        f"writers: {args.writers} × {args.each} creates in {w.seconds:.1f} s "
        f"({len(w.acknowledged) / w.seconds:.0f}/s); statuses {dict(w.statuses)}; "
        f"p50 {percentile_ms(w.latencies, 50):.0f} ms, "
        f"p99 {percentile_ms(w.latencies, 99):.0f} ms; "
        f"stored {sum(stored.values())}, duplicates {dupes}, acknowledged but missing "
        f"{len(missing)}; {'PASS' if ok else 'FAIL'}"
    )


if __name__ == "__main__":
    main()
