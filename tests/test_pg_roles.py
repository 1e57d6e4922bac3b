"""PostGIS as a deployment runs it: an owner role for the schema and a service role with
least rights; ids another client stored; a schema brought up to date only when behind."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import psycopg
import pytest
import shapely
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from api.app import create_app
from api.errors import STATUS
from gridmap.cli import app as cli
from gridmap.errors import IntegrityError, StoreError
from gridmap.layers import get_layer
from gridmap.settings import Settings
from gridmap.store import open_store
from gridmap.store.postgis import PostGISBackend
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


# ---------------------------------------------------------------- review: roles, ids, messages


def _as_role(url: str, role: str) -> str:
    return url.replace("://postgres@", f"://{role}@", 1)


def _grant(role: str, url: str) -> tuple[int, str, BaseException | None]:
    r = CliRunner().invoke(cli, ["grant-service", role, "--database", url])
    return r.exit_code, " ".join(r.output.split()), r.exception


def _may(url: str, role: str, table: str, right: str) -> bool:
    """PostgreSQL's own answer: may ``role`` do ``right`` to ``table``?"""
    return bool(raw_sql(url, "SELECT has_table_privilege(?, ?, ?)", role, table, right)[0][0])


def _granted(url: str, role: str) -> int:
    """How many rights on the tables in schema public were granted to ``role`` itself
    (from their access lists: a superuser has every right without a grant)."""
    return int(
        raw_sql(
            url,
            "SELECT count(*) FROM pg_class t CROSS JOIN LATERAL aclexplode(t.relacl) a "
            "WHERE t.relnamespace = 'public'::regnamespace AND a.grantee = ?::regrole",
            role,
        )[0][0]
    )


@pytest.fixture
def own_store(
    request: pytest.FixtureRequest,
) -> Iterator[tuple[str, Callable[..., str]]]:
    """An empty store built by a plain login role that owns its tables (not a superuser,
    not the database's owner: the database is the administrator's, as a hosted one is);
    and a maker of roles (dropped after): (owner URL, role(label, options) -> name)."""
    require_postgis()
    cluster: postgres.Cluster = request.getfixturevalue("pg_cluster")
    url = cluster.new_database("gm_own")
    made: list[str] = []

    def role(label: str, options: str = "LOGIN") -> str:
        name = f"gm_{label}_{os.getpid()}"
        with psycopg.connect(cluster.admin_url, autocommit=True) as c:
            c.execute(f'CREATE ROLE "{name}" {options}')
        made.append(name)
        return name

    owner = role("owner")
    raw_sql(url, "CREATE EXTENSION postgis")
    raw_sql(url, f'GRANT CREATE ON SCHEMA public TO "{owner}"')
    PostGISBackend.create(_as_role(url, owner)).close()
    yield _as_role(url, owner), role
    cluster.drop_database(url)
    with psycopg.connect(cluster.admin_url, autocommit=True) as c:
        for name in reversed(made):
            c.execute(f'DROP OWNED BY "{name}"')
            c.execute(f'DROP ROLE "{name}"')


