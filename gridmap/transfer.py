"""Copying a whole store between backends (GeoPackage ⇄ PostGIS): streamed, atomic per
layer, resumable.

Layers go in the order their references need (a layer after those it names), each in
one transaction of the destination together with a mark that it is done; a copy that
stops part way is run again and goes on after the last finished layer. Ids and versions
are kept (references, ETags and campaign ids stay valid), and every feature is checked
by the core as it is written.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gridmap.errors import InvalidFeatureError, StoreError
from gridmap.layers import LAYERS, Layer
from gridmap.store import FeatureStore, create_store, is_server_url, open_store
from gridmap.store.backend import Selection

BATCH = 2_000
DONE = "copied:"
"""Meta key prefix in the destination: ``copied:<part>`` is set once a part is copied."""
Progress = Callable[[str, int, int], None]
"""Called with (part, rows done, rows in all)."""
Step = Callable[[int, int], None]
Part = Callable[[FeatureStore, FeatureStore, Step, int], int]


@dataclass
class CopyReport:
    """What a copy did: rows per part, and the parts an earlier run had already copied."""

    rows: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


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


def _exists(url: str | os.PathLike[str]) -> bool:
    if is_server_url(url):
        try:
            open_store(url).close()
        except StoreError as exc:
            if "holds no gridmap store" in str(exc):
                return False
            raise
        return True
    return os.path.exists(url)


def copy_store(
    src_url: str | os.PathLike[str],
    dst_url: str | os.PathLike[str],
    *,
    batch: int = BATCH,
    progress: Progress | None = None,
) -> CopyReport:
    """Copy every layer, document, account, audit entry and setting of one store into
    another (created if missing, else resumed). A part the destination already holds
    without having copied it refuses the copy: it never mixes two stores."""
    if str(src_url) == str(dst_url):
        msg = "source and destination are the same store"
        raise StoreError(msg)
    src = open_store(src_url)
    try:
        dst = (
            open_store(dst_url)
            if _exists(dst_url)
            else create_store(dst_url, service_area=src.service_area)
        )
    except BaseException:
        src.close()
        raise
    report = CopyReport()
    try:
        before = _fingerprint(src)
        origin = f"{_origin(src_url)} @{before}"
        _refuse_foreign(dst, origin)
        _copy_settings(src, dst)
        parts: list[tuple[str, Part]] = [(lay.id, _layer_copier(lay)) for lay in layer_order()]
        parts += [
            ("gridmap_documents", _documents),
            ("gridmap_users", _users),
            ("gridmap_audit", _audit),
        ]
        for name, fn in parts:
            _copy_part(origin, src, dst, name, report, fn, batch, progress)
        if _fingerprint(src) != before:
            msg = (
                "the source changed while it was copied (someone edited it); the copy may "
                "mix old and new rows: copy again into a new store, at a quiet time"
            )
            raise StoreError(msg)
    finally:
        src.close()
        dst.close()
    return report


def _fingerprint(src: FeatureStore) -> str:
    """A short digest of the source's change stamps: it moves with any edit of a layer, a
    campaign or an account (the audit log only grows, and is copied up to an id)."""
    tables = [*(lay.id for lay in LAYERS), "gridmap_documents", "gridmap_users"]
    text = ",".join(str(v) for v in src.stamps(tables))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _origin(url: str | os.PathLike[str]) -> str:
    """The source as the destination's marks name it (a URL without its password)."""
    if is_server_url(url):
        from gridmap.store.postgis import redact

        return redact(str(url))
    return str(Path(url).resolve())


def _refuse_foreign(dst: FeatureStore, origin: str) -> None:
    """StoreError if the destination holds anything this copy did not write (before any
    write: a copy never mixes two stores)."""
    for key, value in dst.backend.all_meta().items():
        if key.startswith(DONE) and not value.endswith(f" from {origin}"):
            msg = (
                f"the destination holds a copy of another store, or of this one before it "
                f"changed ({value.split(' from ', 1)[-1]}); copy into a new store"
            )
            raise StoreError(msg)
    for layer in LAYERS:
        if dst.meta(DONE + layer.id) is None:
            held = dst.count(layer.id)
            if held:
                msg = (
                    f"the destination already holds {held} {layer.id} it did not copy; "
                    "copy into a new store (or one an earlier copy began)"
                )
                raise StoreError(msg)
    if dst.meta(DONE + "gridmap_documents") is None and dst.backend.all_documents():
        msg = "the destination already holds campaigns or plans it did not copy"
        raise StoreError(msg)


def _copy_settings(src: FeatureStore, dst: FeatureStore) -> None:
    """Every setting, the disclosure key included (made first if the source has none yet):
    a store and its copy must withhold the same small counts, or comparing their
    statistics would give withheld counts away."""
    from gridmap.queries import disclosure_key

    disclosure_key(src)
    for key, value in src.backend.all_meta().items():
        if not key.startswith(DONE) and key != "schema_version":
            dst.set_meta(key, value)


def _copy_part(
    origin: str,
    src: FeatureStore,
    dst: FeatureStore,
    part: str,
    report: CopyReport,
    fn: Part,
    batch: int,
    progress: Progress | None,
) -> None:
    if dst.meta(DONE + part) is not None:
        report.skipped.append(part)
        return

    def step(done: int, total: int) -> None:
        if progress is not None:
            progress(part, done, total)

    with dst.transaction():
        n = fn(src, dst, step, batch)
        dst.set_meta(DONE + part, f"{n} from {origin}")
    report.rows[part] = n


def _layer_copier(layer: Layer) -> Part:
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
    records = src.backend.all_documents()
    dst.backend.load_documents(records)
    step(len(records), len(records))
    return len(records)


def _users(src: FeatureStore, dst: FeatureStore, step: Step, batch: int) -> int:
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
