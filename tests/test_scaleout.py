"""Several API processes over one store (the backend under test): what one process writes,
the others serve at once or within moments, and rate limits count across all of them."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from api.server import gridmap_server
from gridmap.errors import RateLimitedError
from gridmap.ratelimit import RateLimiter
from gridmap.store import FeatureStore, open_store
from tests.conftest import raw_sql, tokens_for

pytestmark = pytest.mark.slow

AGREE_S = 5.0
"""How long another process may serve what it had before a write (on PostGIS its change
notification is under way; on GeoPackage it reads the file's change counter every time)."""


def _until(check: Callable[[], bool], timeout: float = AGREE_S) -> float:
    """Seconds until ``check()`` holds; AssertionError after ``timeout``."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"the processes did not agree within {timeout} s")
        time.sleep(0.02)
    return time.monotonic() - start


@pytest.fixture
def two(edit_path: Path | str) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    """Two API processes over one store, each with a client as the subdistrict admin."""
    admin = tokens_for(edit_path)["subdistrict_admin"]
    with (
        gridmap_server(edit_path, household_reads_per_minute="100000") as a,
        gridmap_server(edit_path, household_reads_per_minute="100000") as b,
        httpx.Client(base_url=a, headers=admin, timeout=30) as ca,
        httpx.Client(base_url=b, headers=admin, timeout=30) as cb,
    ):
        yield ca, cb


def test_an_edit_through_one_process_is_served_by_the_other(
    two: tuple[httpx.Client, httpx.Client], edit_path: Path | str
) -> None:
    """B has the toilet, the toilets page and the overview map cached; A changes the toilet.
    B then serves the new version everywhere, and refuses the old ETag (412)."""
    a, b = two
    url = "/collections/toilets/items"
    fid = b.get(url, params={"limit": 1, "status": "existing"}).json()["features"][0]["id"]
    old = b.get(f"{url}/{fid}")
    assert old.status_code == 200
    page = {"limit": 1000, "status": "under_construction"}
    before = {f["id"] for f in b.get(url, params=page).json()["features"]}
    assert fid not in before
    assert b.get("/map").status_code == 200  # the page and its layers cached in B
    assert b.get("/map/layers/toilets").status_code == 200

    r = a.patch(
        f"{url}/{fid}",
        json={"properties": {"name": "扩容改造测试厕所", "status": "under_construction"}},
        headers={"If-Match": old.headers["etag"], "Content-Type": "application/merge-patch+json"},
    )
    assert r.status_code == 200, r.text
    new_tag = r.headers["etag"]
    # what the database holds, read by another client
    stored = raw_sql(edit_path, "SELECT name FROM toilets WHERE fid = ?", fid)
    assert stored == [("扩容改造测试厕所",)]

    _until(lambda: b.get(f"{url}/{fid}").headers["etag"] == new_tag)
    assert b.get(f"{url}/{fid}").json()["properties"]["name"] == "扩容改造测试厕所"
    _until(lambda: fid in {f["id"] for f in b.get(url, params=page).json()["features"]})
    _until(lambda: "扩容改造测试厕所" in b.get("/map/layers/toilets").text)
    stale = b.patch(
        f"{url}/{fid}",
        json={"properties": {"name": "旧版本的修改"}},
        headers={"If-Match": old.headers["etag"], "Content-Type": "application/merge-patch+json"},
    )
    assert stale.status_code == 412


def test_a_user_disabled_elsewhere_is_refused_by_every_process(
    two: tuple[httpx.Client, httpx.Client], edit_path: Path | str
) -> None:
    """Both processes remember the worker's verified token; a third program disables the
    account (as `gridmap user disable` would). Neither process accepts the token again."""
    a, b = two
    tokens = tokens_for(edit_path)
    worker = tokens["grid_worker"]
    for c in (a, b):
        assert c.get("/collections/grids/items", headers=worker).status_code == 200
    name = _username(edit_path, "grid_worker")
    store = open_store(edit_path)
    try:
        store.save_user({**store.user(name), "disabled": True})  # type: ignore[dict-item]
    finally:
        store.close()
    for c in (a, b):
        _until(lambda c=c: c.get("/collections/grids/items", headers=worker).status_code == 401)


def test_a_rate_limit_counts_the_reads_of_every_process(edit_path: Path | str) -> None:
    """Four household reads a minute, asked of two processes in turn: the fifth is
    refused by whichever process gets it, and so is the next at the other."""
    admin = tokens_for(edit_path)["subdistrict_admin"]
    with (
        gridmap_server(edit_path, household_reads_per_minute="4") as a,
        gridmap_server(edit_path, household_reads_per_minute="4") as b,
    ):
        item = "/collections/households/items/1"
        codes = [
            httpx.get(base + item, headers=admin, timeout=30).status_code
            for base in (a, b, a, b, a, b)
        ]
    assert codes == [200, 200, 200, 200, 429, 429]


def _username(path: Path | str, role: str) -> str:
    """The first sample user of a role."""
    store = open_store(path)
    try:
        return next(u["username"] for u in store.users() if u["role"] == role)
    finally:
        store.close()


def test_a_limit_holds_when_processes_ask_at_once(store: FeatureStore) -> None:
    """Eight limiters (as eight processes would hold) hammer one key from eight threads
    for two seconds: 20 a minute lets 20 through at once and then one every 3 s, however
    the requests interleave and whatever clock each read first (outside review: a
    request arriving with an older time used to start the key afresh)."""
    limiters = [RateLimiter(store, "household", 20, 60) for _ in range(8)]
    allowed: list[int] = []
    end = time.monotonic() + 2.0

    def hammer(limiter: RateLimiter) -> None:
        n = 0
        while time.monotonic() < end:
            try:
                limiter.hit("worker1")
                n += 1
            except RateLimitedError:
                pass
        allowed.append(n)

    threads = [threading.Thread(target=hammer, args=(lim,)) for lim in limiters]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 20 <= sum(allowed) <= 21  # the burst, and at most one more turn in 2 s


@pytest.mark.parametrize(("limit", "window"), [(9, 60), (11, 60), (7, 3600), (120, 60)])
def test_a_limit_lets_exactly_its_number_through_at_once(
    store: FeatureStore, limit: int, window: int
) -> None:
    """``limit`` events at the same instant pass, the next is refused (60 s / 9 is no
    whole number of seconds: rounding used to refuse the ninth)."""
    now = 1_800_000_000.0
    interval = window / limit
    turns = [store.take_turn("k", now, interval, window - interval) for _ in range(limit + 1)]
    assert turns[:limit] == [None] * limit
    assert turns[limit] is not None and 0 < turns[limit] <= interval + 1e-6