def test_grant_service_refuses_a_role_that_could_reach_past_its_rights(
    own_store: tuple[str, Callable[..., str]],
) -> None:
    """Review: grant-service accepted a role that could act as the owner (a member of its
    role, one that may create roles, owns the database, schema public or a table) or
    could not log in. Each is refused with what to do, and nothing is granted; a plain
    login role is accepted (PostgreSQL's has_table_privilege says what it got)."""
    owner_url, role = own_store
    owner = owner_url.split("://", 1)[1].split("@", 1)[0]
    admin = owner_url.replace(f"://{owner}@", "://postgres@", 1)
    db = psycopg_dbname(owner_url)
    cases = [  # (label, CREATE ROLE options, set-up as the administrator, restore, said)
        ("nologin", "NOLOGIN", None, None, "NOLOGIN"),
        ("createrole", "LOGIN CREATEROLE", None, None, "CREATEROLE"),
        ("super", "LOGIN SUPERUSER", None, None, "superuser"),
        ("bypass", "LOGIN BYPASSRLS", None, None, "bypasses row security"),
        ("in_owner", "LOGIN", 'GRANT "{owner}" TO "{r}"', None, "member of the owner's role"),
        ("has_owner", "LOGIN", 'GRANT "{r}" TO "{owner}"', None, f"the owner ({owner}) is"),
        ("db", "LOGIN", 'ALTER DATABASE "{db}" OWNER TO "{r}"',
         'ALTER DATABASE "{db}" OWNER TO postgres', "owns the database"),
        ("schema", "LOGIN", 'ALTER SCHEMA public OWNER TO "{r}"',
         "ALTER SCHEMA public OWNER TO pg_database_owner", "owns schema public"),
        ("table", "LOGIN", 'ALTER TABLE toilets OWNER TO "{r}"',
         'ALTER TABLE toilets OWNER TO "{owner}"', "owns table toilets"),
        ("function", "LOGIN", 'ALTER FUNCTION gridmap_refuse() OWNER TO "{r}"',
         'ALTER FUNCTION gridmap_refuse() OWNER TO "{owner}"', "owns function gridmap_refuse"),
    ]  # fmt: skip
    for label, options, setup, restore, said in cases:
        r = role(label, options)
        names = {"owner": owner, "r": r, "db": db}
        if setup:
            raw_sql(admin, setup.format(**names))
        code, output, exc = _grant(r, owner_url)
        if restore:
            raw_sql(admin, restore.format(**names))
        assert code == 1 and said in output, (label, output)
        assert isinstance(exc, SystemExit), (label, exc)  # a message, no traceback
        assert _granted(admin, r) == 0, label
    # the premise, from PostgreSQL itself: a member of the owner's role can switch off the
    # audit log's triggers, and a role that may create roles can make itself one
    member = f"gm_in_owner_{os.getpid()}"
    raw_sql(admin, f'GRANT "{owner}" TO "{member}"')
    sql = f'BEGIN; SET ROLE "{owner}"; ALTER TABLE gridmap_audit DISABLE TRIGGER ALL; ROLLBACK'
    assert _as(_as_role(admin, member), sql) == "ok"
    creator = f"gm_createrole_{os.getpid()}"
    assert _as(_as_role(admin, creator), f'GRANT "{owner}" TO "{creator}"') == "ok"
    plain = role("plain")
    code, output, _ = _grant(plain, owner_url)
    assert code == 0, output
    for table, right, allowed in [
        ("households", "DELETE", True),
        ("toilets", "INSERT", True),
        ("gridmap_audit", "INSERT", True),
        ("gridmap_audit", "UPDATE", False),
        ("gridmap_audit", "DELETE", False),
        ("gridmap_meta", "DELETE", False),
    ]:
        assert _may(admin, plain, table, right) is allowed, (table, right)


def test_grant_service_run_by_a_role_that_cannot_grant_says_so(
    own_store: tuple[str, Callable[..., str]],
) -> None:
    """Review: run by a role that may not grant, grant-service reported success
    (PostgreSQL only warns "no privileges were granted"). A role that is not the owner is
    told to use the owner's URL; an owner whose GRANT gives nothing (CONNECT on a database
    it does not own, PUBLIC's revoked) is told what is still missing, and nothing stays
    granted."""
    owner_url, role = own_store
    owner = owner_url.split("://", 1)[1].split("@", 1)[0]
    admin = owner_url.replace(f"://{owner}@", "://postgres@", 1)
    service, other = role("svc"), role("other")
    raw_sql(admin, f'GRANT SELECT ON households TO "{other}"')  # some rights, no grant option
    code, output, exc = _grant(service, _as_role(admin, other))
    assert code == 1 and "only the owner of gridmap's tables" in output, output
    assert isinstance(exc, SystemExit)
    assert _granted(admin, service) == 0
    db = psycopg_dbname(owner_url)
    raw_sql(admin, f'REVOKE CONNECT ON DATABASE "{db}" FROM PUBLIC')
    raw_sql(admin, f'GRANT CONNECT ON DATABASE "{db}" TO "{owner}"')
    code, output, exc = _grant(service, owner_url)
    assert code == 1 and "still lacks CONNECT" in output, output
    assert isinstance(exc, SystemExit)
    assert _granted(admin, service) == 0  # the grants that ran were undone
    raw_sql(admin, f'GRANT CONNECT ON DATABASE "{db}" TO "{service}"')
    code, output, _ = _grant(service, owner_url)
    assert code == 0, output
    assert _may(admin, service, "households", "SELECT")


