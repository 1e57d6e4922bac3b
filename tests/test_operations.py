"""Operations: health and readiness, the JSON log, Prometheus figures, idempotent creation,
backup and restore (checked by SQLite's shell and by PostgreSQL), upgrade of a store the
first release wrote, and a full disk."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from api.server import gridmap_server
from gridmap.backup import BackupError, backup, restore, verify
from gridmap.settings import Settings
from tests.conftest import BACKEND, copy_database, raw_sql, refused_by_database, tokens_for

FIRST_RELEASE = Path(__file__).parent / "data" / "first-release.gpkg"
FIRST_RELEASE_PG = Path(__file__).parent / "data" / "first-release-postgis.dump"
GRIDMAP = [str(Path(sys.executable).parent / "gridmap")]  # the installed command


def toilet(name: str) -> dict[str, Any]:
    return {
        "type": "Feature",
        "properties": {"name": name, "status": "planned"},
        "geometry": {"type": "Point", "coordinates": [113.291, 34.811]},
    }


def named(target: Path | str, name: str) -> int:
    return int(raw_sql(target, "SELECT count(*) FROM toilets WHERE name = ?", name)[0][0])


# ---------------------------------------------------------------- health, logs, metrics


def test_health_and_ready(edit_client: TestClient, edit_path: Path | str) -> None:
    public = TestClient(edit_client.app)
    assert public.get("/health").json() == {"status": "ok"}
    assert public.get("/ready").json() == {"status": "ready"}
    raw_sql(edit_path, "UPDATE gridmap_meta SET value = 'older' WHERE key = 'schema_digest'")
    r = public.get("/ready")
    assert r.status_code == 503
    assert "gridmap upgrade" in r.json()["detail"] and r.headers["Retry-After"]
    assert public.get("/health").status_code == 200  # alive, though not ready


def test_each_request_logs_one_json_line_with_its_id(
    edit_client: TestClient, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    r = edit_client.get("/collections/households/items", params={"limit": 2})
    missing = edit_client.get("/collections/households/items/999999999")
    lines = [orjson.loads(x) for x in capsys.readouterr().err.splitlines() if x.startswith("{")]
    by_id = {x.get("request_id"): x for x in lines if x.get("logger") == "gridmap.access"}
    line = by_id[r.headers["X-Request-ID"]]
    assert line["route"] == "/collections/{collection_id}/items"
    assert line["status"] == 200 and line["method"] == "GET" and line["level"] == "info"
    assert line["user"] and line["duration_ms"] >= line["db_ms"] >= 0
    assert by_id[missing.headers["X-Request-ID"]]["status"] == 404


def test_text_log_lines_cannot_be_forged(capsys: pytest.CaptureFixture[str]) -> None:
    import logging

    from gridmap.observe import configure_logging

    configure_logging("text")
    try:
        logging.getLogger("gridmap.access").info("GET /x\n2026-12-05 INFO forged 200\r")
        err = capsys.readouterr().err
    finally:
        configure_logging("json")
    assert err.count("\n") == 1 and "\\x0a2026-12-05 INFO forged" in err


@pytest.mark.slow
def test_metrics_count_per_route_on_a_real_server(edit_path: Path | str) -> None:
    headers = tokens_for(edit_path)["subdistrict_admin"]
    with gridmap_server(edit_path) as url:
        for _ in range(5):
            assert httpx.get(f"{url}/collections/grids/items", headers=headers).status_code == 200
        assert httpx.get(f"{url}/no/such/page").status_code == 404
        for verb in ("PROPFIND", "MKCOL", "BREW"):  # made-up methods add no series
            httpx.request(verb, f"{url}/collections")
        text = httpx.get(f"{url}/metrics").text
        # as Prometheus reads it (the client library's own parser)
        families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = families["gridmap_http_requests"].samples
    count = {
        (s.labels["route"], s.labels["status"]): s.value
        for s in samples
        if s.name == "gridmap_http_requests_total"
    }
    assert count[("/collections/{collection_id}/items", "200")] == 5
    assert count[("(unmatched)", "404")] == 1
    methods = {s.labels["method"] for s in samples if s.name == "gridmap_http_requests_total"}
    assert methods == {"GET", "other"}
    db = {
        s.labels["route"]: s.value
        for s in families["gridmap_db_seconds"].samples
        if s.name == "gridmap_db_seconds_count"
    }
    assert db["/collections/{collection_id}/items"] == 5
    with TestClient(create_app(Settings(database=str(edit_path)))) as c:
        assert c.get("/metrics").status_code == 404  # not from a loopback address


# ---------------------------------------------------------------- idempotent creation


def test_a_resent_creation_creates_nothing_more(
    edit_client: TestClient, edit_path: Path | str, edit_auth: dict[str, dict[str, str]]
) -> None:
    key = str(uuid.uuid4())
    first = edit_client.post(
        "/collections/toilets/items", json=toilet("幂等公厕"), headers={"Idempotency-Key": key}
    )
    again = edit_client.post(
        "/collections/toilets/items", json=toilet("幂等公厕"), headers={"Idempotency-Key": key}
    )
    assert first.status_code == again.status_code == 201
    assert again.headers["Location"] == first.headers["Location"]
    assert (
        again.headers["Idempotent-Replayed"] == "true"
        and "Idempotent-Replayed" not in first.headers
    )
    assert named(edit_path, "幂等公厕") == 1
    fid = first.json()["id"]
    created = raw_sql(
        edit_path, "SELECT count(*) FROM gridmap_audit WHERE action = 'create' AND object = ?",
        f"toilets/{fid}",
    )  # fmt: skip
    assert created[0][0] == 1
    other = edit_client.post(
        "/collections/toilets/items", json=toilet("别的公厕"), headers={"Idempotency-Key": key}
    )
    assert other.status_code == 422 and "another request" in other.json()["detail"]
    assert named(edit_path, "别的公厕") == 0
    # a key is each user's own: the planner's same key creates the planner's toilet
    planner = TestClient(edit_client.app, headers=edit_auth["planner"])
    theirs = planner.post(
        "/collections/toilets/items", json=toilet("幂等公厕"), headers={"Idempotency-Key": key}
    )
    assert theirs.status_code == 201 and theirs.json()["id"] != fid
    bad = edit_client.post(
        "/collections/toilets/items", json=toilet("坏键"), headers={"Idempotency-Key": "a b"}
    )
    assert bad.status_code == 400 and named(edit_path, "坏键") == 0


def test_a_key_whose_feature_went_or_whose_time_ran_out(
    edit_client: TestClient, edit_path: Path | str
) -> None:
    key = {"Idempotency-Key": "gone-1"}
    made = edit_client.post("/collections/toilets/items", json=toilet("将删除"), headers=key)
    fid = made.json()["id"]
    tag = edit_client.get(f"/collections/toilets/items/{fid}").headers["ETag"]
    assert (
        edit_client.delete(
            f"/collections/toilets/items/{fid}", headers={"If-Match": tag}
        ).status_code
        == 204
    )
    again = edit_client.post("/collections/toilets/items", json=toilet("将删除"), headers=key)
    assert again.status_code == 409 and "new key" in again.json()["detail"]
    # a day later the key is free again
    raw_sql(edit_path, "UPDATE gridmap_idempotency SET at = at - 90000 WHERE key = 'gone-1'")
    later = edit_client.post("/collections/toilets/items", json=toilet("将删除"), headers=key)
    assert later.status_code == 201 and "Idempotent-Replayed" not in later.headers
    assert later.json()["id"] != fid


def test_a_resent_campaign_starts_one_campaign(edit_client: TestClient) -> None:
    body = {"name": "幂等走访", "starts": "2026-12-01", "ends": "2026-12-31"}
    key = {"Idempotency-Key": str(uuid.uuid4())}
    first = edit_client.post("/campaigns", json=body, headers=key)
    again = edit_client.post("/campaigns", json=body, headers=key)
    assert first.status_code == again.status_code == 201, first.text
    assert (
        again.json()["id"] == first.json()["id"] and again.headers["Idempotent-Replayed"] == "true"
    )
    listed = edit_client.get("/campaigns").json()["campaigns"]
    assert [c["name"] for c in listed].count("幂等走访") == 1
    other = edit_client.post("/campaigns", json={**body, "name": "别的"}, headers=key)
    assert other.status_code == 422


@pytest.mark.slow
def test_racing_resends_create_one_feature(edit_path: Path | str) -> None:
    headers = {**tokens_for(edit_path)["subdistrict_admin"], "Idempotency-Key": "race-1"}
    answers: list[httpx.Response] = []
    with gridmap_server(edit_path) as url:
        start = threading.Barrier(12)

        def send() -> None:
            with httpx.Client(timeout=60) as c:
                start.wait()
                answers.append(
                    c.post(f"{url}/collections/toilets/items", json=toilet("竞速"), headers=headers)
                )

        threads = [threading.Thread(target=send) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert [a.status_code for a in answers] == [201] * 12
    assert len({a.json()["id"] for a in answers}) == 1
    assert named(edit_path, "竞速") == 1


# ---------------------------------------------------------------- backup and restore


def missing(what: str) -> None:
    """Skip without ``what``, but fail in CI (CI=true), which must have it."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI must have {what}")
    pytest.skip(f"needs {what}")


