"""Copying a whole store between backends (GeoPackage ⇄ PostGIS): streamed, atomic per
part, resumable, and never mixing two stores.

The parts go in this order: the settings (the service area and the kind of identifiers
decide what the layers may hold), the layers in the order their references need,
campaigns and plans, accounts, the audit log. Each part is copied in one transaction of
the destination together with a mark, ``copied:<part>`` = ``"<rows> from <source>
@<version>"``; a copy that stops part way is run again and goes on after the last
finished part. Ids and versions are kept (references, ETags and campaign ids stay valid),
and every feature is checked by the core as it is written.

A destination must be new: a file that does not exist yet, an empty database, or a store
that holds nothing but what creating it wrote (see :data:`REPLACEABLE`) — or one that this
copy began. Anything else there (features, campaigns, accounts, audit entries, settings)
refuses the copy before it writes.

**A source in use.** A server may be editing the source while it is copied. Each part
has a version in the source: a layer's, the campaigns' and the accounts' change stamps
(moved by every write, by any client) and a digest of the settings. The audit log has
none: it only grows, and is copied up to its newest entry when its part begins. Before a
part commits, the versions of that part and of every part already copied are read again
from the database, and:

* if only the part being copied changed, its transaction is rolled back and the copy
  stops. The parts already copied still match the source, so running the same command
  again copies the rest, that part as it is now;
* if a part already copied changed, the destination holds rows the source no longer has,
  and a copy never deletes what it wrote (campaigns and the audit log cannot be deleted at
  all): the copy stops and says to copy into a fresh destination. A later run into the same
  destination finds the changed part by its mark and refuses the same way.

So the last mark is written only if at that moment every part copied matched the source:
a finished copy is the source as it was then, never a mix of two moments.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from gridmap.errors import InvalidFeatureError, StoreError
from gridmap.layers import LAYERS, Layer
from gridmap.store import FeatureStore, create_store, is_server_url, open_store
from gridmap.store.backend import Selection

BATCH = 2_000
DONE = "copied:"
"""Meta key prefix in the destination: ``copied:<part>`` is set once a part is copied."""
SETTINGS, DOCUMENTS, USERS, AUDIT = (
    "gridmap_meta",
    "gridmap_documents",
    "gridmap_users",
    "gridmap_audit",
)
OWN = frozenset({"schema_version", "schema_digest"})
"""Settings a backend keeps about its own schema: never copied, never compared."""
REPLACEABLE = frozenset({"service_area", "token_secret", "disclosure_key"})
"""Settings a store holds that no one put there as content: the service area written when
it was created, and the keys made on first use (a server started over it signs tokens, a
statistics read orders suppression). A destination may hold them; the copy brings the
source's, which it must (the same small counts withheld)."""
STOP = "copy into a new store (a new file, or an empty database)"
FRESH = "copy into a fresh destination (a new file, or an empty database)"
ELSEWHERE = "choose a writable place (a folder of yours), or ask for write access there"
_LABELS = {SETTINGS: "settings", DOCUMENTS: "campaigns and plans", USERS: "accounts",
           AUDIT: "audit log"}  # fmt: skip
Progress = Callable[[str, int, int], None]
"""Called with (part, rows done, rows in all)."""
Step = Callable[[int, int], None]
Part = Callable[[FeatureStore, FeatureStore, Step, int], int]


@dataclass
class CopyReport:
    """What a copy did: rows per part, and the parts an earlier run had already copied."""

    rows: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


@dataclass
class _Run:
    """One run of a copy: both stores, the source's name in the marks, and the version of
    every part copied so far (by this run or an earlier one)."""

    src: FeatureStore
    dst: FeatureStore
    origin: str
    copied: dict[str, str]
    batch: int
    progress: Progress | None
    report: CopyReport = field(default_factory=CopyReport)