def test_an_upgrade_grants_the_service_role_a_new_table(owned: tuple[str, str]) -> None:
    """Review: a table an upgrade creates (a layer a later release adds) was not granted
    to the service role, so the API failed on it. The owner's upgrade grants it to every
    role grant-service let in (audit log still only read and appended to), and not to one
    whose rights were revoked since."""
    owner, service = owned
    role = service.split("://", 1)[1].split("@", 1)[0]
    assert _grant(role, owner)[0] == 0
    raw_sql(owner, "DROP TABLE toilets")  # as if this release's schema had not had it
    raw_sql(owner, "UPDATE gridmap_meta SET value = 'older' WHERE key = 'schema_digest'")
    open_store(owner).close()  # the owner's upgrade creates it again
    assert raw_sql(owner, "SELECT count(*) FROM toilets") == [(0,)]
    assert _may(owner, role, "toilets", "INSERT") and _may(owner, role, "toilets", "DELETE")
    assert not _may(owner, role, "gridmap_audit", "UPDATE")
    headers = tokens_for(owner)
    with TestClient(
        create_app(Settings(database=service)), headers=headers["subdistrict_admin"]
    ) as c:
        r = c.post("/collections/toilets/items", json=TOILET)
        assert r.status_code == 201, r.text
    assert raw_sql(owner, "SELECT count(*) FROM toilets") == [(1,)]
    raw_sql(owner, f'REVOKE ALL ON ALL TABLES IN SCHEMA public FROM "{role}"')
    raw_sql(owner, "DROP TABLE toilets")
    raw_sql(owner, "UPDATE gridmap_meta SET value = 'older' WHERE key = 'schema_digest'")
    open_store(owner).close()
    assert not _may(owner, role, "toilets", "SELECT")


LIMIT = 2**62


def _next_id(url: str, table: str, column: str) -> int:
    """The id the table's sequence gives next (read from the sequence itself)."""
    seq = raw_sql(url, "SELECT pg_get_serial_sequence(?, ?)", table, column)[0][0]
    last, called = raw_sql(url, f"SELECT last_value, is_called FROM {seq}")[0]
    return int(last) + int(called)


def test_ids_past_the_limit_are_refused_by_the_database(owned: tuple[str, str]) -> None:
    """Review: an INSERT with fid 2^63-1 from psql pushed the sequence to its end: every
    later create failed, and an audit id there broke log-ins. PostgreSQL itself now refuses
    an id outside 1 .. 2^62-1 (the ids the API addresses), inserted or set by UPDATE, on
    layers, the audit log and documents, and the sequence stays where it was."""
    owner, _ = owned
    point = "ST_SetSRID(ST_MakePoint(113.29, 34.81), 4326)"
    first = raw_sql(owner, "SELECT min(fid) FROM toilets")[0][0]
    for huge in (2**63 - 1, LIMIT, 0, -5):
        statements = [
            ("toilets", "fid", f"INSERT INTO toilets (fid, geom) VALUES ({huge}, {point})"),
            ("toilets", "fid", f"UPDATE toilets SET fid = {huge} WHERE fid = {first}"),
            ("gridmap_audit", "id", "INSERT INTO gridmap_audit (id, at, action, result) "
             f"OVERRIDING SYSTEM VALUE VALUES ({huge}, '2026-12-01', 'theirs', 'ok')"),
            ("gridmap_documents", "id", "INSERT INTO gridmap_documents (id, kind, created_at, "
             f"body) OVERRIDING SYSTEM VALUE VALUES ({huge}, 'note', '2026-12-01', '{{}}')"),
        ]  # fmt: skip
        for table, column, sql in statements:
            before = _next_id(owner, table, column)
            assert _as(owner, sql) == "23514", sql  # check_violation
            assert _next_id(owner, table, column) == before, sql
    headers = tokens_for(owner)  # log-ins append to the audit log
    with TestClient(
        create_app(Settings(database=owner)), headers=headers["subdistrict_admin"]
    ) as c:
        r = c.post("/collections/toilets/items", json=TOILET)
        assert r.status_code == 201, r.text
        assert 0 < r.json()["id"] < LIMIT