def sha3sum(path: Path) -> str:
    """The content digest of SQLite's own shell (not gridmap's code)."""
    if shutil.which("sqlite3") is None:
        missing("SQLite's shell (apt-get install sqlite3)")
    done = subprocess.run(
        ["sqlite3", str(path), ".sha3sum"], capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def restore_target(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    if BACKEND == "postgis":
        return request.getfixturevalue("pg_cluster").new_database("gm_restored")
    return tmp_path / "restored.gpkg"


def figures(target: Path | str) -> Any:
    """Every table's rows as the database itself digests them: SQLite's shell, or
    PostgreSQL's md5 of each row."""
    if BACKEND == "postgis":
        import psycopg

        from gridmap.backup import pg_figures

        with psycopg.connect(str(target)) as conn:
            return pg_figures(conn)
    return sha3sum(Path(target))


def test_backup_and_restore_give_the_same_data(
    edit_client: TestClient, edit_path: Path | str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    assert edit_client.post("/collections/toilets/items", json=toilet("备份前")).status_code == 201
    before = figures(edit_path)
    out = tmp_path / "backup.dump"
    done = subprocess.run([*GRIDMAP, "backup", str(out), "--database", str(edit_path)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "backed up" in " ".join(done.stdout.split())
    target = restore_target(request, tmp_path)
    done = subprocess.run([*GRIDMAP, "restore", str(out), "--database", str(target)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "integrity checks passed" in done.stdout
    assert figures(target) == before
    assert named(target, "备份前") == 1
    if BACKEND == "postgis":  # a database that is not empty is refused, and left as it was
        other = request.getfixturevalue("pg_cluster").new_database("gm_occupied")
        raw_sql(other, "CREATE TABLE invoices (id int)")
        with pytest.raises(BackupError, match="not empty"):
            restore(out, other)
        assert raw_sql(other, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [
            (1,)
        ]
    # the audit log is append-only in the copy too
    raw_sql(target, "INSERT INTO gridmap_audit (at, action, result) VALUES ('now', 'x', 'ok')")
    refused_by_database(target, "UPDATE gridmap_audit SET result = 'changed'", "append-only")
    refused_by_database(target, "DELETE FROM gridmap_audit", "append-only")


def test_a_damaged_backup_is_refused_and_nothing_replaced(tmp_path: Path, sample_gpkg: Any) -> None:
    src = copy_database(sample_gpkg[0], tmp_path / "src.gpkg")
    out = tmp_path / "b.gpkg"
    backup(str(src), out)
    verify(out)
    for made in (out, out.with_name(out.name + ".manifest.json")):  # the owner's alone
        assert made.stat().st_mode & 0o777 == 0o600
    target = copy_database(sample_gpkg[0], tmp_path / "target.gpkg")
    before = hashlib.sha256(target.read_bytes()).hexdigest()
    data = bytearray(out.read_bytes())
    data[len(data) // 2] ^= 0xFF
    out.write_bytes(bytes(data))
    with pytest.raises(BackupError, match="SHA-256 differs"):
        restore(out, str(target))
    assert hashlib.sha256(target.read_bytes()).hexdigest() == before
    with pytest.raises(BackupError, match="already exists"):
        backup(str(src), out)


@pytest.mark.gpkg_only
def test_odd_paths_and_a_second_restore(tmp_path: Path, sample_gpkg: Any) -> None:
    from gridmap.backup import _only_restore

    odd = tmp_path / "site#2 %41?"
    odd.mkdir()
    src = copy_database(sample_gpkg[0], odd / "db.gpkg")
    out = odd / "b.gpkg"
    m = backup(str(src), out)  # the file named, not "site" nor "%41" read as "A"
    assert m.tables["households"]["rows"] == raw_sql(src, "SELECT count(*) FROM households")[0][0]
    target = odd / "restored.gpkg"
    restore(out, str(target))
    assert sha3sum(target) == sha3sum(src)
    assert target.stat().st_mode & 0o777 == 0o600
    with _only_restore(target.resolve()), pytest.raises(BackupError, match="another restore"):
        restore(out, str(target))
    link = tmp_path / "link.gpkg"
    link.symlink_to(target)
    restore(out, str(link))  # through the link, onto its file; the link stays a link
    assert link.is_symlink() and sha3sum(target) == sha3sum(src)


def test_errors_are_one_line_and_leave_nothing(tmp_path: Path, sample_gpkg: Any) -> None:
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"not a database" * 100)
    sha = hashlib.sha256(garbage.read_bytes()).hexdigest()
    manifest = {"kind": "gpkg", "created_at": "x", "schema_digest": None, "sha256": sha,
                "tables": {}, "method": ""}  # fmt: skip
    (tmp_path / "garbage.bin.manifest.json").write_bytes(orjson.dumps(manifest))
    folder = tmp_path / "a-folder"
    folder.mkdir()
    src = copy_database(sample_gpkg[0], tmp_path / "src.gpkg")
    out = tmp_path / "b.gpkg"
    backup(str(src), out)
    cases = [
        (["restore", str(garbage), "--check-only"], "no SQLite database"),
        (["restore", str(out), "--database", str(folder)], "is a folder"),
        (["backup", str(tmp_path / "x.gpkg"), "--database", str(garbage)], "not an SQLite"),
        (["backup", str(tmp_path / "z.gpkg"), "--database", str(folder / "no.gpkg")], "no GeoPack"),
        (["upgrade", "--database", str(garbage)], "not an SQLite database"),
        (["backup", str(tmp_path / "y.dump"), "--database", "postgresql://u:secret@127.0.0.1:1/x"],
         "database server"),
    ]  # fmt: skip
    for args, says in cases:
        done = subprocess.run([*GRIDMAP, *args], capture_output=True, text=True, check=False)
        said = " ".join((done.stdout + done.stderr).split())
        assert done.returncode == 1, (args, said)
        assert says in said and "Traceback" not in said and "secret" not in said, (args, said)
    check = subprocess.run([*GRIDMAP, "upgrade", "--check", "--database", str(garbage)],
                           capture_output=True, text=True, check=False)  # fmt: skip
    assert check.returncode == 2  # an error, not "an upgrade is due"
    assert not list(tmp_path.glob("*.partial")) and not list(tmp_path.glob("*.restoring"))
    assert not (tmp_path / "x.gpkg").exists() and not list(tmp_path.glob("garbage.pre-upgrade*"))


@pytest.mark.slow
@pytest.mark.gpkg_only
def test_restore_refuses_a_file_a_service_has_open(tmp_path: Path, sample_gpkg: Any) -> None:
    target = copy_database(sample_gpkg[0], tmp_path / "live.gpkg")
    out = tmp_path / "b.gpkg"
    backup(str(target), out)
    with gridmap_server(target) as url:
        assert httpx.get(f"{url}/ready").status_code == 200
        with pytest.raises(BackupError, match="stop it first"):
            restore(out, str(target))
        link = tmp_path / "link.gpkg"
        link.symlink_to(target)
        with pytest.raises(BackupError, match="stop it first"):
            restore(out, str(link))
        assert httpx.get(f"{url}/ready").status_code == 200
    assert not list(tmp_path.glob("live.gpkg.before-restore-*"))


# ---------------------------------------------------------------- upgrade


def table_sums(path: Path, tables: list[str]) -> dict[str, str]:
    sha3sum(path)  # SQLite's shell is there
    out = {}
    for t in tables:
        done = subprocess.run(["sqlite3", str(path), f".sha3sum {t}"], capture_output=True,
                              text=True, check=True)  # fmt: skip
        out[t] = done.stdout.strip()
    return out


@pytest.mark.gpkg_only
def test_upgrade_a_store_of_the_first_release(tmp_path: Path) -> None:
    from gridmap.layers import LAYERS

    db = tmp_path / "old.gpkg"
    shutil.copyfile(FIRST_RELEASE, db)
    layers = [
        lay.id
        for lay in LAYERS
        if raw_sql(db, "SELECT 1 FROM sqlite_master WHERE name = ?", lay.id)
    ]
    before = table_sums(db, layers)
    check = subprocess.run([*GRIDMAP, "upgrade", "--check", "--database", str(db)],
                           capture_output=True, text=True, check=False)  # fmt: skip
    assert check.returncode == 1 and "needs `gridmap upgrade`" in " ".join(check.stdout.split())
    done = subprocess.run([*GRIDMAP, "upgrade", "--database", str(db)], capture_output=True,
                          text=True, check=False)  # fmt: skip
    said = " ".join(done.stdout.split())
    assert done.returncode == 0, said + done.stderr
    assert "schema upgraded first release" in said and "integrity checks passed" in said
    saved = next(tmp_path.glob("old.pre-upgrade-*.gpkg"))
    assert sha3sum(saved) == sha3sum(FIRST_RELEASE)  # the backup taken first is the old store
    assert table_sums(db, layers) == before  # no feature changed
    again = subprocess.run([*GRIDMAP, "upgrade", "--check", "--database", str(db)],
                           capture_output=True, text=True, check=False)  # fmt: skip
    assert again.returncode == 0
    # the upgraded store serves and takes an edit, with its audit entry
    from gridmap.accounts import seed_sample_users
    from gridmap.store import open_store

    store = open_store(db)
    seed_sample_users(store)
    store.close()
    app = create_app(Settings(database=str(db)))
    with TestClient(app, headers=tokens_for(db)["subdistrict_admin"]) as c:
        assert c.get("/ready").status_code == 200
        hh = c.get("/collections/households/items", params={"limit": 1}).json()["features"][0]
        r = c.get(f"/collections/households/items/{hh['id']}")
        patched = c.patch(
            f"/collections/households/items/{hh['id']}",
            json={"properties": {"members": 3}},
            headers={"If-Match": r.headers["ETag"]},
        )
        assert patched.status_code == 200, patched.text
    assert raw_sql(db, "SELECT members FROM households WHERE fid = ?", hh["id"]) == [(3,)]
    refused_by_database(db, "DELETE FROM gridmap_audit", "append-only")


@pytest.mark.postgis
def test_upgrade_a_postgis_store_of_the_first_release(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    import psycopg

    from gridmap.backup import pg_figures
    from gridmap.layers import LAYERS
    from tests.conftest import require_postgis

    require_postgis()
    url = request.getfixturevalue("pg_cluster").new_database("gm_first")
    subprocess.run(["pg_restore", "--no-owner", "--exit-on-error", f"--dbname={url}",
                    str(FIRST_RELEASE_PG)], check=True, capture_output=True)  # fmt: skip
    layers = {lay.id for lay in LAYERS}

    def features() -> dict[str, Any]:
        with psycopg.connect(url) as conn:
            return {t: v for t, v in pg_figures(conn).items() if t in layers}

    before = features()
    assert before["households"]["rows"] == 326
    check = subprocess.run([*GRIDMAP, "upgrade", "--check", "--database", url],
                           capture_output=True, text=True, check=False)  # fmt: skip
    assert check.returncode == 1
    saved = tmp_path / "before-upgrade.dump"
    done = subprocess.run([*GRIDMAP, "upgrade", "--database", url, "--backup-to", str(saved)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    said = " ".join(done.stdout.split())
    assert done.returncode == 0, said + done.stderr
    assert "schema upgraded first release" in said and "integrity checks passed" in said
    assert saved.exists() and verify(saved).tables["households"]["rows"] == 326
    assert features() == before  # no feature changed (digests by PostgreSQL)
    again = subprocess.run([*GRIDMAP, "upgrade", "--check", "--database", url],
                           capture_output=True, text=True, check=False)  # fmt: skip
    assert again.returncode == 0
    with TestClient(
        create_app(Settings(database=url)), headers=tokens_for(url)["subdistrict_admin"]
    ) as c:
        assert c.get("/ready").status_code == 200
        r = c.post(
            "/collections/toilets/items",
            json=toilet("升级后"),
            headers={"Idempotency-Key": "after-upgrade"},
        )
        assert r.status_code == 201, r.text
    assert named(url, "升级后") == 1
    raw_sql(url, "INSERT INTO gridmap_audit (at, action, result) VALUES ('now', 'x', 'ok')")
    refused_by_database(url, "UPDATE gridmap_audit SET result = 'changed'", "append-only")


# ---------------------------------------------------------------- a full disk


@contextlib.contextmanager
def small_disk(folder: Path, megabytes: int) -> Iterator[Path]:
    """A real file system of its own size (tmpfs; needs root, as CI runs)."""
    folder.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(folder)]
    done = subprocess.run(mount, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        folder.rmdir()
        missing(f"a small file system to fill (mount as root): {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.mark.gpkg_only
def test_a_full_disk_refuses_the_write_and_keeps_the_database(
    tmp_path: Path, sample_gpkg: Any
) -> None:
    with small_disk(tmp_path / "disk", 24) as disk:
        db = copy_database(sample_gpkg[0], disk / "full.gpkg")
        headers = tokens_for(db)["subdistrict_admin"]
        with TestClient(create_app(Settings(database=str(db))), headers=headers) as c:
            assert c.post("/collections/toilets/items", json=toilet("未满")).status_code == 201
            filler = disk / "filler"
            fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
            for block in (65536, 512, 1):  # the rest of the disk, to the last byte
                with contextlib.suppress(OSError):
                    while os.write(fd, b"\0" * block):
                        pass
            os.close(fd)
            answers = [
                c.post("/collections/toilets/items", json=toilet(f"满{i}")) for i in range(30)
            ]
            codes = {a.status_code for a in answers}
            assert codes <= {201, 507}, codes  # a page or two may still fit
            refused = [a for a in answers if a.status_code == 507]
            assert refused, "the disk never filled"
            assert "is full" in refused[0].json()["detail"]
            assert c.get("/collections/toilets/items", params={"limit": 1}).status_code == 200
            assert "free space" in c.get("/ready").json()["detail"]  # 503: not ready
            filler.unlink()
            assert c.get("/ready").status_code == 200
            assert (
                c.post("/collections/toilets/items", json=toilet("腾出空间后")).status_code == 201
            )
        kept = sum(named(db, f"满{i}") for i in range(30))
        assert kept == sum(a.status_code == 201 for a in answers)  # acknowledged = stored
        conn = sqlite3.connect(db)
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        conn.close()
