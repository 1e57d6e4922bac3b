"""Security and privacy: login, tokens, roles, scope (BOLA), masking, audit, hardened edges."""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
import shapely
from fastapi.testclient import TestClient

from api.app import create_app
from gridmap import plans
from gridmap.accounts import Accounts, WeakPasswordError, check_password_policy, token_secret
from gridmap.errors import AuthenticationError
from gridmap.security import Role, mask_id_number, mask_name, mask_phone
from gridmap.settings import Settings
from gridmap.store import FeatureStore, Query, Scope, open_store
from tests.conftest import REFERENCE_DATE, raw_sql, refused_by_database, tokens_for

ROLES = ["public", "subdistrict_admin", "community_admin", "grid_worker", "planner", "auditor"]


# ----------------------------------------------------------------------------- masking


def test_mask_formats() -> None:
    assert mask_id_number("410106198204174801") == "410***********4801"
    assert len(mask_id_number("410106198204174801")) == 18
    assert mask_phone("13812345678") == "138****5678"
    assert mask_name("张三") == "张*" and mask_name("欧阳某甲") == "欧***"


def test_roles_see_masked_fields(
    auth: dict[str, dict[str, str]], sample_app: Any, sample_store: FeatureStore
) -> None:
    fid = int(sample_store.query("households", Query(equals={"grid_id": 1}, limit=1)).ids[0])
    raw = sample_store.get("households", fid).properties
    with TestClient(sample_app) as c:
        for role in ("subdistrict_admin", "community_admin", "grid_worker"):
            p = c.get(f"/collections/households/items/{fid}", headers=auth[role]).json()[
                "properties"
            ]
            assert p["id_number"] == mask_id_number(raw["id_number"]), role
            assert p["phone"] == mask_phone(raw["phone"]), role
            assert p["head_name"] == raw["head_name"], role


# ----------------------------------------------------------------------------- login, tokens


def test_password_policy() -> None:
    for bad in ("short1!A", "alllowercaseletters", "Password1234", "admin_Str0ng!pw", "Zz1!" * 3):
        with pytest.raises(WeakPasswordError):
            check_password_policy("admin_str0ng", bad)
    check_password_policy("worker", "Qw7#kLp9@vB2x")


def _app(path: Path, **kw: Any) -> Any:
    kw.setdefault("household_reads_per_minute", 100_000)
    return create_app(Settings(database=str(path), **kw))


def test_login_tells_nothing_and_cannot_lock_others_out(
    edit_path: Path, credentials: dict[str, tuple[str, str]]
) -> None:
    user, pw = credentials["subdistrict_admin"]
    planner, planner_pw = credentials["planner"]
    store = open_store(edit_path)
    Accounts(store, secret=token_secret(store)).set_disabled(planner)
    store.close()
    app = _app(edit_path)
    attacker = TestClient(app, client=("10.9.9.9", 4000))
    office = TestClient(app, client=("10.0.0.1", 4000))
    with attacker, office:

        def answers(name: str, password: str = "Wrong-password-1") -> list[tuple[Any, ...]]:
            out = []
            for _ in range(6):
                r = attacker.post("/token", data={"username": name, "password": password})
                detail = re.sub(r"\d+ s\b", "N s", r.json()["detail"])
                out.append((r.status_code, detail, "retry-after" in r.headers))
            return out

        app.state.accounts.throttle.base = 3.0  # the first delay, in seconds
        real = answers(user)
        started = time.monotonic()
        # the attacker's source waits even with the right password; the office does not
        assert attacker.post("/token", data={"username": user, "password": pw}).status_code == 429
        assert office.post("/token", data={"username": user, "password": pw}).status_code == 200
        # a real name and an unknown one answer alike, attempt by attempt
        assert answers("nobody_here") == real
        assert [a[0] for a in real] == [401, 401, 401, 429, 429, 429]
        assert real[0][1] == "wrong username or password" and real[3][2]
        # a disabled account with its right password answers like a wrong password
        assert answers(planner, planner_pw)[0] == real[0]
        time.sleep(max(0.0, 3.1 - (time.monotonic() - started)))
        assert attacker.post("/token", data={"username": user, "password": pw}).status_code == 200
        # the browser form answers the same way
        page = office.post("/login", data={"username": "ghost", "password": "Wrong-password-1"})
        assert page.status_code == 401 and "wrong username or password" in page.text
    store = open_store(edit_path)
    denied = store.audit_entries(limit=1000, equals={"action": "login", "result": "denied"})[1]
    store.close()
    assert denied >= 19  # every refused attempt is in the audit log


def test_login_attempts_are_rate_limited(edit_path: Path) -> None:
    with TestClient(_app(edit_path, logins_per_minute=3)) as c:
        codes = [
            c.post("/token", data={"username": f"u{i}", "password": "x"}).status_code
            for i in range(5)
        ]
    assert codes[:3] == [401, 401, 401] and codes[3:] == [429, 429]


def _forged(secret: str, pv: str = "", **claims: Any) -> str:
    now = int(dt.datetime.now(dt.UTC).timestamp())
    base = {
        "sub": "admin",
        "role": "subdistrict_admin",
        "pv": pv,
        "aud": "gridmap",
        "iss": "gridmap",
        "iat": now,
        "exp": now + 600,
    }
    base.update(claims)
    return jwt.encode(base, secret, algorithm="HS256")


