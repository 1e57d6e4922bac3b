"""The first API: landing, collections, items with bbox and paging, single items, errors."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from gridmap.layers import LAYERS
from gridmap.store import FeatureStore, Query
from tests.test_maps import ADMIN_LAYERS_EN, ADMIN_LAYERS_ZH, layer_control_names


def _problem(r, status: int) -> dict:  # type: ignore[no-untyped-def]
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["status"] == status and body["detail"]
    return body


def test_landing_links(client: TestClient) -> None:
    body = client.get("/").json()
    rels = {link["rel"] for link in body["links"]}
    assert {"self", "service-desc", "conformance", "data"} <= rels
    assert client.get("/openapi.json").status_code == 200
    conf = client.get("/conformance").json()["conformsTo"]
    assert "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core" in conf


def test_collections_list_every_layer(client: TestClient, sample_store: FeatureStore) -> None:
    cols = client.get("/collections").json()["collections"]
    assert [c["id"] for c in cols] == [layer.id for layer in LAYERS]
    grids = client.get("/collections/grids").json()
    assert grids["title"] == "网格"
    bbox = grids["extent"]["spatial"]["bbox"][0]
    assert bbox == pytest.approx(list(sample_store.extent("grids")))


def test_paging_through_a_collection_returns_every_feature(
    client: TestClient, sample_store: FeatureStore
) -> None:
    seen: list[int] = []
    url: str | None = "/collections/buildings/items?limit=250"
    while url:
        r = client.get(url)
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/geo+json"
        body = r.json()
        assert body["numberMatched"] == sample_store.count("buildings")
        assert body["numberReturned"] == len(body["features"]) <= 250
        seen += [f["id"] for f in body["features"]]
        nxt = [link["href"] for link in body["links"] if link["rel"] == "next"]
        url = nxt[0].replace("http://testserver", "") if nxt else None
    assert seen == sorted(sample_store.query("buildings").ids.tolist())


def test_bbox_filter_matches_store(client: TestClient, sample_store: FeatureStore) -> None:
    bbox = (113.285, 34.80, 113.295, 34.81)
    r = client.get("/collections/toilets/items", params={"bbox": ",".join(map(str, bbox))})
    ids = sorted(f["id"] for f in r.json()["features"])
    assert ids == sorted(sample_store.query("toilets", Query(bbox=bbox)).ids.tolist())
    assert r.headers["content-crs"] == "<http://www.opengis.net/def/crs/OGC/1.3/CRS84>"


def test_limit_is_clamped_not_refused(client: TestClient) -> None:
    body = client.get("/collections/households/items?limit=50000").json()
    assert body["numberReturned"] == 1000


def test_single_item_with_etag(client: TestClient, sample_store: FeatureStore) -> None:
    r = client.get("/collections/grids/items/3")
    assert r.status_code == 200
    f = r.json()
    assert f["id"] == 3 and f["geometry"]["type"] == "Polygon"
    assert f["properties"] == sample_store.get("grids", 3).properties
    assert r.headers["etag"] == '"grids-3-v1"'


@pytest.mark.parametrize(
    ("url", "status"),
    [
        ("/collections/nope", 404),
        ("/collections/nope/items", 404),
        ("/collections/grids/items/999999", 404),
        ("/collections/grids/items/abc", 404),
        ("/collections/grids/items/1;DROP TABLE grids", 404),
        ("/collections/grids/items?bbox=1,2,3", 400),
        ("/collections/grids/items?bbox=a,b,c,d", 400),
        ("/collections/grids/items?bbox=113.3,34.8,113.2,34.9", 400),
        ("/collections/grids/items?bbox=nan,34.8,113.3,34.9", 400),
        ("/collections/grids/items?bbox=34.8,113.2,34.9,113.3", 400),
        ("/collections/grids/items?bbox=inf,34.8,113.3,34.9", 400),
        ("/collections/grids/items?limit=0", 400),
        ("/collections/grids/items?limit=abc", 400),
        ("/collections/grids/items?offset=-1", 400),
        ("/collections/grids/items?limit=1e999", 400),
    ],
)
def test_bad_requests_get_problem_json(client: TestClient, url: str, status: int) -> None:
    body = _problem(client.get(url), status)
    assert "Traceback" not in body["detail"] and "SELECT" not in body["detail"]


def test_map_page_is_offline(client: TestClient) -> None:
    r = client.get("/map")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert "http://" not in html.replace("http://www.w3.org", "")
    assert "https://" not in html
    assert "/static/leaflet/leaflet.js" in html
    assert client.get("/static/leaflet/leaflet.js").status_code == 200
    assert client.get("/static/gridmap/gridmap-layers.js").status_code == 200
    assert layer_control_names(html) == ADMIN_LAYERS_ZH
    en = client.get("/map?lang=en").text
    assert layer_control_names(en) == ADMIN_LAYERS_EN
    _problem(client.get("/map?lang=fr"), 400)


def test_blocking_work_runs_on_as_many_threads_as_set(sample_path) -> None:  # type: ignore[no-untyped-def]
    from anyio import to_thread

    from api.app import create_app
    from gridmap.settings import Settings

    def tokens() -> float:
        return to_thread.current_default_thread_limiter().total_tokens

    for threads in (3, 11):
        app = create_app(Settings(database=str(sample_path), threads=threads))
        with TestClient(app) as c:
            assert c.get("/collections/grids/items?limit=1").status_code == 200
            assert c.portal is not None and c.portal.call(tokens) == threads


def test_every_request_gets_an_id_of_its_own(client: TestClient) -> None:
    ids = [
        client.get("/collections/grids/items?limit=1").headers["x-request-id"] for _ in range(50)
    ]
    assert len(set(ids)) == 50 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_a_long_route_solve_does_not_hold_the_threads_reads_need(  # type: ignore[no-untyped-def]
    sample_path, admin_headers: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With one thread for blocking work, a read is answered while a route solve is under
    way: solves run on threads of their own."""
    import threading

    from api.app import create_app
    from api.routes import routing
    from gridmap.settings import Settings

    started, release = threading.Event(), threading.Event()
    real = routing.optimize

    def slow(req, store):  # type: ignore[no-untyped-def]
        started.set()
        assert release.wait(60)
        return real(req, store)

    monkeypatch.setattr(routing, "optimize", slow)
    app = create_app(Settings(database=str(sample_path), threads=1))
    body = {"stops": [{"id": "a", "lon": 113.2919, "lat": 34.8096}],
            "start": {"lon": 113.2900, "lat": 34.8080}}  # fmt: skip
    out: dict[str, int] = {}
    with TestClient(app, headers=admin_headers) as c:

        def call(name: str, method: str, url: str, **kw: object) -> None:
            out[name] = c.request(method, url, **kw).status_code  # type: ignore[arg-type]

        solve = threading.Thread(target=call, args=("solve", "POST", "/routes/optimize"),
                                 kwargs={"json": body})  # fmt: skip
        solve.start()
        assert started.wait(60)
        read = threading.Thread(target=call, args=("read", "GET", "/collections/grids/items"))
        read.start()
        read.join(30)
        answered = not read.is_alive()
        release.set()
        solve.join(60)
        read.join(30)
    assert answered and out == {"read": 200, "solve": 200}