def test_an_older_store_gets_the_id_limit_and_a_sequence_at_the_end_back(
    owned: tuple[str, str],
) -> None:
    """A store of an earlier release, where psql already stored fid 2^63-1 and the
    sequence stood at the end: the owner's next open adds the CHECK (NOT VALID: the old row
    stays, new rows are checked) and sets the sequence back within the limit."""
    owner, _ = owned
    raw_sql(owner, "ALTER TABLE toilets DROP CONSTRAINT ck_toilets_fid_range")
    raw_sql(owner, "UPDATE gridmap_meta SET value = 'older' WHERE key = 'schema_digest'")
    top = raw_sql(owner, "SELECT max(fid) FROM toilets")[0][0]
    raw_sql(owner, "INSERT INTO toilets (fid, geom, name) VALUES (?, "
            "ST_SetSRID(ST_MakePoint(113.29, 34.81), 4326), 'far')", 2**63 - 1)  # fmt: skip
    raw_sql(owner, "SELECT setval(pg_get_serial_sequence('toilets', 'fid'), ?)", 2**63 - 1)
    open_store(owner).close()
    assert raw_sql(owner, "SELECT convalidated FROM pg_constraint "
                   "WHERE conname = 'ck_toilets_fid_range'") == [(False,)]  # fmt: skip
    assert _next_id(owner, "toilets", "fid") == top + 1
    assert raw_sql(owner, "SELECT count(*) FROM toilets WHERE fid = ?", 2**63 - 1) == [(1,)]
    assert _as(owner, f"INSERT INTO toilets (fid, name) VALUES ({LIMIT}, 'x')") == "23514"


def test_an_id_set_by_update_moves_the_sequence(owned: tuple[str, str]) -> None:
    """Review: the trigger missed ``UPDATE … SET fid = …``: the sequence stayed behind, so
    the id was handed out again after that row was deleted (and its ETag fit the new one).
    (Documents and the audit log need no such trigger: PostgreSQL refuses to set their ids.)"""
    owner, _ = owned
    top = raw_sql(owner, "SELECT max(fid) FROM toilets")[0][0]
    raw_sql(owner, "UPDATE toilets SET fid = ? WHERE fid = ?", top + 50, top)
    assert _next_id(owner, "toilets", "fid") == top + 51  # PostgreSQL's sequence itself
    raw_sql(owner, "DELETE FROM toilets WHERE fid = ?", top + 50)
    doc = raw_sql(owner, "INSERT INTO gridmap_documents (kind, created_at, body) "
                  "VALUES ('note', '2026-12-01', '{}') RETURNING id")[0][0]  # fmt: skip
    # documents' (and the audit log's) ids are GENERATED ALWAYS: PostgreSQL refuses to set one
    assert _as(owner, f"UPDATE gridmap_documents SET id = {doc + 40} WHERE id = {doc}") == "428C9"
    headers = tokens_for(owner)
    with TestClient(
        create_app(Settings(database=owner)), headers=headers["subdistrict_admin"]
    ) as c:
        r = c.post("/collections/toilets/items", json=TOILET)
        assert r.status_code == 201 and r.json()["id"] > top + 50, r.text
        body = {"name": "冬季走访", "starts": "2026-12-01", "ends": "2026-12-31"}
        r = c.post("/campaigns", json=body)
        assert r.status_code == 201 and r.json()["id"] > doc, r.text