def layer_order() -> list[Layer]:
    """The registry's layers, each after the layers its references name."""
    done: list[Layer] = []
    left = list(LAYERS)
    while left:
        ready = [
            lay
            for lay in left
            if all(p.ref in {d.id for d in done} or p.ref == lay.id for p in lay.references)
        ]
        if not ready:
            msg = f"the layer registry's references form a cycle among {[x.id for x in left]}"
            raise StoreError(msg)
        done.extend(ready)
        left = [lay for lay in left if lay not in ready]
    return done


def copy_store(
    src_url: str | os.PathLike[str],
    dst_url: str | os.PathLike[str],
    *,
    batch: int = BATCH,
    progress: Progress | None = None,
) -> CopyReport:
    """Copy every setting, layer, document, account and audit entry of one store into
    another (created if missing, else resumed). A destination holding anything this copy
    did not write refuses it before any write, and a source that changes while it is
    copied stops it (see the module's docstring)."""
    if _origin(src_url) == _origin(dst_url):
        msg = "source and destination are the same store"
        raise StoreError(msg)
    src = open_store(src_url)
    try:
        dst = _destination(dst_url, src)
    except BaseException:
        src.close()
        raise
    try:
        return _copy(src, dst, _origin(src_url), batch, progress)
    finally:
        src.close()
        dst.close()


def _copy(
    src: FeatureStore, dst: FeatureStore, origin: str, batch: int, progress: Progress | None
) -> CopyReport:
    """Check the destination, then copy the parts it lacks."""
    from gridmap.queries import disclosure_key

    if not getattr(src.backend, "read_only", False):
        # made now if missing: the copy must withhold the same counts. A source that may
        # not be written cannot have published statistics without one: the copy makes its own.
        disclosure_key(src)
    copied = _copied(dst, origin)
    _refuse_stale(_versions(src), copied)
    _refuse_foreign(dst, _settings(src), copied)
    run = _Run(src, dst, origin, copied, batch, progress)
    parts: list[tuple[str, Part]] = [(SETTINGS, _copy_settings)]
    parts += [(lay.id, _layer_copier(lay)) for lay in layer_order()]
    parts += [(DOCUMENTS, _documents), (USERS, _users), (AUDIT, _audit)]
    for name, fn in parts:
        _copy_part(run, name, fn)
    return run.report


# ---------------------------------------------------------------- the destination


def _exists(url: str | os.PathLike[str]) -> bool:
    """True if a store lives at a server URL (a database without gridmap's tables: False)."""
    try:
        open_store(url).close()
    except StoreError as exc:
        if "holds no gridmap store" in str(exc):
            return False
        raise
    return True


def _destination(url: str | os.PathLike[str], src: FeatureStore) -> FeatureStore:
    """The destination, opened if it exists, else created with the source's service area."""
    if is_server_url(url):
        return open_store(url) if _exists(url) else create_store(url, service_area=src.service_area)
    path = Path(url)
    if path.exists() and not _holds_nothing(path):
        dst = open_store(path)
        if getattr(dst.backend, "read_only", False):
            dst.close()
            msg = f"cannot write {path}: this user may not change it or its folder; {ELSEWHERE}"
            raise StoreError(msg)
        return dst
    _refuse_unwritable(path)
    try:
        return _create_file(path, src)
    except (OSError, sqlite3.Error) as exc:  # a full disk, a medium made read-only meanwhile
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        msg = f"cannot write {path}: {reason}; {ELSEWHERE}"
        raise StoreError(msg) from None


def _refuse_unwritable(path: Path) -> None:
    """StoreError, before anything is written, if a new file cannot be made at ``path``:
    its folder (or the nearest one that exists, where the missing ones would be made) is
    read-only for this user, or is no folder."""
    folder = path.absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        msg = f"cannot write {path}: {folder} is a file, not a folder; {ELSEWHERE}"
        raise StoreError(msg)
    if not os.access(folder, os.W_OK | os.X_OK):
        msg = f"cannot write {path}: the folder {folder} is read-only for this user; {ELSEWHERE}"
        raise StoreError(msg)


