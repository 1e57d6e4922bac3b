"""``gridmap upgrade``: bring a store written by an earlier release to this one, in place,
after a backup: the schema (tables, triggers, indexes a later release added), then the data
steps below, then the integrity check."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gridmap.backup import BackupError, Step, _noop, backup, read_only_uri, said_plainly
from gridmap.identifiers import _SYNTHETIC_LANDLINE, _SYNTHETIC_MOBILE, id_check_digit
from gridmap.store import SYNTHETIC, Store, is_server_url, open_store


@dataclass
class UpgradeReport:
    """What an upgrade did."""

    before: str | None  # the schema digest the store recorded (None: the first release's)
    after: str
    backup: Path | None
    steps: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """True if the schema was brought forward or a data step ran."""
        return self.before != self.after or bool(self.steps)


@said_plainly
def recorded_digest(database: str) -> str | None:
    """The schema digest a store records, read without changing anything (None: none
    recorded, as in a store of the first release); BackupError if it holds no store."""
    if is_server_url(database):
        import psycopg

        with psycopg.connect(database, autocommit=True) as conn:
            if conn.execute("SELECT to_regclass('gridmap_meta')").fetchone()[0] is None:  # type: ignore[index]
                raise BackupError("that database holds no gridmap store")
            row = conn.execute(
                "SELECT value FROM gridmap_meta WHERE key = 'schema_digest'"
            ).fetchone()
        return str(row[0]) if row else None
    path = Path(database)
    if not path.is_file():
        raise BackupError(f"no GeoPackage at {path}")
    conn = sqlite3.connect(read_only_uri(path), uri=True)
    try:
        try:
            held = conn.execute("SELECT name FROM sqlite_master WHERE name = 'gridmap_meta'")
            if held.fetchone() is None:
                raise BackupError(f"{path} holds no gridmap store")
        except sqlite3.DatabaseError:
            raise BackupError(f"{path} is no GeoPackage (not an SQLite database)") from None
        row = conn.execute("SELECT value FROM gridmap_meta WHERE key = 'schema_digest'").fetchone()
    finally:
        conn.close()
    return str(row[0]) if row else None


def current_digest(database: str) -> str:
    """The schema digest of this release for the store's kind."""
    if is_server_url(database):
        from gridmap.store.postgis import schema_digest as pg_digest

        return pg_digest()
    from gridmap.store.geopackage import schema_digest as gpkg_digest

    return gpkg_digest()


@said_plainly
def upgrade(
    database: str, *, backup_to: Path | None = None, step: Step = _noop, backed_up: bool = False
) -> UpgradeReport:
    """Upgrade ``database`` in place. A GeoPackage is backed up first (to ``backup_to``, by
    default ``<name>.pre-upgrade-<time>.gpkg`` beside it); a server database needs
    ``backup_to`` (``pg_dump``), or ``backed_up`` when its owner has a backup of their own."""
    before = recorded_digest(database)
    after = current_digest(database)
    saved = None
    needs = before != after
    if needs and is_server_url(database) and backup_to is None and not backed_up:
        msg = (
            "an upgrade of a server database needs a backup first: give --backup-to FILE "
            "(pg_dump), or --no-backup if you have one"
        )
        raise BackupError(msg)
    if needs and backup_to is None and not is_server_url(database):
        stamp = dt.datetime.now().strftime("%Y%m%dT%H%M%S")
        p = Path(database)
        backup_to = p.with_name(f"{p.stem}.pre-upgrade-{stamp}{p.suffix}")
    if needs and backup_to is not None:
        backup(database, backup_to, step=step)
        saved = backup_to
    report = UpgradeReport(before, after, saved)
    store = open_store(database)  # brings the schema forward (idempotent)
    try:
        for name, data_step in DATA_STEPS:
            if data_step(store):
                report.steps.append(name)
        from gridmap.integrity import check_store

        report.problems = check_store(store)
    finally:
        store.close()
    return report


def _mark_sample_synthetic(store: Store) -> bool:
    """The first releases did not mark their sample as invented. A store built by ``gridmap
    demo`` (it records ``built_at``) whose every phone number has the sample's impossible
    form (100…) and every ID number a wrong check character can hold no real person: mark
    it, so that its identifiers are checked as the sample's again."""
    if store.meta(SYNTHETIC) is not None or store.meta("built_at") is None:
        return False
    phones = [v for v in store.values("households", "phone").values() if v]
    ids = [v for v in store.values("households", "id_number").values() if v]
    if not phones or not ids:
        return False
    invented_phone = all(
        _SYNTHETIC_MOBILE.fullmatch(p) or _SYNTHETIC_LANDLINE.fullmatch(p) for p in phones
    )
    wrong_check = all(len(i) == 18 and i[17].upper() != id_check_digit(i[:17].upper()) for i in ids)
    if not (invented_phone and wrong_check):
        return False
    store.set_meta(SYNTHETIC, "true")
    return True


DATA_STEPS: list[tuple[str, Callable[[Store], bool]]] = [
    ("marked the sample's invented identifiers as synthetic", _mark_sample_synthetic),
]
"""Data steps, in release order; each is idempotent and says whether it changed anything."""