def _hold(url: str, sql: str, table: str, column: str, held: threading.Event) -> None:
    """Another client (its own connection, its own transaction) stores the id the sequence
    gives next, explicitly, and commits half a second later. The sequence is put back as
    if gridmap's nextval had drawn that id just before the other client's trigger ran (the
    race the review hit), so gridmap's insert meets that uncommitted row."""
    with psycopg.connect(url) as c:
        seq = c.execute("SELECT pg_get_serial_sequence(%s, %s)", (table, column)).fetchone()[0]
        last, called = c.execute(f"SELECT last_value, is_called FROM {seq}").fetchone()
        mine = int(last) + int(called)
        c.execute(sql, (mine,))
        c.execute("SELECT setval(%s::regclass, %s)", (seq, mine - 1))  # (no rollback undoes)
        held.set()
        time.sleep(0.5)
        c.commit()


def test_an_id_another_client_takes_meanwhile_is_tried_again(owned: tuple[str, str]) -> None:
    """Review: while psql stored explicit ids, API creates got 409 and audited household
    reads 500 (nextval gave an id an explicit insert took meanwhile). gridmap's insert
    waits for the other transaction's row, and on its commit tries again with a new id."""
    owner, _ = owned
    headers = tokens_for(owner)
    settings = Settings(database=owner, household_reads_per_minute=100_000)
    feature = ("INSERT INTO toilets (fid, geom, name) VALUES "
               "(%s, ST_SetSRID(ST_MakePoint(113.29, 34.81), 4326), 'theirs')")  # fmt: skip
    audit = ("INSERT INTO gridmap_audit (id, at, action, result) OVERRIDING SYSTEM VALUE "
             "VALUES (%s, '2026-12-01T00:00:00Z', 'theirs', 'ok')")  # fmt: skip
    with TestClient(create_app(settings), headers=headers["subdistrict_admin"]) as c:
        assert c.get("/collections/households/items?limit=1").status_code == 200
        for table, column, sql in (("toilets", "fid", feature), ("gridmap_audit", "id", audit)):
            taken = _next_id(owner, table, column)
            held = threading.Event()
            other = threading.Thread(target=_hold, args=(owner, sql, table, column, held))
            other.start()
            assert held.wait(10)
            if table == "toilets":
                r = c.post("/collections/toilets/items", json=TOILET)
                assert r.status_code == 201, r.text
                assert r.json()["id"] > taken
            else:
                r = c.get("/collections/households/items?limit=1")
                assert r.status_code == 200, r.text
            other.join()
            col = "name" if table == "toilets" else "action"
            q = f"SELECT {col} FROM {table} WHERE {column} = ?"
            assert raw_sql(owner, q, taken) == [("theirs",)]  # the other client's row
    read = raw_sql(owner, "SELECT count(*) FROM gridmap_audit WHERE id > ? "
                   "AND action LIKE 'read%%'", taken)  # fmt: skip
    assert read[0][0] >= 1  # the read was audited, under a later id


