"""Locust users of the load drill (benchmarks/drill_load.py starts locust with this file).

The mix a subdistrict's staff make: 60 % map pages and bbox reads, 25 % household lists
and details, 10 % edits (a GET for the ETag, then a PATCH with If-Match), 5 % locate,
nearest, statistics and visit records. Each user works as one of the sample's roles,
with what that role may see; ``GRIDMAP_DRILL`` (JSON, written by the drill) holds the
tokens, the household ids each may see and the subdistrict's extent.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import random
import time
import uuid
from typing import Any

from locust import FastHttpUser, between, events, task

DRILL: dict[str, Any] = json.loads(os.environ.get("GRIDMAP_DRILL", "{}"))
SEEN: list[tuple[float, str, float, int]] = []
"""Every request: (when, name, milliseconds, status), written out when locust quits."""


@events.request.add_listener
def _note(request_type: str, name: str, response_time: float, response: Any = None,
          exception: Any = None, **_: Any) -> None:  # fmt: skip
    status = getattr(response, "status_code", 0) or 0
    SEEN.append((time.time(), name, float(response_time), int(status)))


@events.quitting.add_listener
def _write(**_: Any) -> None:
    out = os.environ.get("GRIDMAP_DRILL_OUT")
    if out:
        with open(out, "w") as f:
            json.dump(SEEN, f)


_ROLES = itertools.cycle(DRILL.get("roles", []))
BEIJING = dt.timezone(dt.timedelta(hours=8))


def _bbox(rng: random.Random, size: float) -> str:
    """A view of ``size`` degrees somewhere inside the subdistrict."""
    x0, y0, x1, y1 = DRILL["extent"]
    x = rng.uniform(x0, max(x0, x1 - size))
    y = rng.uniform(y0, max(y0, y1 - size))
    return f"{x:.6f},{y:.6f},{x + size:.6f},{y + size:.6f}"


class Staff(FastHttpUser):
    """One member of staff with a browser and a phone."""

    wait_time = between(*DRILL.get("think", (0.5, 2.5)))

    def on_start(self) -> None:
        role = next(_ROLES)
        self.rng = random.Random()
        self.headers = {"Authorization": f"Bearer {role['token']}"}
        self.households: list[int] = role["households"]
        self.grid_ids: list[int] = role["grids"]
        self.cameras: bool = role["cameras"]  # grid workers and planners see none

    def _get(self, path: str, name: str, **params: Any) -> Any:
        return self.client.get(path, params=params or None, headers=self.headers, name=name)

    # 60 %: the map and bbox reads
    @task(10)
    def map_page(self) -> None:
        self._get("/map", "GET /map")

    @task(25)
    def map_layer(self) -> None:
        keys = ["grids", "toilets", "roads", "buildings", "households"]
        key = self.rng.choice(keys + (["cameras"] if self.cameras else []))
        self._get(f"/map/layers/{key}", "GET /map/layers/{key}", bbox=_bbox(self.rng, 0.01))

    @task(25)
    def bbox_items(self) -> None:
        layer = self.rng.choice(["buildings", "roads", "toilets", "grids"])
        self._get(f"/collections/{layer}/items", "GET /collections/{c}/items?bbox",
                  bbox=_bbox(self.rng, 0.006), limit=100)  # fmt: skip

    # 25 %: households
    @task(12)
    def household_list(self) -> None:
        self._get("/collections/households/items", "GET /collections/households/items",
                  grid_id=self.rng.choice(self.grid_ids), limit=50)  # fmt: skip

    @task(13)
    def household(self) -> None:
        fid = self.rng.choice(self.households)
        self._get(f"/collections/households/items/{fid}", "GET /collections/households/items/{id}")

    # 10 %: edits with If-Match
    @task(10)
    def edit(self) -> None:
        fid = self.rng.choice(self.households)
        path = f"/collections/households/items/{fid}"
        got = self._get(path, "GET /collections/households/items/{id} (before edit)")
        tag = got.headers.get("ETag")
        if not tag:
            return
        with self.client.patch(
            path,
            json={"properties": {"members": self.rng.randint(1, 6)}},
            headers={**self.headers, "If-Match": tag},
            name="PATCH /collections/households/items/{id}",
            catch_response=True,
        ) as r:
            if r.status_code == 412:  # another user edited it first: the protocol working
                r.success()

    # 5 %: locate, nearest, statistics, visit records
    @task(1)
    def locate(self) -> None:
        x0, y0, x1, y1 = DRILL["extent"]
        self._get(
            "/locate", "GET /locate", lon=self.rng.uniform(x0, x1), lat=self.rng.uniform(y0, y1)
        )

    @task(1)
    def nearest(self) -> None:
        x0, y0, x1, y1 = DRILL["extent"]
        self._get("/nearest", "GET /nearest", collection="toilets", k=3,
                  lon=self.rng.uniform(x0, x1), lat=self.rng.uniform(y0, y1))  # fmt: skip

    @task(1)
    def stats(self) -> None:
        self._get("/stats/grids", "GET /stats/{level}")

    @task(2)
    def visit(self) -> None:
        when = (dt.datetime.now(BEIJING) - dt.timedelta(minutes=5)).replace(microsecond=0)
        body = {"visits": [{
            "household_id": self.rng.choice(self.households), "outcome": "visited",
            "visited_at": when.isoformat(), "client_key": uuid.uuid4().hex,
        }]}  # fmt: skip
        self.client.post("/visits", json=body, headers=self.headers, name="POST /visits")
