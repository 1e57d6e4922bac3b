"""PostGIS as a deployment runs it: an owner role for the schema and a service role with
least rights; ids another client stored; a schema brought up to date only when behind."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from api.app import create_app
from gridmap.cli import app as cli
from gridmap.errors import StoreError
from gridmap.settings import Settings
from gridmap.store import open_store
from tests import postgres
from tests.conftest import psycopg_dbname, raw_sql, require_postgis, tokens_for

pytestmark = pytest.mark.postgis

TOILET = {
    "type": "Feature",
    "geometry": {"type": "Point", "coordinates": [113.2905, 34.8105]},
    "properties": {"name": "新建公厕", "status": "planned", "units": 8},
}


@pytest.fixture
def owned(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """A private copy of the sample (owned by the cluster's superuser) and the URL of a
    fresh login role that owns nothing: (owner URL, service URL)."""
    require_postgis()
    cluster: postgres.Cluster = request.getfixturevalue("pg_cluster")
    template: str = request.getfixturevalue("sample_template")
    url = cluster.new_database("gm_roles", template=template)
    role = f"gm_service_{os.getpid()}_{psycopg_dbname(url)[-4:].strip('_')}"
    with psycopg.connect(cluster.admin_url, autocommit=True) as c:
        c.execute(f'CREATE ROLE "{role}" LOGIN')
    yield url, url.replace("://postgres@", f"://{role}@", 1)
    cluster.drop_database(url)
    with psycopg.connect(cluster.admin_url, autocommit=True) as c:
        c.execute(f'DROP OWNED BY "{role}"')
        c.execute(f'DROP ROLE "{role}"')


def _as(url: str, sql: str) -> str:
    """Run ``sql`` as the URL's role; the error's SQLSTATE, or 'ok'."""
    try:
        with psycopg.connect(url, autocommit=True) as c:
            c.execute(sql)
    except psycopg.Error as exc:
        return str(exc.sqlstate)
    return "ok"


def test_a_service_role_serves_with_least_rights(owned: tuple[str, str]) -> None:
    """After `gridmap grant-service`, the API works as a role that owns nothing: reads,
    audited reads, edits with ETags, campaigns; that role cannot rewrite the audit log,
    disable its triggers, or change the schema."""
    owner, service = owned
    role = service.split("://", 1)[1].split("@", 1)[0]
    assert "permission denied" in str(_open_error(service))  # nothing granted yet
    result = CliRunner().invoke(cli, ["grant-service", role, "--database", owner])
    assert result.exit_code == 0, result.output
    headers = tokens_for(service)
    before = raw_sql(owner, "SELECT count(*) FROM gridmap_audit")[0][0]
    settings = Settings(database=service, household_reads_per_minute=100_000)
    with TestClient(create_app(settings), headers=headers["subdistrict_admin"]) as c:
        assert c.get("/collections/households/items?limit=5").status_code == 200
        r = c.post("/collections/toilets/items", json=TOILET)
        assert r.status_code == 201, r.text
        url = f"/collections/toilets/items/{r.json()['id']}"
        r = c.put(url, json=TOILET, headers={"If-Match": r.headers["etag"]})
        assert r.status_code == 200, r.text
        assert c.delete(url, headers={"If-Match": r.headers["etag"]}).status_code == 204
        body = {"name": "冬季走访", "starts": "2026-12-01", "ends": "2026-12-31"}
        assert c.post("/campaigns", json=body).status_code == 201
    actions = {
        a for (a,) in raw_sql(owner, "SELECT action FROM gridmap_audit WHERE id > ?", before)
    }
    assert {"read", "create", "update", "delete"} <= {a.split(":")[0] for a in actions}, actions
    for sql in (
        "UPDATE gridmap_audit SET result = 'ok'",
        "DELETE FROM gridmap_audit",
        "TRUNCATE gridmap_audit",
        "ALTER TABLE gridmap_audit DISABLE TRIGGER ALL",
        "ALTER TABLE toilets DISABLE TRIGGER USER",
        "DROP TABLE toilets",
        "CREATE TABLE gridmap_evil (x int)",
    ):
        assert _as(service, sql) == "42501", sql  # insufficient_privilege
    for sql in ("DELETE FROM gridmap_audit", "ALTER TABLE gridmap_audit DISABLE TRIGGER ALL"):
        assert _as(owner, sql) != "42501"  # the owner could: the split is what stops it
    assert raw_sql(owner, "SELECT count(*) FROM gridmap_audit")[0][0] > before


def _open_error(url: str) -> Exception | None:
    try:
        open_store(url).close()
    except StoreError as exc:
        return exc
    return None


def test_a_current_schema_is_opened_without_ddl(owned: tuple[str, str]) -> None:
    """Opening a store of this release runs no DDL (a service role may open it); an older
    schema is brought up to date by its owner, and the service role is told so."""
    owner, service = owned
    role = service.split("://", 1)[1].split("@", 1)[0]
    CliRunner().invoke(cli, ["grant-service", role, "--database", owner])
    open_store(service).close()  # no DDL: would be "must be owner"
    raw_sql(owner, "UPDATE gridmap_meta SET value = 'older' WHERE key = 'schema_digest'")
    raw_sql(owner, "DROP TRIGGER gridmap_users_truncate_stamp ON gridmap_users")
    err = _open_error(service)
    assert err is not None and "as the owner" in str(err), err
    open_store(owner).close()
    assert raw_sql(owner, "SELECT count(*) FROM pg_trigger WHERE tgname = ?",
                   "gridmap_users_truncate_stamp") == [(1,)]  # fmt: skip
    open_store(service).close()


def test_an_id_another_client_used_is_never_handed_out(owned: tuple[str, str]) -> None:
    """Review: psql stored a feature with an explicit id and deleted it; the API then gave
    that id to a new feature, and an ETag of the old one matched it. Also the audit log
    and documents, whose explicit ids made the next login a 409."""
    owner, _ = owned
    top = raw_sql(owner, "SELECT max(fid) FROM toilets")[0][0]
    far = top + 3
    raw_sql(owner, "INSERT INTO toilets (fid, geom, name) VALUES (?, "
            "ST_SetSRID(ST_MakePoint(113.29, 34.81), 4326), 'theirs')", far)  # fmt: skip
    raw_sql(owner, "DELETE FROM toilets WHERE fid = ?", far)
    (audit_top,) = raw_sql(owner, "SELECT coalesce(max(id), 0) FROM gridmap_audit")[0]
    raw_sql(owner, "INSERT INTO gridmap_audit (id, at, action, result) OVERRIDING SYSTEM VALUE "
            "VALUES (?, '2026-12-01T00:00:00Z', 'theirs', 'ok')", audit_top + 1)  # fmt: skip
    (doc_top,) = raw_sql(owner, "SELECT coalesce(max(id), 0) FROM gridmap_documents")[0]
    raw_sql(owner, "INSERT INTO gridmap_documents (id, kind, created_at, body) OVERRIDING "
            "SYSTEM VALUE VALUES (?, 'note', '2026-12-01', '{}')", doc_top + 1)  # fmt: skip
    headers = tokens_for(owner)  # appends to the audit log
    settings = Settings(database=owner, household_reads_per_minute=100_000)
    with TestClient(create_app(settings), headers=headers["subdistrict_admin"]) as c:
        r = c.post("/collections/toilets/items", json=TOILET)
        assert r.status_code == 201, r.text
        assert r.json()["id"] > far
        r = c.put(
            f"/collections/toilets/items/{far}",
            json=TOILET,
            headers={"If-Match": f'"toilets-{far}-v1"'},
        )
        assert r.status_code == 404
        body = {"name": "冬季走访", "starts": "2026-12-01", "ends": "2026-12-31"}
        r = c.post("/campaigns", json=body)
        assert r.status_code == 201, r.text
        assert r.json()["id"] > doc_top + 1
    ids = [i for (i,) in raw_sql(owner, "SELECT id FROM gridmap_audit WHERE id > ?", audit_top)]
    assert len(ids) > 1 and len(set(ids)) == len(ids)


def test_truncating_accounts_moves_their_stamp(owned: tuple[str, str]) -> None:
    """Review: TRUNCATE gridmap_users did not move its change stamp, so caches of accounts
    (tokens remembered by every process) outlived the accounts."""
    owner, _ = owned
    before: Any = raw_sql(owner, "SELECT stamp FROM gridmap_changes WHERE layer = 'gridmap_users'")
    raw_sql(owner, "TRUNCATE gridmap_users")
    after = raw_sql(owner, "SELECT stamp FROM gridmap_changes WHERE layer = 'gridmap_users'")
    assert after[0][0] > before[0][0]


def test_a_copied_store_never_hands_out_a_deleted_id_again(owned: tuple[str, str]) -> None:
    """Review: after a copy the sequence stood 'not called' at max+1; the catch-up read that
    as 0 and moved it back to max, so a deleted feature's id and ETag went to a new one."""
    owner, _ = owned
    headers = tokens_for(owner)
    settings = Settings(database=owner, household_reads_per_minute=100_000)
    with TestClient(create_app(settings), headers=headers["subdistrict_admin"]) as c:
        last = raw_sql(owner, "SELECT max(fid) FROM toilets")[0][0]  # the copy's top row first
        for _ in range(3):
            url = f"/collections/toilets/items/{last}"
            tag = c.get(url).headers["etag"]
            assert c.delete(url, headers={"If-Match": tag}).status_code == 204
            r = c.post("/collections/toilets/items", json=TOILET)
            assert r.status_code == 201, r.text
            assert r.json()["id"] > last
            last = r.json()["id"]