def _create_file(path: Path, src: FeatureStore) -> FeatureStore:
    """A new GeoPackage at ``path``, built in a folder beside it and moved into place once
    whole: a copy stopped meanwhile (even killed) leaves no half-made file at ``path``, and
    the next run removes what a dead run left beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep(path)
    work = _work_dir(path, os.getpid())
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        built = work / path.name
        create_store(built, service_area=src.service_area).close()
        _place(built, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return open_store(path)


def _work_dir(path: Path, pid: int) -> Path:
    """Where a run (by process id) builds a new file before it moves it to ``path``."""
    return path.with_name(f".{path.name}.{pid}.creating")


def _sweep(path: Path) -> None:
    """Remove the folders that runs no longer alive left while building ``path``."""
    if os.name != "posix":  # only there does signal 0 merely ask whether a process lives
        return
    prefix, suffix = f".{path.name}.", ".creating"
    for work in path.parent.iterdir():
        pid = work.name.removeprefix(prefix).removesuffix(suffix)
        if work.name == f"{prefix}{pid}{suffix}" and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(work, ignore_errors=True)


def _alive(pid: int) -> bool:
    """True if a process with this id runs (POSIX)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it runs, as another user
        pass
    return True


def _place(built: Path, path: Path) -> None:
    """Move a closed, whole GeoPackage to ``path``: over a file that holds nothing, or
    where no file is (never over one that appeared meanwhile)."""
    if Path(f"{built}-wal").exists():  # its last changes would be left behind
        msg = f"the new GeoPackage for {path} was not closed cleanly; run the copy again"
        raise StoreError(msg)
    if path.exists():
        for suffix in ("-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        os.replace(built, path)
        return
    try:
        os.link(built, path)  # fails if a file appeared there meanwhile
    except FileExistsError:
        msg = f"{path} appeared while the copy created it; run the copy again"
        raise StoreError(msg) from None
    except OSError:  # a file system without hard links
        os.replace(built, path)


def _holds_nothing(path: Path) -> bool:
    """True for a file that holds no data: empty, or an SQLite database without a single
    table (what an older release left when a copy was stopped while it created the file)."""
    wal = Path(f"{path}-wal")
    if path.stat().st_size == 0 and not (wal.exists() and wal.stat().st_size):
        return True
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            (tables,) = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return False
    return int(tables) == 0


# ---------------------------------------------------------------- marks, versions, refusals


def _origin(url: str | os.PathLike[str]) -> str:
    """The source as the destination's marks name it (a URL without its password)."""
    if is_server_url(url):
        from gridmap.store.postgis import redact

        return redact(str(url))
    return str(Path(url).resolve())


def _mark(rows: int, origin: str, version: str) -> str:
    """The value of a part's mark."""
    return f"{rows} from {origin} @{version}"


def _parse(mark: str) -> tuple[str, str]:
    """(source, version) of a mark's value."""
    source = mark.partition(" from ")[2]
    origin, _, version = source.rpartition(" @")
    return (origin, version) if origin else (source, "")


def _label(part: str) -> str:
    """A part as messages name it."""
    return _LABELS.get(part, part)


def _settings(store: FeatureStore) -> dict[str, str]:
    """The settings a copy takes: all but its marks and the backend's own."""
    return {
        k: v for k, v in store.backend.all_meta().items() if not k.startswith(DONE) and k not in OWN
    }


def _fresh(src: FeatureStore) -> contextlib.AbstractContextManager[None]:
    """Reads as the database holds them now. A PostGIS store otherwise answers stamps from
    memory, which lags another client's commit by the time its notice takes; inside a
    transaction it asks the database (which waits for gridmap's writers to finish)."""
    return src.transaction() if src.remote else contextlib.nullcontext()


def _versions(src: FeatureStore) -> dict[str, str]:
    """Every part's version in the source now (none for the audit log, which only grows)."""
    tables = [*(lay.id for lay in LAYERS), DOCUMENTS, USERS]
    with _fresh(src):
        stamps = src.stamps(tables)
        settings = _settings(src)
    versions = {t: str(s) for t, s in zip(tables, stamps, strict=True)}
    text = orjson.dumps(settings, option=orjson.OPT_SORT_KEYS)
    versions[SETTINGS] = hashlib.sha256(text).hexdigest()[:12]
    return versions


def _stale(now: Mapping[str, str], copied: Mapping[str, str]) -> list[str]:
    """The parts whose version in the source is no longer the one they were copied at."""
    return [part for part, version in copied.items() if part in now and now[part] != version]


def _copied(dst: FeatureStore, origin: str) -> dict[str, str]:
    """The parts the destination holds marks for, with their versions; StoreError if a
    mark names another source."""
    copied: dict[str, str] = {}
    for key, value in dst.backend.all_meta().items():
        if not key.startswith(DONE):
            continue
        source, version = _parse(value)
        if source != origin:
            msg = f"the destination holds a copy of another store ({source}); {STOP}"
            raise StoreError(msg)
        copied[key.removeprefix(DONE)] = version
    return copied


def _refuse_stale(now: Mapping[str, str], copied: Mapping[str, str]) -> None:
    """StoreError if a part an earlier run copied has changed in the source since."""
    stale = _stale(now, copied)
    if stale:
        msg = (
            f"the destination holds {', '.join(map(_label, stale))} copied from this source "
            f"before it changed; this copy cannot be finished: {FRESH}"
        )
        raise StoreError(msg)


def _refuse_foreign(
    dst: FeatureStore, settings: Mapping[str, str], copied: Mapping[str, str]
) -> None:
    """StoreError if the destination holds anything this copy did not write (checked
    before any write: a copy never mixes two stores)."""
    for layer in LAYERS:
        held = 0 if layer.id in copied else dst.count(layer.id)
        if held:
            msg = f"the destination already holds {held} {layer.id} it did not copy; {STOP}"
            raise StoreError(msg)
    if DOCUMENTS not in copied and dst.backend.all_documents():
        msg = f"the destination already holds campaigns or plans it did not copy; {STOP}"
        raise StoreError(msg)
    if USERS not in copied:
        _refuse_foreign_users(dst)
    if AUDIT not in copied:
        _refuse_foreign_audit(dst)
    if SETTINGS not in copied:
        _refuse_foreign_settings(dst, settings)


def _refuse_foreign_users(dst: FeatureStore) -> None:
    """StoreError if the destination has accounts (before the accounts are copied)."""
    names = [str(u["username"]) for u in dst.users()]
    if names:
        shown = ", ".join(names[:5]) + (", …" if len(names) > 5 else "")
        msg = (
            f"the destination already holds {len(names)} user account"
            f"{'s' if len(names) != 1 else ''} ({shown}) it did not copy; {STOP}"
        )
        raise StoreError(msg)


def _refuse_foreign_audit(dst: FeatureStore) -> None:
    """StoreError if the destination's audit log has entries (before it is copied)."""
    _, held = dst.audit_entries(limit=1)
    if held:
        msg = (
            f"the destination's audit log already holds {held} "
            f"entr{'ies' if held != 1 else 'y'} it did not copy (an audit log is append-only: "
            f"the source's cannot be added to it); {STOP}"
        )
        raise StoreError(msg)


def _refuse_foreign_settings(dst: FeatureStore, settings: Mapping[str, str]) -> None:
    """StoreError if the destination has settings (before they are copied) other than
    its own, the replaceable ones and the source's very values."""
    foreign = sorted(
        k for k, v in _settings(dst).items() if k not in REPLACEABLE and settings.get(k) != v
    )
    if foreign:
        msg = f"the destination holds settings it did not copy ({', '.join(foreign)}); {STOP}"
        raise StoreError(msg)


# ---------------------------------------------------------------- copying a part


def _copy_part(run: _Run, part: str, fn: Part) -> None:
    """Copy one part in one transaction with its mark, unless an earlier run did; the
    source's versions are checked again before it commits (see the module's docstring)."""
    if part in run.copied:
        run.report.skipped.append(part)
        return

    def step(done: int, total: int) -> None:
        if run.progress is not None:
            run.progress(part, done, total)

    version = _versions(run.src).get(part, "")
    with run.dst.transaction():
        rows = fn(run.src, run.dst, step, run.batch)
        stale = _stale(_versions(run.src), {**run.copied, part: version})
        if stale:
            raise _changed(stale, part)
        run.dst.set_meta(DONE + part, _mark(rows, run.origin, version))
    run.copied[part] = version
    run.report.rows[part] = rows


def _changed(stale: list[str], part: str) -> StoreError:
    """What to do when the source changed while ``part`` was copied."""
    if stale == [part]:
        msg = (
            f"the source changed while copying ({_label(part)}); nothing of it was kept: run "
            "the same command again to copy the rest (at a quieter time if it keeps changing)"
        )
    else:
        earlier = ", ".join(_label(p) for p in stale if p != part)
        msg = (
            f"the source changed while copying ({earlier}, already copied): the copy no "
            f"longer matches it and cannot be finished; {FRESH}, at a quieter time"
        )
    return StoreError(msg)


def _copy_settings(src: FeatureStore, dst: FeatureStore, step: Step, batch: int) -> int:
    """Every setting, the keys made on first use included: a store and its copy must
    withhold the same small counts, or comparing their statistics would give withheld
    counts away."""
    settings = _settings(src)
    for key, value in settings.items():
        dst.set_meta(key, value)
    step(len(settings), len(settings))
    return len(settings)


def _layer_copier(layer: Layer) -> Part:
    """The part that copies ``layer``."""
    return lambda src, dst, step, batch: _layer(src, dst, layer, step, batch)


def _layer(src: FeatureStore, dst: FeatureStore, layer: Layer, step: Step, batch: int) -> int:
    """Stream one layer in id order (keyset pages), each page checked and loaded."""
    total = src.count(layer.id)
    step(0, total)
    done, after = 0, 0
    while True:
        fs = src.backend.select(
            layer, Selection(after=after), order=[("id", False)], limit=batch, count=False
        )
        if not len(fs):
            break
        try:
            dst.load(layer.id, fs.ids.tolist(), fs.geometries, fs.properties, fs.versions.tolist())
        except InvalidFeatureError as exc:
            msg = (
                f"{layer.id} {int(fs.ids[0])}–{int(fs.ids[-1])} cannot be copied: {exc}; fix "
                "them in the source (`gridmap check` lists such problems), then run the copy again"
            )
            raise InvalidFeatureError(msg) from None
        done += len(fs)
        after = int(fs.ids[-1])
        step(done, total)
    return done


def _documents(src: FeatureStore, dst: FeatureStore, step: Step, batch: int) -> int:
    """Every campaign and plan, with its id."""
    records = src.backend.all_documents()
    dst.backend.load_documents(records)
    step(len(records), len(records))
    return len(records)


def _users(src: FeatureStore, dst: FeatureStore, step: Step, batch: int) -> int:
    """Every account, its password hash included."""
    names = [u["username"] for u in src.users()]
    for i, name in enumerate(names, start=1):
        rec = src.user(name)
        if rec is not None:
            dst.save_user(rec)
        step(i, len(names))
    return len(names)


def _audit(src: FeatureStore, dst: FeatureStore, step: Step, batch: int) -> int:
    """The audit log up to its newest entry when the part began, by id (it may grow while
    a live server is copied; later entries belong to the source only)."""
    newest, total = src.audit_entries(limit=1)
    last = int(newest[0]["id"]) if newest else 0
    done, after = 0, 0
    while after < last:
        page = [e for e in src.backend.audit_after(after, batch) if int(e["id"]) <= last]
        if not page:
            break
        dst.backend.load_audit(page)
        done += len(page)
        after = int(page[-1]["id"])
        step(done, total)
    return done