def test_creates_and_audited_reads_while_psql_stores_explicit_ids(
    owned: tuple[str, str],
) -> None:
    """The same race unprepared: a client stores the ids the sequences give next, as fast
    as it can, while the API creates features and serves audited reads; every request
    succeeds, each created id holds the API's feature (not the other client's row), and
    every read is in the audit log."""
    owner, _ = owned
    headers = tokens_for(owner)
    settings = Settings(database=owner, household_reads_per_minute=100_000)
    stop = threading.Event()
    stored: list[int] = []
    theirs = {
        "toilets": "INSERT INTO toilets (fid, name) VALUES (%s, 'theirs')",
        "gridmap_audit": "INSERT INTO gridmap_audit (id, at, action, result) OVERRIDING "
        "SYSTEM VALUE VALUES (%s, '2026-12-01', 'theirs', 'ok')",
    }

    def race() -> None:
        with psycopg.connect(owner, autocommit=True) as c:
            seqs = {
                t: c.execute("SELECT pg_get_serial_sequence(%s, %s)", (t, col)).fetchone()[0]
                for t, col in (("toilets", "fid"), ("gridmap_audit", "id"))
            }
            while not stop.is_set():
                for table, sql in theirs.items():
                    row = c.execute(f"SELECT last_value, is_called FROM {seqs[table]}").fetchone()
                    with contextlib.suppress(psycopg.errors.UniqueViolation):  # gridmap's first
                        c.execute(sql, (int(row[0]) + int(row[1]),))
                        stored.append(1)

    (before,) = raw_sql(owner, "SELECT coalesce(max(id), 0) FROM gridmap_audit")[0]
    racer = threading.Thread(target=race)
    statuses: list[int] = []
    created: list[int] = []
    with TestClient(create_app(settings), headers=headers["subdistrict_admin"]) as c:
        racer.start()
        try:
            for _ in range(25):
                r = c.post("/collections/toilets/items", json=TOILET)
                statuses.append(r.status_code)
                created += [r.json()["id"]] if r.status_code == 201 else []
                statuses.append(c.get("/collections/households/items?limit=1").status_code)
        finally:
            stop.set()
            racer.join()
    assert set(statuses) == {200, 201}, statuses
    assert stored  # the other client did store ids meanwhile
    names = raw_sql(owner, "SELECT DISTINCT name FROM toilets WHERE fid = ANY(?)", created)
    assert len(set(created)) == 25 and names == [(TOILET["properties"]["name"],)]
    reads = raw_sql(owner, "SELECT count(*) FROM gridmap_audit WHERE id > ? AND action LIKE "
                    "'read%%' AND action <> 'theirs'", before)  # fmt: skip
    assert reads[0][0] >= 25


INTERNALS = ("pkey", "_seq", "constraint", "ck_", "Key (", "gridmap_")


def test_refusals_are_told_without_database_internals(
    owned: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """Review: 409 and 400 answers named constraints and sequences
    ("gridmap_audit_pkey", "households_fid_seq"). A unique and a check violation, and a
    sequence at its end, are said in plain words (with what to do); the names are logged."""
    owner, _ = owned
    layer = get_layer("toilets")
    top = raw_sql(owner, "SELECT max(fid) FROM toilets")[0][0]
    store = open_store(owner)
    try:
        point = np.array([shapely.Point(113.29, 34.81)], dtype=object)
        for ids in ([top], [LIMIT]):  # a unique violation, then a check violation
            with pytest.raises(IntegrityError) as caught:
                store.backend.load_rows(layer, ids, point, [{"name": "x"}], [1])
            text = str(caught.value)
            assert not any(word in text for word in INTERNALS), text
            assert "try again" in text or "tell the administrator" in text, text
            assert STATUS[type(caught.value)] == 409
    finally:
        store.close()
    assert "toilets_pkey" in caplog.text and "ck_toilets_fid_range" in caplog.text  # logged
    headers = tokens_for(owner)
    raw_sql(owner, "INSERT INTO toilets (fid, name) VALUES (?, 'last')", LIMIT - 1)  # allowed
    with TestClient(
        create_app(Settings(database=owner)), headers=headers["subdistrict_admin"]
    ) as c:
        r = c.post("/collections/toilets/items", json=TOILET)  # nextval gives 2^62: refused
        assert r.status_code == 409, r.text
        assert not any(word in r.text for word in INTERNALS), r.text
        assert "no new id is left" in r.text and "tell the administrator" in r.text
        raw_sql(owner, "ALTER TABLE toilets DROP CONSTRAINT ck_toilets_fid_range")
        raw_sql(owner, "SELECT setval(pg_get_serial_sequence('toilets', 'fid'), ?)", 2**63 - 1)
        r = c.post("/collections/toilets/items", json=TOILET)  # nextval at bigint's end
        assert r.status_code == 409, r.text
        assert not any(word in r.text for word in INTERNALS), r.text
        assert "no new id is left" in r.text