def test_bad_tokens_are_refused(edit_path: Path) -> None:
    from gridmap.accounts import password_version

    store = open_store(edit_path)
    secret = token_secret(store)
    pv = password_version(store.user("admin")["password_hash"])
    planner_pv = password_version(store.user("planner")["password_hash"])
    store.close()
    good = _forged(secret, pv)
    header, payload, sig = good.split(".")
    import base64
    import json

    def b64(d: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")

    tampered_payload = b64(
        {
            **jwt.decode(good, options={"verify_signature": False}),
            "role": "subdistrict_admin",
            "sub": "auditor",
        }
    )
    cases = {
        "expired": _forged(secret, pv, exp=1_000_000, iat=999_000),
        "wrong audience": _forged(secret, pv, aud="someone-else"),
        "wrong issuer": _forged(secret, pv, iss="evil"),
        "other key": _forged("x" * 48, pv),
        "no password version": _forged(secret),
        "old password version": _forged(secret, "0" * 16),
        "alg none": f"{b64({'alg': 'none', 'typ': 'JWT'})}.{payload}.",
        "tampered": f"{header}.{tampered_payload}.{sig}",
        "garbage": "not.a.token",
        "unknown user": _forged(secret, pv, sub="ghost"),
        "role changed": _forged(secret, planner_pv, sub="planner", role="subdistrict_admin"),
    }
    with TestClient(_app(edit_path)) as c:
        assert c.get("/users/me", headers={"Authorization": f"Bearer {good}"}).status_code == 200
        for name, token in cases.items():
            r = c.get("/collections/households/items", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 401, name
            assert r.headers["content-type"] == "application/problem+json"
        r = c.get("/users/me", headers={"Authorization": "Basic YWRtaW46eA=="})
        assert r.status_code == 401


def test_a_new_password_ends_every_older_token(edit_path: Path) -> None:
    headers = tokens_for(edit_path)["community_admin"]
    with TestClient(_app(edit_path)) as c:
        assert c.get("/collections/households/items?limit=1", headers=headers).status_code == 200
        store = open_store(edit_path)
        Accounts(store, secret=token_secret(store)).reset_password("community1")
        store.close()
        r = c.get("/collections/households/items?limit=1", headers=headers)
        assert r.status_code == 401 and "password changed" in r.json()["detail"]


def test_disabled_user_loses_access_at_once(edit_path: Path) -> None:
    headers = tokens_for(edit_path)["grid_worker"]
    with TestClient(_app(edit_path)) as c:
        assert c.get("/users/me", headers=headers).status_code == 200
        store = open_store(edit_path)
        Accounts(store, secret=token_secret(store)).set_disabled("worker1")
        store.close()
        assert c.get("/users/me", headers=headers).status_code == 401


def test_accounts_refuse_bad_input(edit_path: Path) -> None:
    store = open_store(edit_path)
    accounts = Accounts(store, secret=token_secret(store))
    with pytest.raises(ValueError, match="grid worker needs"):
        accounts.add_user("w9", "Qw7#kLp9@vB2x", Role.GRID_WORKER)
    with pytest.raises(ValueError, match="letters, digits"):
        accounts.add_user("bad name!", "Qw7#kLp9@vB2x", Role.PLANNER)
    with pytest.raises(ValueError, match="exists"):
        accounts.add_user("admin", "Qw7#kLp9@vB2x", Role.PLANNER)
    with pytest.raises(AuthenticationError):
        accounts.principal("x.y.z")
    store.close()


# ----------------------------------------------------------------------------- route × role


def _household(store: FeatureStore, grid: int, k: int = 0) -> int:
    return int(store.query("households", Query(equals={"grid_id": grid}, limit=k + 1)).ids[k])


NEW_HOUSEHOLD = {
    "type": "Feature",
    "properties": {"room": "新户", "members": 2},
    "geometry": {"type": "Point", "coordinates": [0, 0]},
}
NEW_TOILET = {
    "type": "Feature",
    "properties": {"name": "矩阵公厕", "status": "planned"},
    "geometry": {"type": "Point", "coordinates": [113.29, 34.81]},
}

# (method, path template) → expected status for each role in ROLES order.
C = "/collections/{collection_id}"
ITEMS = C + "/items"
ITEM = ITEMS + "/{feature_id}"
HH, TL = "households", "toilets"
EXPECTED: dict[tuple[str, str, str], list[int]] = {
    #                                        pub  adm  com  wkr  pln  aud
    ("GET", "/", ""):                       [200, 200, 200, 200, 200, 200],
    ("GET", "/conformance", ""):            [200, 200, 200, 200, 200, 200],
    ("GET", "/health", ""):                 [200, 200, 200, 200, 200, 200],
    ("GET", "/ready", ""):                  [200, 200, 200, 200, 200, 200],
    ("GET", "/collections", ""):            [200, 200, 200, 200, 200, 200],
    ("GET", C, HH):                         [404, 200, 200, 200, 404, 404],
    ("GET", C, TL):                         [200, 200, 200, 200, 200, 404],
    ("GET", C + "/queryables", HH):         [404, 200, 200, 200, 404, 404],
    ("GET", C + "/queryables", "cameras"):  [404, 200, 200, 404, 404, 404],
    ("GET", ITEMS, HH):                     [404, 200, 200, 200, 404, 404],
    ("GET", ITEMS, "roads"):                [404, 200, 200, 200, 200, 404],
    ("POST", ITEMS, HH):                    [404, 201, 201, 201, 404, 404],
    ("POST", ITEMS, TL):                    [401, 201, 403, 403, 201, 404],
    ("GET", ITEM, HH):                      [404, 200, 200, 200, 404, 404],
    ("GET", ITEM, TL):                      [200, 200, 200, 200, 200, 404],
    ("PUT", ITEM, HH):                      [404, 200, 200, 200, 404, 404],
    ("PUT", ITEM, TL):                      [401, 200, 403, 403, 200, 404],
    ("PATCH", ITEM, HH):                    [404, 200, 200, 200, 404, 404],
    ("PATCH", ITEM, TL):                    [401, 200, 403, 403, 200, 404],
    ("DELETE", ITEM, HH):                   [404, 204, 204, 403, 404, 404],
    ("DELETE", ITEM, TL):                   [401, 204, 403, 403, 204, 404],
    ("POST", ITEM + "/reveal", HH):         [404, 200, 200, 200, 404, 404],
    ("POST", ITEM + "/reveal", TL):         [401, 422, 422, 422, 403, 404],
    ("GET", "/locate", ""):                 [200, 200, 200, 200, 200, 403],
    ("GET", "/nearest", HH):                [404, 200, 200, 200, 404, 403],
    ("GET", "/stats/{level}", ""):          [401, 200, 200, 200, 200, 403],
    ("GET", "/map", ""):                    [200, 200, 200, 200, 200, 403],
    ("GET", "/map/layers/{key}", HH):       [404, 200, 200, 200, 404, 403],
    ("GET", "/map/layers/{key}", TL):       [200, 200, 200, 200, 200, 403],
    ("GET", "/map/grids/{grid_id}", ""):    [200, 200, 200, 200, 200, 403],
    ("POST", "/token", ""):                 [401, 200, 200, 200, 200, 200],
    ("GET", "/login", ""):                  [200, 200, 200, 200, 200, 200],
    ("POST", "/login", ""):                 [401, 303, 303, 303, 303, 303],
    ("POST", "/logout", ""):                [303, 303, 303, 303, 303, 303],
    ("GET", "/users/me", ""):               [200, 200, 200, 200, 200, 200],
    ("GET", "/audit", ""):                  [401, 403, 403, 403, 403, 200],
    ("POST", "/routes/optimize", ""):       [401, 200, 200, 200, 200, 403],
    ("POST", "/campaigns", ""):             [401, 201, 201, 403, 403, 403],
    ("GET", "/campaigns", ""):              [401, 200, 200, 200, 200, 403],
    ("GET", "/campaigns/{campaign_id}", ""): [401, 200, 200, 200, 200, 403],
    ("PATCH", "/campaigns/{campaign_id}", ""): [401, 200, 404, 403, 403, 403],
    ("POST", "/campaigns/{campaign_id}/plans", ""): [401, 201, 201, 201, 403, 403],
    ("GET", "/plans/{plan_id}", ""):        [401, 200, 200, 200, 403, 403],
    ("GET", "/map/plans/{plan_id}", ""):    [401, 200, 200, 200, 403, 403],
    ("POST", "/visits", ""):                [401, 201, 201, 201, 403, 403],
    ("GET", "/analysis/toilet-access", ""): [401, 200, 200, 200, 200, 403],
    ("GET", "/analysis/toilet-access/unserved", ""): [401, 200, 200, 200, 200, 403],
    ("POST", "/analysis/toilet-siting", ""): [401, 200, 200, 200, 200, 403],
    ("GET", "/map/toilets", ""):            [401, 200, 200, 200, 200, 403],
    ("GET", "/analysis/camera-coverage", ""): [401, 200, 200, 200, 200, 403],
    ("GET", "/analysis/camera-coverage/blind-spots", ""): [401, 200, 200, 404, 404, 403],
    ("GET", "/analysis/camera-coverage/views", ""): [401, 200, 200, 404, 404, 403],
    ("POST", "/analysis/camera-siting", ""): [401, 200, 200, 404, 404, 403],
    ("GET", "/map/cameras", ""):            [401, 200, 200, 404, 404, 403],
    ("GET", "/analysis/renovation", ""):    [401, 200, 200, 200, 200, 403],
    ("GET", "/analysis/renovation/affected", ""): [401, 200, 200, 200, 200, 403],
    ("POST", "/analysis/renovation/{neighbourhood_id}/status", ""): [401, 201, 403, 403, 201, 403],
    ("GET", "/map/renovation", ""):         [401, 200, 200, 200, 200, 403],
    ("GET", "/analysis/grid-balance", ""):  [401, 200, 200, 200, 200, 403],
    ("POST", "/analysis/grid-balance/apply", ""): [401, 412, 403, 403, 403, 403],
    ("GET", "/map/grid-balance", ""):       [401, 200, 200, 200, 200, 403],
    ("GET", C + "/export", HH):             [404, 200, 200, 200, 404, 404],
    ("POST", C + "/import", TL):            [401, 200, 403, 403, 403, 404],
}  # fmt: skip


# What each request leaves in the audit log: "read" (personal rows returned, noted by the
# store), "denied" (401/403/429), "denied_scope" (404 for something outside the scope),
# edits, reveals, logins; "-" nothing. Same rows and roles as EXPECTED.
R, D, DS, N = "read", "denied", "denied_scope", "-"
CR, RU, DR, DNR, RV = "create+read", "read+update", "delete+read", "denied+read", "read+reveal"
L, DL, CRT, UPD, DEL = "login", "denied+login", "create", "update", "delete"
AUDITED: dict[tuple[str, str, str], list[str]] = {
    #                                        pub  adm  com  wkr  pln  aud
    ("GET", "/", ""):                       [N,   N,   N,   N,   N,   N],
    ("GET", "/conformance", ""):            [N,   N,   N,   N,   N,   N],
    ("GET", "/health", ""):                 [N,   N,   N,   N,   N,   N],
    ("GET", "/ready", ""):                  [N,   N,   N,   N,   N,   N],
    ("GET", "/collections", ""):            [N,   N,   N,   N,   N,   N],
    ("GET", C, HH):                         [DS,  N,   N,   N,   DS,  DS],
    ("GET", C, TL):                         [N,   N,   N,   N,   N,   DS],
    ("GET", C + "/queryables", HH):         [DS,  N,   N,   N,   DS,  DS],
    ("GET", C + "/queryables", "cameras"):  [DS,  N,   N,   DS,  DS,  DS],
    ("GET", ITEMS, HH):                     [DS,  R,   R,   R,   DS,  DS],
    ("GET", ITEMS, "roads"):                [DS,  N,   N,   N,   N,   DS],
    ("POST", ITEMS, HH):                    [DS,  CR,  CR,  CR,  DS,  DS],
    ("POST", ITEMS, TL):                    [D,   CRT, D,   D,   CRT, DS],
    ("GET", ITEM, HH):                      [DS,  R,   R,   R,   DS,  DS],
    ("GET", ITEM, TL):                      [N,   N,   N,   N,   N,   DS],
    ("PUT", ITEM, HH):                      [DS,  RU,  RU,  RU,  DS,  DS],
    ("PUT", ITEM, TL):                      [D,   UPD, D,   D,   UPD, DS],
    ("PATCH", ITEM, HH):                    [DS,  RU,  RU,  RU,  DS,  DS],
    ("PATCH", ITEM, TL):                    [D,   UPD, D,   D,   UPD, DS],
    ("DELETE", ITEM, HH):                   [DS,  DR,  DR,  DNR, DS,  DS],
    ("DELETE", ITEM, TL):                   [D,   DEL, D,   D,   DEL, DS],
    ("POST", ITEM + "/reveal", HH):         [DS,  RV,  RV,  RV,  DS,  DS],
    ("POST", ITEM + "/reveal", TL):         [D,   N,   N,   N,   D,   DS],
    ("GET", "/locate", ""):                 [N,   N,   N,   N,   N,   D],
    ("GET", "/nearest", HH):                [DS,  R,   R,   R,   DS,  D],
    ("GET", "/stats/{level}", ""):          [D,   R,   R,   R,   R,   D],
    ("GET", "/map", ""):                    [N,   N,   N,   N,   N,   D],
    ("GET", "/map/layers/{key}", HH):       [DS,  R,   R,   R,   DS,  D],
    ("GET", "/map/layers/{key}", TL):       [N,   N,   N,   N,   N,   D],
    ("GET", "/map/grids/{grid_id}", ""):    [N,   R,   R,   R,   N,   D],
    ("POST", "/token", ""):                 [DL,  L,   L,   L,   L,   L],
    ("GET", "/login", ""):                  [N,   N,   N,   N,   N,   N],
    ("POST", "/login", ""):                 [L,   L,   L,   L,   L,   L],
    ("POST", "/logout", ""):                [N,   N,   N,   N,   N,   N],
    ("GET", "/users/me", ""):               [N,   N,   N,   N,   N,   N],
    ("GET", "/audit", ""):                  [D,   D,   D,   D,   D,   N],
    ("POST", "/routes/optimize", ""):       [D,   N,   N,   N,   N,   D],
    ("POST", "/campaigns", ""):             [D,   CRT, CRT, D,   D,   D],
    ("GET", "/campaigns", ""):              [D,   N,   N,   N,   N,   D],
    ("GET", "/campaigns/{campaign_id}", ""): [D,  R,   R,   R,   R,   D],
    ("PATCH", "/campaigns/{campaign_id}", ""): [D, UPD, DS,  D,   D,   D],
    ("POST", "/campaigns/{campaign_id}/plans", ""): [D, CR, CR, CR, D, D],
    ("GET", "/plans/{plan_id}", ""):        [D,   R,   R,   R,   D,   D],
    ("GET", "/map/plans/{plan_id}", ""):    [D,   R,   R,   R,   D,   D],
    ("POST", "/visits", ""):                [D,   CR,  CR,  CR,  D,   D],
    ("GET", "/analysis/toilet-access", ""): [D,   R,   R,   R,   R,   D],
    ("GET", "/analysis/toilet-access/unserved", ""): [D, R, R,  R,   R,   D],
    ("POST", "/analysis/toilet-siting", ""): [D,  R,   R,   R,   R,   D],
    ("GET", "/map/toilets", ""):            [D,   R,   R,   R,   R,   D],
    ("GET", "/analysis/camera-coverage", ""): [D, R,   R,   N,   N,   D],
    ("GET", "/analysis/camera-coverage/blind-spots", ""): [D, R, R, DS, DS, D],
    ("GET", "/analysis/camera-coverage/views", ""): [D, R, R, DS, DS, D],
    ("POST", "/analysis/camera-siting", ""): [D,  R,   R,   DS,  DS,  D],
    ("GET", "/map/cameras", ""):            [D,   R,   R,   DS,  DS,  D],
    ("GET", "/analysis/renovation", ""):    [D,   R,   R,   R,   R,   D],
    ("GET", "/analysis/renovation/affected", ""): [D, R, R,  R,   R,   D],
    ("POST", "/analysis/renovation/{neighbourhood_id}/status", ""): [D, UPD, D, D, UPD, D],
    ("GET", "/map/renovation", ""):         [D,   R,   R,   R,   R,   D],
    ("GET", "/analysis/grid-balance", ""):  [D,   R,   R,   R,   R,   D],
    ("POST", "/analysis/grid-balance/apply", ""): [D, R, D,  D,   D,   D],
    ("GET", "/map/grid-balance", ""):       [D,   R,   R,   R,   R,   D],
    ("GET", C + "/export", HH):             [DS,  "export", "export", "export", DS, DS],
    ("POST", C + "/import", TL):            [D,   "import", D, D,   D,   DS],
}  # fmt: skip


def test_every_route_is_in_the_permission_table(client: TestClient) -> None:
    api = client.get("/openapi.json").json()
    routes = {(m.upper(), p) for p, ops in api["paths"].items() for m in ops}
    assert routes == {(m, p) for m, p, _ in EXPECTED}
    assert set(AUDITED) == set(EXPECTED)


def test_route_role_matrix(
    edit_path: Path, edit_auth: dict[str, dict[str, str]], credentials: dict[str, tuple[str, str]]
) -> None:
    store = open_store(edit_path)
    # distinct features per (method, role): households of grid 1 (the worker's, inside the
    # community admin's community) and toilets, so that a delete does not hide a later row
    methods = ["GET", "PUT", "PATCH", "DELETE", "POST"]
    grid1 = store.query("households", Query(equals={"grid_id": 1}))
    # households without ledger entries (a household with visits cannot be deleted)
    pairs = zip(grid1.ids.tolist(), grid1.properties, strict=True)
    hh = [i for i, p in pairs if not p["last_visit_at"]][:60]
    tl = store.query("toilets").ids.tolist()

    def pick(pool: list[int], method: str, role: str) -> int:
        return int(pool[(methods.index(method) * len(ROLES) + ROLES.index(role)) % len(pool)])

    point = list(store.get("households", hh[0]).geometry.coords[0])
    plan = plans.make(
        store, plans.PlanRequest(1, 1, REFERENCE_DATE, time_limit_s=0.2), scope=Scope.ALL
    )
    store.close()
    bodies = _new_route_bodies(point, hh)
    app = _app(edit_path)
    got: dict[tuple[str, str, str], list[int]] = {}
    audited: dict[tuple[str, str, str], list[str]] = {k: [] for k in EXPECTED}
    with TestClient(app) as c:
        admin = edit_auth["subdistrict_admin"]
        for (method, path, coll), _want in EXPECTED.items():
            row = []
            for role in ROLES:
                h = dict(edit_auth[role])
                fid = pick(hh if coll == "households" else tl, method, role)
                url = path.replace("{collection_id}", coll).replace("{feature_id}", str(fid))
                url = url.replace("{level}", "grids").replace("{grid_id}", "1")
                url = url.replace("{campaign_id}", "1").replace("{plan_id}", str(plan["id"]))
                url = url.replace("{key}", coll).replace("{neighbourhood_id}", "1")
                kw: dict[str, Any] = {}
                if (method, path) in bodies:
                    kw["json"] = bodies[(method, path)](role)
                if url == "/nearest":
                    kw["params"] = {"collection": coll, "lon": point[0], "lat": point[1]}
                if url == "/analysis/renovation/affected":
                    kw["params"] = {"start": "2026-01-01", "end": "2026-12-31"}
                if url == "/locate":
                    kw["params"] = {"lon": 113.29, "lat": 34.81}
                if url.endswith("/import"):
                    kw["files"] = {
                        "file": ("t.csv", "名称,经度,纬度\n矩阵导入公厕,113.29,34.81\n".encode())
                    }
                    kw["params"] = {"crs": "wgs84", "dry_run": "true"}
                if url.endswith("/export"):
                    kw["params"] = {"f": "csv", "limit": 5}
                if method in ("PUT", "PATCH", "DELETE") and "{feature_id}" in path:
                    cur = c.get(f"/collections/{coll}/items/{fid}", headers=admin)
                    h["If-Match"] = cur.headers["etag"]
                    if method == "PUT":
                        body = cur.json()
                        kw["json"] = {
                            "type": "Feature",
                            "geometry": body["geometry"],
                            "properties": body["properties"]
                            if coll == "toilets"
                            else {k: v for k, v in body["properties"].items() if k != "grid_id"},
                        }
                    if method == "PATCH":
                        kw["json"] = {
                            "properties": {"members" if coll == "households" else "units": 3}
                        }
                if method == "POST" and url.endswith("/items"):
                    body = NEW_HOUSEHOLD if coll == "households" else NEW_TOILET
                    body = (
                        {**body, "geometry": {"type": "Point", "coordinates": point}}
                        if coll == "households"
                        else body
                    )
                    kw["json"] = body
                if url.endswith("/reveal"):
                    kw["json"] = {"field": "id_number", "reason": "走访核实身份信息"}
                if url in ("/token", "/login") and method == "POST":
                    user, pw = credentials.get(role, ("nobody", "Wrong-password-1"))
                    kw["data"] = {"username": user, "password": pw}
                    h = {}
                r = c.request(method, url, headers=h, follow_redirects=False, **kw)
                row.append(r.status_code)
                audited[(method, path, coll)].append(_actions(edit_path, r))
            got[(method, path, coll)] = row
    wrong = {k: (v, EXPECTED[k]) for k, v in got.items() if v != EXPECTED[k]}
    assert wrong == {}
    wrong = {k: (v, AUDITED[k]) for k, v in audited.items() if v != AUDITED[k]}
    assert wrong == {}


def _new_route_bodies(point: list[float], hh: list[int]) -> dict[tuple[str, str], Any]:
    """Request bodies of the routing, campaign and visit routes (per role where needed)."""
    day = REFERENCE_DATE.isoformat()
    stop = {"lon": point[0], "lat": point[1]}
    return {
        ("POST", "/routes/optimize"): lambda role: {
            "stops": [{"id": "a", **stop}], "start": stop, "time_limit_s": 0.1,
        },
        ("POST", "/campaigns"): lambda role: {"name": f"走访 {role}", "starts": day, "ends": day},
        ("PATCH", "/campaigns/{campaign_id}"): lambda role: {"status": "open"},
        ("POST", "/campaigns/{campaign_id}/plans"): lambda role: {
            "grid_ids": [1], "date": day, "time_limit_s": 0.2,
        },
        ("POST", "/analysis/toilet-siting"): lambda role: {"k": 1, "spacing_m": 200},
        ("POST", "/analysis/camera-siting"): lambda role: {"k": 1, "spacing_m": 100},
        ("POST", "/analysis/grid-balance/apply"): lambda role: {"basis": "stale"},
        ("POST", "/analysis/renovation/{neighbourhood_id}/status"): lambda role: {
            "status": "in_progress" if role == "planner" else "approved", "on": day,
        },
        ("POST", "/visits"): lambda role: {
            "visits": [
                {
                    "household_id": hh[-1 - ROLES.index(role)], "outcome": "visited",
                    "visited_at": f"{day}T10:00:00", "campaign_id": 1,
                    "client_key": f"matrix-{role}",
                }
            ]
        },
    }  # fmt: skip


def _actions(path: Path, response: Any) -> str:
    """The audit actions one response left (by its request id), e.g. "read+update"."""
    store = open_store(path)
    rid = response.headers["x-request-id"]
    rows = store.audit_entries(limit=100, equals={"request_id": rid})[0]
    store.close()
    return "+".join(sorted({e["action"] for e in rows})) or "-"


# ----------------------------------------------------------------------------- BOLA


def test_grid_workers_never_see_other_grids(edit_path: Path) -> None:
    """For grid workers of many grids: every read path and every method, zero leaks."""
    store = open_store(edit_path)
    accounts = Accounts(store, secret=token_secret(store))
    grids = store.query("grids").ids.tolist()
    every = store.query("households")
    grid_of = dict(zip(every.ids.tolist(), (p["grid_id"] for p in every.properties), strict=True))
    workers = {}
    for gid in grids[::4]:
        accounts.add_user(f"bola{gid}", "Qw7#kLp9@vB2x", Role.GRID_WORKER, grid_ids=[gid])
        workers[gid] = {
            "Authorization": f"Bearer {accounts.issue(f'bola{gid}', Role.GRID_WORKER).access_token}"
        }
    # the data layer, exhaustively: every household outside the grid is invisible to get()
    from gridmap.errors import FeatureNotFoundError
    from gridmap.security import Principal, scope_for

    for gid in workers:
        scope = scope_for(Principal(f"bola{gid}", Role.GRID_WORKER, frozenset({gid})))
        for fid, g in grid_of.items():
            if g == gid:
                assert store.get("households", fid, scope=scope).id == fid
            else:
                with pytest.raises(FeatureNotFoundError):
                    store.get("households", fid, scope=scope)
    store.close()
    with TestClient(_app(edit_path, reveals_per_hour=100_000)) as c:
        for gid, h in workers.items():
            mine = {f for f, g in grid_of.items() if g == gid}
            others = sorted(set(grid_of) - mine)
            # by id: a spread of other grids' households, every method
            for fid in others[:: max(1, len(others) // 60)]:
                assert c.get(f"/collections/households/items/{fid}", headers=h).status_code == 404
                for method, kw in (
                    ("PATCH", {"json": {"properties": {"members": 1}}}),
                    ("PUT", {"json": NEW_HOUSEHOLD}),
                    ("DELETE", {}),
                ):
                    r = c.request(
                        method,
                        f"/collections/households/items/{fid}",
                        headers={**h, "If-Match": f'"households-{fid}-v1"'},
                        **kw,
                    )
                    assert r.status_code == 404, (method, fid)
                r = c.post(
                    f"/collections/households/items/{fid}/reveal",
                    headers=h,
                    json={"field": "phone", "reason": "试图越权查看"},
                )
                assert r.status_code == 404
            # bbox over everything, filters, paging: only their own
            seen: list[int] = []
            offset = 0
            while True:
                r = c.get(
                    "/collections/households/items",
                    headers=h,
                    params={"bbox": "113.2,34.7,113.4,34.9", "limit": 1000, "offset": offset},
                )
                seen += [f["id"] for f in r.json()["features"]]
                offset += 1000
                if offset >= r.json()["numberMatched"]:
                    break
            assert set(seen) == mine
            r = c.get(
                "/collections/households/items",
                headers=h,
                params={"filter": "members > 0 OR members IS NULL", "limit": 1000},
            )
            assert {f["id"] for f in r.json()["features"]} <= mine
            assert r.json()["numberMatched"] == len(mine)
            r = c.get("/collections/buildings/items", headers=h, params={"limit": 1000})
            assert {f["properties"]["grid_id"] for f in r.json()["features"]} == {gid}
            # a worker sees at least what the public sees of public layers
            r = c.get("/collections/grids/items", headers=h)
            assert [f["id"] for f in r.json()["features"]] == grids
            assert c.get(f"/collections/grids/items/{grids[-1]}", headers=h).status_code == 200
            # stats, export, nearest, map
            rows = c.get("/stats/grids", headers=h).json()["areas"]
            assert [row["id"] for row in rows] == [gid]
            assert rows[0]["households"] == len(mine)
            csv = c.get(
                "/collections/households/items", headers=h, params={"f": "csv", "limit": 1000}
            ).text
            assert {int(line.split(",")[0]) for line in csv.splitlines()[1:]} == mine
            near = c.get(
                "/nearest",
                headers=h,
                params={"collection": "households", "lon": 113.29, "lat": 34.81, "k": 100},
            )
            assert {f["id"] for f in near.json()["features"]} <= mine
            counts = c.get("/map/layers/households", headers=h).json()["counts"]
            assert [c[2] for c in counts] == [len(mine)]
            every = {"bbox": "113.2,34.7,113.4,34.9", "zoom": 18}
            dots = c.get("/map/layers/households", headers=h, params=every).json()["points"]
            assert len(dots) == len(mine)
            # moving one's own household into another grid is refused
            own = min(mine)
            cur = c.get(f"/collections/households/items/{own}", headers=h)
            elsewhere = next(iter(others))
            where = c.get(
                f"/collections/households/items/{elsewhere}",
                headers=tokens_for(edit_path)["subdistrict_admin"],
            ).json()["geometry"]
            r = c.patch(
                f"/collections/households/items/{own}",
                json={"geometry": where},
                headers={**h, "If-Match": cur.headers["etag"]},
            )
            assert r.status_code == 404
            assert (
                c.get(f"/collections/households/items/{own}", headers=h).json()["properties"][
                    "grid_id"
                ]
                == gid
            )


# ----------------------------------------------------------------------------- canaries

CANARY_ID = "41010619700707077X"
CANARY_PHONE = "10070707077"


def test_canaries_never_leave_unmasked(edit_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Canary personal data in grid 2: every non-admin role exercises the whole API."""
    store = open_store(edit_path)
    grid2 = store.get("grids", 2)
    pt = shapely.Point(*store.get("households", _household(store, 2)).geometry.coords[0])
    (canary,) = store.insert(
        "households",
        [pt],
        [
            {
                "room": "金丝雀",
                "head_name": "金某丝",
                "phone": CANARY_PHONE,
                "id_number": CANARY_ID,
                "members": 1,
                "tags": ["elderly_alone"],
            }
        ],
    )
    store.close()
    auth = tokens_for(edit_path)
    store = open_store(edit_path)
    accounts = Accounts(store, secret=token_secret(store))
    accounts.add_user("worker2", "Qw7#kLp9@vB2x", Role.GRID_WORKER, grid_ids=[2])
    auth["grid_worker_2"] = {
        "Authorization": f"Bearer {accounts.issue('worker2', Role.GRID_WORKER).access_token}"
    }
    store.close()
    assert grid2.properties["community_id"] == 1  # community1 administers it
    bodies: list[str] = []
    fetched: dict[str, list[int]] = {}
    caplog.set_level(logging.DEBUG)
    with TestClient(_app(edit_path)) as c:
        for role in (
            "public",
            "community_admin",
            "grid_worker",
            "grid_worker_2",
            "planner",
            "auditor",
        ):
            h = auth[role]
            fetched[role] = []
            urls = [
                "/",
                "/collections",
                "/map",
                "/map?lang=en",
                "/map/layers/households",
                "/map/layers/households?bbox=113.2,34.7,113.4,34.9&zoom=18",
                "/map/layers/grids?measure=elderly_alone",
                "/stats/grids",
                "/stats/communities",
                "/stats/zones",
                "/audit",
                "/users/me",
                "/locate?lon=113.29&lat=34.81",
            ]
            for coll in ("households", "buildings", "grids", "toilets"):
                urls += [
                    f"/collections/{coll}",
                    f"/collections/{coll}/queryables",
                    f"/collections/{coll}/items?limit=1000",
                    f"/collections/{coll}/items?limit=1000&f=csv",
                    f"/collections/{coll}/items?limit=50&f=html",
                    f"/collections/{coll}/items?limit=1000&crs=gcj02",
                    f"/nearest?collection={coll}&lon={pt.x}&lat={pt.y}&k=100",
                ]
            urls += [
                "/collections/households/items?sortby=id_number",
                "/collections/households/items?filter=id_number LIKE '4101067%'",
            ]
            for u in urls:
                r = c.get(u, headers=h)
                assert r.status_code < 500, u
                bodies.append(r.text + str(r.headers))
            # the canary's own page and its HTML view, by id, for every role
            own = f"/collections/households/items/{canary}"
            for u in (own, f"{own}?f=html", f"{own}?crs=bd09"):
                r = c.get(u, headers=h)
                fetched[role].append(r.status_code)
                bodies.append(r.text + str(r.headers))
    server_logs = "\n".join(
        r.getMessage() for r in caplog.records if not r.name.startswith("httpx")
    )
    text = "\n".join(bodies) + server_logs
    assert "金某丝" in text  # the canary household was really served (names are not masked)
    # its own page was really fetched by the roles that may see it, refused to the others
    assert {r: set(v) for r, v in fetched.items()} == {
        "public": {404},
        "community_admin": {200},
        "grid_worker": {404},
        "grid_worker_2": {200},
        "planner": {404},
        "auditor": {404},
    }
    assert CANARY_ID not in text and CANARY_PHONE not in text
    store = open_store(edit_path)
    audit_text = str(store.audit_entries(limit=100_000)[0])
    store.close()
    assert CANARY_ID not in audit_text and CANARY_PHONE not in audit_text


def test_filters_cannot_probe_masked_fields(
    client: TestClient, auth: dict[str, dict[str, str]]
) -> None:
    for q in (
        "filter=id_number LIKE '4101061980%'",
        "phone=10012345678",
        "sortby=phone",
        "filter=S_INTERSECTS(geom, POINT(1 1)) OR id_number = 'x'",
    ):
        r = client.get(f"/collections/households/items?{q}", headers=auth["grid_worker"])
        assert r.status_code == 403, q


def test_masked_values_sent_back_keep_the_stored_ones(
    edit_client: TestClient, edit_path: Path
) -> None:
    store = open_store(edit_path)
    fid = _household(store, 1)
    before = store.get("households", fid).properties
    store.close()
    cur = edit_client.get(f"/collections/households/items/{fid}")
    body = cur.json()
    props = {k: v for k, v in body["properties"].items() if k != "grid_id"}
    props["members"] = 4
    r = edit_client.put(
        f"/collections/households/items/{fid}",
        json={"type": "Feature", "geometry": body["geometry"], "properties": props},
        headers={"If-Match": cur.headers["etag"]},
    )
    assert r.status_code == 200
    store = open_store(edit_path)
    after = store.get("households", fid).properties
    store.close()
    assert after["id_number"] == before["id_number"] and after["phone"] == before["phone"]
    assert after["members"] == 4


# ----------------------------------------------------------------------------- reveal, audit


def test_reveal_needs_a_reason_is_audited_and_rate_limited(edit_path: Path) -> None:
    auth = tokens_for(edit_path)
    store = open_store(edit_path)
    fid = _household(store, 1)
    raw = store.get("households", fid).properties["id_number"]
    store.close()
    with TestClient(_app(edit_path, reveals_per_hour=2)) as c:
        h = auth["grid_worker"]
        url = f"/collections/households/items/{fid}/reveal"
        assert c.post(url, headers=h, json={"field": "id_number"}).status_code == 400
        assert (
            c.post(url, headers=h, json={"field": "id_number", "reason": "短"}).status_code == 400
        )
        assert (
            c.post(url, headers=h, json={"field": "room", "reason": "走访核实身份信息"}).status_code
            == 422
        )
        r = c.post(url, headers=h, json={"field": "id_number", "reason": "走访核实身份信息"})
        assert r.status_code == 200 and r.json()["value"] == raw
        assert (
            c.post(
                url, headers=h, json={"field": "phone", "reason": "走访核实联系电话"}
            ).status_code
            == 200
        )
        r = c.post(url, headers=h, json={"field": "phone", "reason": "走访核实联系电话"})
        assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
        log = c.get("/audit?action=reveal", headers=auth["auditor"]).json()
    assert log["numberMatched"] == 2
    e = log["entries"][-1]
    assert e["username"] == "worker1" and e["object"] == f"households/{fid}.id_number"
    assert e["detail"] == "走访核实身份信息" and e["grid_id"] == 1 and e["request_id"]


def test_audit_records_logins_reads_writes_exports_and_denials(
    edit_path: Path, credentials: dict[str, tuple[str, str]]
) -> None:
    auth = tokens_for(edit_path)
    with TestClient(_app(edit_path)) as c:
        user, pw = credentials["community_admin"]
        c.post("/token", data={"username": user, "password": pw})
        c.post("/token", data={"username": user, "password": "Wrong-password-1"})
        h = auth["community_admin"]
        c.get("/collections/households/items?limit=5", headers=h)
        c.get("/collections/households/items?limit=5&f=csv", headers=h)
        store = open_store(edit_path)
        fid = _household(store, 1)
        store.close()
        cur = c.get(f"/collections/households/items/{fid}", headers=h)
        c.patch(
            f"/collections/households/items/{fid}",
            json={"properties": {"members": 2}},
            headers={**h, "If-Match": cur.headers["etag"]},
        )
        c.get("/audit", headers=h)  # denied: not an auditor
        c.post("/collections/toilets/items", json=NEW_TOILET)  # denied: public
        log = c.get("/audit?limit=1000", headers=auth["auditor"]).json()["entries"]
    seen = {(e["action"], e["result"], e["username"]) for e in log}
    assert ("login", "ok", "community1") in seen
    assert ("login", "denied", "community1") in seen
    assert ("read", "ok", "community1") in seen
    assert ("export", "ok", "community1") in seen
    assert ("update", "ok", "community1") in seen
    assert ("denied", "403", "community1") in seen
    assert ("denied", "401", None) in seen
    assert all(e["source"] and e["request_id"] and e["at"] for e in log)
    refused_by_database(edit_path, "UPDATE gridmap_audit SET result = 'ok'", "append-only")
    refused_by_database(edit_path, "DELETE FROM gridmap_audit", "append-only")


def test_planner_sees_small_counts_suppressed(
    client: TestClient, auth: dict[str, dict[str, str]]
) -> None:
    rows = client.get("/stats/grids", headers=auth["planner"]).json()["areas"]
    full = {r["id"]: r for r in client.get("/stats/grids").json()["areas"]}
    assert len(rows) == len(full) == 40
    small = withheld = 0
    for r in rows:
        for tag, n in r["tags"].items():
            real = full[r["id"]]["tags"][tag]
            if 0 < real < 5:
                assert n in ("<5", "x")  # "x": withheld with others (tests/test_disclosure)
                small += 1
            else:
                assert n in (real, "x")
                withheld += n == "x"
    assert small > 0 and withheld < small  # complementary cells are few


# ----------------------------------------------------------------------------- exports, edges


def test_csv_export_neutralises_formulas(edit_client: TestClient, edit_path: Path) -> None:
    store = open_store(edit_path)
    pt = store.get("households", _household(store, 3)).geometry
    (fid,) = store.insert(
        "households", [pt], [{"room": '=HYPERLINK("http://x")', "head_name": "+A1", "members": 1}]
    )
    store.close()
    csv = edit_client.get(
        "/collections/households/items", params={"f": "csv", "filter": f"id = {fid}"}
    ).text
    assert "'=HYPERLINK" in csv and "'+A1" in csv
    assert not re.search(r'(^|,)"?[=+@-][A-Z]', csv.replace("'=", "").replace("'+", ""), re.M)


def test_security_headers_and_csp(public_client: TestClient) -> None:
    r = public_client.get("/map")
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "http" not in csp
    for url in ("/", "/collections/grids/items"):
        r = public_client.get(url)
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY"
        assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])


def test_cors_closed_by_default_and_configurable(edit_path: Path) -> None:
    origin = {"Origin": "http://other.example", "Access-Control-Request-Method": "GET"}
    with TestClient(_app(edit_path)) as c:
        r = c.get("/collections", headers={"Origin": "http://other.example"})
        assert "access-control-allow-origin" not in r.headers
    with TestClient(_app(edit_path, cors_origins=["http://gis.intranet"])) as c:
        r = c.options("/collections", headers={**origin, "Origin": "http://gis.intranet"})
        assert r.headers["access-control-allow-origin"] == "http://gis.intranet"
        r = c.get("/collections", headers={"Origin": "http://other.example"})
        assert "access-control-allow-origin" not in r.headers


def test_household_reads_are_rate_limited(edit_path: Path) -> None:
    auth = tokens_for(edit_path)
    app = create_app(Settings(database=str(edit_path), household_reads_per_minute=3))
    with TestClient(app) as c:
        codes = [
            c.get("/collections/households/items?limit=1", headers=auth["grid_worker"]).status_code
            for _ in range(4)
        ]
    assert codes == [200, 200, 200, 429]


@pytest.mark.gpkg_only
def test_database_file_is_owner_only(sample_path: Path) -> None:
    assert (sample_path.stat().st_mode & 0o777) == 0o600


def test_oversized_bodies_are_refused_before_reading(edit_client: TestClient) -> None:
    """Every route, not only feature edits: the login form and reveal too."""
    big = "x" * 300_000
    r = edit_client.post("/token", data={"username": "admin", "password": big})
    assert r.status_code == 413 and r.headers["content-type"] == "application/problem+json"
    r = edit_client.post(
        "/collections/households/items/1/reveal", json={"field": "phone", "reason": big}
    )
    assert r.status_code == 413

    def chunks():  # type: ignore[no-untyped-def]
        for _ in range(50):
            yield b"x" * 10_000

    r = edit_client.post(
        "/token", content=chunks(), headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert r.status_code == 413


def test_api_docs_work_offline_and_can_be_turned_off(
    public_client: TestClient, edit_path: Path
) -> None:
    html = public_client.get("/docs").text
    assert "swagger-ui-bundle.js" in html
    assert not re.search(r"https?://(?!127\.0\.0\.1|testserver)", html)
    assert public_client.get("/static/docs/swagger-ui-bundle.js").status_code == 200
    with TestClient(_app(edit_path, docs=False)) as c:
        assert c.get("/docs").status_code == 404


def test_browser_session_cookie_reads_only(
    edit_path: Path, credentials: dict[str, tuple[str, str]]
) -> None:
    user, pw = credentials["grid_worker"]
    with TestClient(_app(edit_path)) as c:
        r = c.post(
            "/login",
            data={"username": user, "password": pw, "next": "//evil.example/x"},
            follow_redirects=False,
        )
        assert r.status_code == 303 and r.headers["location"] == "/map"
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
        assert c.get("/users/me").json()["username"] == user
        page = c.get("/map/grids/1")
        assert page.status_code == 200
        # the cookie never authorises a change (no CSRF): as the public, households are 404
        r = c.patch(
            "/collections/households/items/1",
            json={"properties": {"members": 1}},
            headers={"If-Match": '"households-1-v1"'},
        )
        assert r.status_code == 404
        r = c.post("/collections/toilets/items", json=NEW_TOILET)
        assert r.status_code == 401
        c.post("/logout", follow_redirects=False)
        assert c.get("/users/me").json()["role"] == "public"
        bad = c.post("/login", data={"username": user, "password": "Wrong-password-1"})
        assert bad.status_code == 401 and "wrong username or password" in bad.text


def test_every_personal_read_is_audited_and_limited_whatever_the_route(edit_path: Path) -> None:
    """nearest, maps (cached or not), stats and exports go through the same read log."""
    auth = tokens_for(edit_path)
    h = auth["subdistrict_admin"]
    near = {"collection": "households", "lon": 113.29, "lat": 34.81, "k": 100}
    with TestClient(_app(edit_path, household_reads_per_minute=5)) as c:
        codes = [c.get("/nearest", headers=h, params=near).status_code for _ in range(7)]
        assert codes == [200] * 5 + [429] * 2
    with TestClient(_app(edit_path)) as c:
        rids = []
        counts = "/map/layers/households?zoom=12"
        for url in (counts, counts, "/map/grids/3", "/stats/zones"):  # the 2nd is cached
            r = c.get(url, headers=h)
            assert r.status_code == 200
            rids.append((url, r.headers["x-request-id"]))
        r = c.get("/nearest", headers=h, params=near)
        rids.append(("/nearest", r.headers["x-request-id"]))
    store = open_store(edit_path)
    n_households = store.count("households")
    grid3 = store.count("households", Query(equals={"grid_id": 3}))
    for url, rid in rids:
        (entry,) = store.audit_entries(equals={"request_id": rid})[0]
        assert entry["action"] == "read" and entry["username"] == "admin", url
        assert entry["detail"].startswith(f"GET {url}"), url
        n = int(entry["object"].split(": ")[1].split()[0])
        if url in (counts, "/stats/zones"):
            assert n == n_households, url
        elif url == "/map/grids/3":
            assert n == grid3 and entry["grid_id"] == 3
        else:
            assert n == 100
    store.close()


def _audit_fails_for_households(path: Path | str) -> None:
    """Make the database itself refuse audit entries about households (a full disk, a
    revoked right), as another client could: a trigger gridmap does not know of."""
    if str(path).startswith("postgresql://"):
        raw_sql(
            path,
            "CREATE FUNCTION no_audit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF NEW.object LIKE 'households%' THEN RAISE EXCEPTION 'audit refused'; END IF; "
            "RETURN NEW; END $$",
        )
        raw_sql(
            path,
            "CREATE TRIGGER no_audit BEFORE INSERT ON gridmap_audit "
            "FOR EACH ROW EXECUTE FUNCTION no_audit()",
        )
    else:
        raw_sql(
            path,
            "CREATE TRIGGER no_audit BEFORE INSERT ON gridmap_audit "
            "WHEN NEW.object LIKE 'households%' BEGIN SELECT RAISE(ABORT, 'audit refused'); END",
        )


def test_a_read_whose_audit_cannot_be_written_is_not_answered(edit_path: Path) -> None:
    """The audit entry is written before the response starts; when it fails, the client
    gets a 503 and no personal data (not a 500 after the answer began)."""
    h = tokens_for(edit_path)["subdistrict_admin"]
    _audit_fails_for_households(edit_path)
    with TestClient(_app(edit_path), raise_server_exceptions=False) as c:
        r = c.get("/collections/households/items", headers=h, params={"limit": 3})
        assert r.status_code == 503 and r.headers["retry-after"] == "2"
        assert r.headers["content-type"] == "application/problem+json"
        assert "audit" in r.json()["detail"] and "features" not in r.text
        one = c.get("/collections/households/items/1", headers=h)
        assert one.status_code == 503 and "name" not in one.json()
        assert c.get("/collections/toilets/items", headers=h).status_code == 200


def test_refusals_are_audited_with_method_path_and_query(edit_path: Path) -> None:
    auth = tokens_for(edit_path)
    store = open_store(edit_path)
    other = _household(store, 2)
    store.close()
    h = auth["grid_worker"]
    with TestClient(_app(edit_path)) as c:
        missing = c.get("/collections/households/items/99999999", headers=h)
        hidden = c.get(f"/collections/households/items/{other}?crs=gcj02", headers=h)
        # the caller cannot tell an out-of-scope feature from a missing one
        assert missing.status_code == hidden.status_code == 404
        assert missing.json()["detail"].replace("99999999", "N") == hidden.json()["detail"].replace(
            str(other), "N"
        )
        patch = c.patch(
            f"/collections/households/items/{other}",
            json={"properties": {"members": 1}},
            headers={**h, "If-Match": f'"households-{other}-v1"'},
        )
        assert patch.status_code == 404
        cams = c.get("/collections/cameras/items?bbox=113,34,114,35", headers=h)
        assert cams.status_code == 404
        forbidden = c.get("/audit?action=read", headers=h)
        assert forbidden.status_code == 403
        log = {r.headers["x-request-id"]: r for r in (missing, hidden, patch, cams, forbidden)}
    store = open_store(edit_path)
    entries = {rid: store.audit_entries(equals={"request_id": rid})[0] for rid in log}
    store.close()
    assert entries[missing.headers["x-request-id"]] == []  # a missing id is not an attempt
    (e,) = entries[hidden.headers["x-request-id"]]
    assert (e["action"], e["result"], e["username"]) == ("denied_scope", "404", "worker1")
    assert e["detail"] == f"GET /collections/households/items/{other}?crs=gcj02"
    (e,) = entries[patch.headers["x-request-id"]]
    assert e["action"] == "denied_scope" and e["object"].startswith("PATCH ")
    (e,) = entries[cams.headers["x-request-id"]]
    assert e["action"] == "denied_scope" and e["detail"].endswith("?bbox=113,34,114,35")
    (e,) = entries[forbidden.headers["x-request-id"]]
    assert (e["action"], e["result"], e["detail"]) == ("denied", "403", "GET /audit?action=read")


def test_scope_follows_grid_and_user_changes_at_once(edit_path: Path) -> None:
    """A token issued before a grid moved community reads by the new assignment at once."""
    auth = tokens_for(edit_path)
    store = open_store(edit_path)
    grid = next(
        int(i)
        for i, p in zip(*(lambda fs: (fs.ids, fs.properties))(store.query("grids")), strict=True)
        if p["community_id"] == 1 and i != 1
    )
    hh = _household(store, grid)
    comms = store.query("communities")
    zone = dict(zip(comms.ids.tolist(), (p["zone_id"] for p in comms.properties), strict=True))
    target = next(c for c in zone if c != 1 and zone[c] == zone[1])  # same zone as community 1
    store.close()
    com, adm = auth["community_admin"], auth["subdistrict_admin"]
    url = f"/collections/households/items/{hh}"
    with TestClient(_app(edit_path)) as c:
        assert c.get(url, headers=com).status_code == 200
        # moving a grid to another community: that community takes it in, then the grid
        # names it (it must lie inside the community it names)
        cur = c.get(f"/collections/grids/items/{grid}", headers=adm)
        two = c.get(f"/collections/communities/items/{target}", headers=adm).json()
        grown = shapely.union(
            shapely.geometry.shape(two["geometry"]), shapely.geometry.shape(cur.json()["geometry"])
        )
        r = c.patch(
            f"/collections/communities/items/{target}",
            json={
                "geometry": shapely.geometry.mapping(
                    shapely.MultiPolygon([grown]) if grown.geom_type == "Polygon" else grown
                )
            },
            headers={**adm, "If-Match": "*"},
        )
        assert r.status_code == 200, r.text
        r = c.patch(
            f"/collections/grids/items/{grid}",
            json={"properties": {"community_id": target}},
            headers={**adm, "If-Match": cur.headers["etag"]},
        )
        assert r.status_code == 200, r.text
        assert c.get(url, headers=com).status_code == 404  # the same token, next request
        ids = {
            f["id"]
            for f in c.get(
                f"/collections/households/items?limit=1000&grid_id={grid}", headers=com
            ).json()["features"]
        }
        assert ids == set()
        store = open_store(edit_path)
        Accounts(store, secret=token_secret(store)).reassign("community1", community_id=target)
        store.close()
        assert c.get(url, headers=com).status_code == 200  # a user's new assignment too


def test_masking_is_decided_by_layer_field_and_role(
    client: TestClient, auth: dict[str, dict[str, str]], sample_store: FeatureStore
) -> None:
    """A community's public phone is not a household's phone: it filters and sorts."""
    phone = sample_store.get("communities", 3).properties["phone"]
    for role in ("subdistrict_admin", "grid_worker", "public"):
        h = auth[role]
        r = client.get("/collections/communities/items", params={"phone": phone}, headers=h)
        assert r.status_code == 200 and [f["id"] for f in r.json()["features"]] == [3], role
        r = client.get(
            "/collections/communities/items", params={"filter": f"phone = '{phone}'"}, headers=h
        )
        assert [f["id"] for f in r.json()["features"]] == [3], role
        r = client.get("/collections/communities/items?sortby=-phone", headers=h)
        got = [f["properties"]["phone"] for f in r.json()["features"]]
        assert got == sorted(got, reverse=True) and phone in got, role
    r = client.get("/collections/households/items?sortby=phone", headers=auth["grid_worker"])
    assert r.status_code == 403  # a household's phone stays masked, unusable


def test_collection_metadata_stays_in_scope(
    client: TestClient, auth: dict[str, dict[str, str]], sample_store: FeatureStore
) -> None:
    mine = sample_store.query("households", Query(equals={"grid_id": 1}))
    times = sorted(p["last_visit_at"] for p in mine.properties if p["last_visit_at"])
    lon = [g.x for g in mine.geometries]
    lat = [g.y for g in mine.geometries]
    for url in ("/collections/households", "/collections"):
        body = client.get(url, headers=auth["grid_worker"]).json()
        c = (
            body
            if "id" in body
            else next(x for x in body["collections"] if x["id"] == "households")
        )
        assert c["extent"]["temporal"]["interval"] == [[times[0], times[-1]]]
        box = c["extent"]["spatial"]["bbox"][0]
        # the R-tree keeps float32 boxes rounded outwards: within a few metres
        assert box[0] == pytest.approx(min(lon), abs=3e-5) and box[2] == pytest.approx(
            max(lon), abs=3e-5
        )
        assert box[1] == pytest.approx(min(lat), abs=3e-5) and box[3] == pytest.approx(
            max(lat), abs=3e-5
        )
    everyone = client.get("/collections/households", headers=auth["subdistrict_admin"]).json()
    assert everyone["extent"]["spatial"]["bbox"][0] != box  # the admin sees all households


def test_a_worker_sees_at_least_what_the_public_sees(
    client: TestClient, auth: dict[str, dict[str, str]], sample_store: FeatureStore
) -> None:
    grid2 = sample_store.get("grids", 2).geometry.representative_point()
    where = {"lon": grid2.x, "lat": grid2.y}
    for url, params in (
        ("/collections/grids/items", {"limit": 1000}),
        ("/collections/grids/items/2", {}),
        ("/collections/communities/items", {}),
        ("/locate", where),
        ("/nearest", {**where, "collection": "toilets", "k": 3}),
    ):
        public = client.get(url, params=params, headers=auth["public"])
        worker = client.get(url, params=params, headers=auth["grid_worker"])
        assert public.status_code == worker.status_code == 200, url
        assert worker.json() == public.json(), url
    assert (
        client.get("/locate", params=where, headers=auth["grid_worker"]).json()["grid"]["id"] == 2
    )


# POST, PATCH, DELETE on every layer, for every role (README's table of roles, written out;
# not derived from gridmap.security): three status codes run together ("201200204").
# Households and buildings lie in the worker's grid 1.
#                         pub        adm        com        wkr        pln        aud
WRITES: dict[str, list[str]] = {
    "zones":             ["401401401","201200204","403403403","403403403","403403403","404404404"],
    "communities":       ["401401401","201200204","403403403","403403403","403403403","404404404"],
    "grids":             ["401401401","201200204","403403403","403403403","403403403","404404404"],
    "buildings":         ["404404404","201200204","201200204","403403403","403403403","404404404"],
    "households":        ["404404404","201200204","201200204","201200403","404404404","404404404"],
    "old_neighbourhoods":["404404404","201200204","403403403","403403403","201200204","404404404"],
    "toilets":           ["401401401","201200204","403403403","403403403","201200204","404404404"],
    "cameras":           ["404404404","201200204","403403403","404404404","404404404","404404404"],
    "facilities":        ["401401401","201200204","403403403","403403403","403403403","404404404"],
    "roads":             ["404404404","201200204","403403403","403403403","201200204","404404404"],
}  # fmt: skip


def _new_feature(layer: str, where: shapely.Point) -> dict[str, Any]:
    x, y = where.x, where.y
    box = shapely.box(x - 1e-5, y - 1e-5, x + 1e-5, y + 1e-5)
    geom = {
        "zones": shapely.MultiPolygon([box]),
        "roads": shapely.LineString([(x - 1e-4, y), (x + 1e-4, y)]),
    }.get(
        layer,
        box if layer in ("communities", "grids", "buildings", "old_neighbourhoods") else where,
    )
    props = {
        "grids": {"code": "X1", "name": "新网格", "community_id": 1},
        "buildings": {"address": "新楼"},
        "households": {"room": "新户"},
        "facilities": {"name": "新站", "kind": "elderly_care"},
    }.get(layer, {"name": "新要素"})
    return {"type": "Feature", "geometry": shapely.geometry.mapping(geom), "properties": props}


_PATCH = {"grids": {"name": "改名"}, "buildings": {"address": "改址"}, "households": {"room": "改"}}


def test_every_role_writes_exactly_its_layers(edit_path: Path) -> None:
    auth = tokens_for(edit_path)
    store = open_store(edit_path)
    inside = store.get("grids", 1).geometry.representative_point()
    store.close()
    admin = auth["subdistrict_admin"]
    got: dict[str, list[str]] = {}
    with TestClient(_app(edit_path)) as c:
        for layer in WRITES:
            row = []
            for role in ROLES:
                h = auth[role]
                body = _new_feature(layer, inside)
                post = c.post(f"/collections/{layer}/items", json=body, headers=h)
                # PATCH and DELETE a fresh feature the admin made (nothing names it)
                made = c.post(f"/collections/{layer}/items", json=body, headers=admin)
                assert made.status_code == 201, (layer, made.text)
                url = made.headers["location"].split("testserver")[1]
                tag = made.headers["etag"]
                patch = c.patch(
                    url,
                    json={"properties": _PATCH.get(layer, {"name": "改名"})},
                    headers={**h, "If-Match": tag},
                )
                tag = c.get(url, headers=admin).headers["etag"]
                delete = c.delete(url, headers={**h, "If-Match": tag})
                row.append(f"{post.status_code}{patch.status_code}{delete.status_code}")
            got[layer] = row
    assert got == WRITES


def test_community_admins_cannot_write_outside_their_community(edit_path: Path) -> None:
    auth = tokens_for(edit_path)
    h, admin = auth["community_admin"], auth["subdistrict_admin"]
    store = open_store(edit_path)
    theirs = {int(i) for i in store.query("grids", Query(equals={"community_id": 1})).ids}
    other = next(int(i) for i in store.query("grids").ids if int(i) not in theirs)
    where = store.get("grids", other).geometry.representative_point()
    hh = _household(store, other)
    building = int(store.query("buildings", Query(equals={"grid_id": other}, limit=1)).ids[0])
    store.close()
    with TestClient(_app(edit_path)) as c:
        for layer in ("households", "buildings"):
            r = c.post(f"/collections/{layer}/items", json=_new_feature(layer, where), headers=h)
            assert r.status_code == 404, layer
        for layer, fid in (("households", hh), ("buildings", building)):
            url = f"/collections/{layer}/items/{fid}"
            tag = c.get(url, headers=admin).headers["etag"]
            r = c.patch(url, json={"properties": _PATCH[layer]}, headers={**h, "If-Match": tag})
            assert r.status_code == 404, layer
            assert c.delete(url, headers={**h, "If-Match": tag}).status_code == 404, layer
            assert c.get(url, headers=admin).headers["etag"] == tag  # nothing changed


def test_audit_entries_cannot_be_faked_and_refused_reads_cost_no_reveal(edit_path: Path) -> None:
    auth = tokens_for(edit_path)
    store = open_store(edit_path)
    mine, other = _household(store, 1), _household(store, 2)
    store.close()
    h = auth["grid_worker"]
    with TestClient(_app(edit_path, reveals_per_hour=1)) as c:
        # a name with a line break and a bidi override: logged, visibly
        c.post("/token", data={"username": "x\n2026-01-01 admin login ok\u202e", "password": "p"})
        r = c.post(
            f"/collections/households/items/{mine}/reveal",
            headers=h,
            json={"field": "phone", "reason": "核实身份信息\nforged line"},
        )
        assert r.status_code == 400
        for _ in range(3):  # outside the grid: 404, and no reveal used up
            r = c.post(
                f"/collections/households/items/{other}/reveal",
                headers=h,
                json={"field": "phone", "reason": "核实身份信息"},
            )
            assert r.status_code == 404
        r = c.post(
            f"/collections/households/items/{mine}/reveal",
            headers=h,
            json={"field": "phone", "reason": "核实身份信息"},
        )
        assert r.status_code == 200
        log = c.get("/audit?action=login&limit=10", headers=auth["auditor"]).json()["entries"]
    names = [e["username"] for e in log]
    assert "x\\u000a2026-01-01 admin login ok\\u202e" in names
    assert not any("\n" in (n or "") or "\u202e" in (n or "") for n in names)
