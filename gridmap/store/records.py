"""What every backend shares: the tables that hold no features (accounts, audit log,
documents, settings, shared rate limits) with their SQL, the batch size of bulk writes,
identifier quoting."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from gridmap.errors import FeatureNotFoundError, InvalidFeatureError

_EPSILON_S = 1e-6
"""Rounding room when comparing times (60 s / 9 events must allow 9, not 8)."""
CHUNK = 2_000
"""Rows per batch of a bulk write."""

USER_FIELDS = (
    "username", "password_hash", "role", "grid_ids", "community_id", "disabled",
    "failed_logins", "locked_until", "created_at", "password_changed_at",
)  # fmt: skip
DOCUMENT_FIELDS = ("id", "kind", "parent", "grid_id", "created_at", "created_by", "body")
AUDIT_FIELDS = (
    "id", "at", "username", "role", "action", "object", "grid_id", "result", "source",
    "request_id", "detail",
)  # fmt: skip


def _q(name: str) -> str:
    """Quote an identifier (all come from the layer registry, never from requests)."""
    return '"' + name.replace('"', '""') + '"'


def user_record(row: Sequence[Any]) -> dict[str, Any]:
    """A user row as a record: ``grid_ids`` a list of ints, ``disabled`` a bool."""
    rec = dict(zip(USER_FIELDS, row, strict=True))
    ids = rec["grid_ids"]
    rec["grid_ids"] = [int(g) for g in (orjson.loads(ids) if isinstance(ids, str) else ids or [])]
    rec["disabled"] = bool(rec["disabled"])
    return rec


def document_record(row: Sequence[Any]) -> dict[str, Any]:
    """A document row as a record, ``body`` decoded (a dict; {} if it holds anything else)."""
    rec = dict(zip(DOCUMENT_FIELDS, row, strict=True))
    body = rec["body"]
    if isinstance(body, str | bytes):
        try:
            body = orjson.loads(body)
        except orjson.JSONDecodeError:
            body = {}
    rec["body"] = body if isinstance(body, dict) else {}
    return rec


class RecordTables:
    """Accounts, the audit log, documents and settings: the same SQL on every backend
    (``?`` marks a parameter; a backend's :meth:`_run` executes it in its dialect)."""

    def _run(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Execute one statement (inside the thread's transaction, if any); its rows."""
        raise NotImplementedError

    def user(self, username: str) -> dict[str, Any] | None:
        """A user record (``grid_ids`` as a list), or None."""
        if "\x00" in username:  # no user has one (and PostgreSQL text cannot hold it)
            return None
        rows = self._run(f"SELECT {_USER_COLS} FROM gridmap_users WHERE username = ?", (username,))
        return user_record(rows[0]) if rows else None

    def users(self) -> list[dict[str, Any]]:
        """Every user record, without password hashes, by username."""
        out = [user_record(r) for r in self._run(f"SELECT {_USER_COLS} FROM gridmap_users")]
        for rec in out:
            rec.pop("password_hash")
        return sorted(out, key=lambda r: str(r["username"]))

    def save_user(self, record: Mapping[str, Any]) -> None:
        """Insert or replace a user record (all of ``USER_FIELDS``)."""
        rec = dict(record)
        rec["grid_ids"] = orjson.dumps(sorted(int(g) for g in rec.get("grid_ids") or [])).decode()
        rec["disabled"] = bool(rec.get("disabled"))
        rec["failed_logins"] = int(rec.get("failed_logins") or 0)
        updates = ", ".join(f"{f} = excluded.{f}" for f in USER_FIELDS[1:])
        self._run(
            f"INSERT INTO gridmap_users ({_USER_COLS}) VALUES ({_marks(USER_FIELDS)}) "
            f"ON CONFLICT (username) DO UPDATE SET {updates}",
            [rec.get(f) for f in USER_FIELDS],
        )

    def audit_append(self, entry: Mapping[str, Any]) -> None:
        """Append one entry to the audit log (the database refuses updates and deletes)."""
        fields = [f for f in AUDIT_FIELDS if f != "id"]
        self._run(
            f"INSERT INTO gridmap_audit ({', '.join(fields)}) VALUES ({_marks(fields)})",
            [entry.get(f) for f in fields],
        )

    def audit_entries(
        self, *, limit: int = 100, offset: int = 0, equals: Mapping[str, Any] | None = None
    ) -> tuple[list[dict[str, Any]], int]:
        """Audit entries, newest first, with the number matched."""
        clauses = []
        params: list[Any] = []
        for k, v in (equals or {}).items():
            if k not in AUDIT_FIELDS:
                msg = f"audit entries have no field {k[:40]!r}"
                raise InvalidFeatureError(msg)
            if isinstance(v, str) and "\x00" in v:  # no entry holds one (nor can PostgreSQL)
                return [], 0
            clauses.append(f"{_q(k)} = ?")
            params.append(v)
        where = " WHERE " + " AND ".join(clauses) if clauses else ""
        total = self._run("SELECT count(*) FROM gridmap_audit" + where, params)[0][0]
        rows = self._run(
            f"SELECT {', '.join(AUDIT_FIELDS)} FROM gridmap_audit{where} "
            "ORDER BY id DESC LIMIT ? OFFSET ?",
            [*params, int(limit), int(offset)],
        )
        return [dict(zip(AUDIT_FIELDS, r, strict=True)) for r in rows], int(total)

    def audit_after(self, after_id: int, limit: int) -> list[dict[str, Any]]:
        """Audit entries with ids above ``after_id``, oldest first (keyset paging: a log
        that grows meanwhile neither repeats nor skips an entry)."""
        rows = self._run(
            f"SELECT {', '.join(AUDIT_FIELDS)} FROM gridmap_audit WHERE id > ? ORDER BY id LIMIT ?",
            (int(after_id), int(limit)),
        )
        return [dict(zip(AUDIT_FIELDS, r, strict=True)) for r in rows]

    def add_document(
        self,
        kind: str,
        body: Mapping[str, Any],
        *,
        parent: int | None = None,
        grid_id: int | None = None,
        created_by: str | None = None,
    ) -> int:
        """Store a record that is no feature (a campaign, a plan); return its id."""
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        rows = self._run(
            "INSERT INTO gridmap_documents (kind, parent, grid_id, created_at, created_by, body)"
            " VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
            (kind, parent, grid_id, now, created_by, orjson.dumps(body).decode()),
        )
        return int(rows[0][0])

    def replace_document(self, kind: str, doc_id: int, body: Mapping[str, Any]) -> None:
        """Replace a document's body (FeatureNotFoundError if there is none)."""
        rows = self._run(
            "UPDATE gridmap_documents SET body = ? WHERE kind = ? AND id = ? RETURNING id",
            (orjson.dumps(body).decode(), kind, int(doc_id)),
        )
        if not rows:
            msg = f"no {kind} {doc_id}"
            raise FeatureNotFoundError(msg)

    def document(self, kind: str, doc_id: int) -> dict[str, Any] | None:
        """One document (its fields, ``body`` decoded), or None."""
        rows = self._run(
            f"SELECT {_DOC_COLS} FROM gridmap_documents WHERE kind = ? AND id = ?",
            (kind, int(doc_id)),
        )
        return document_record(rows[0]) if rows else None

    def documents(self, kind: str, *, parent: int | None = None) -> list[dict[str, Any]]:
        """The documents of a kind (of one parent), oldest first."""
        sql = f"SELECT {_DOC_COLS} FROM gridmap_documents WHERE kind = ?"
        params: list[Any] = [kind]
        if parent is not None:
            sql += " AND parent = ?"
            params.append(int(parent))
        return [document_record(r) for r in self._run(sql + " ORDER BY id", params)]

    def all_documents(self) -> list[dict[str, Any]]:
        """Every document of every kind, by id."""
        rows = self._run(f"SELECT {_DOC_COLS} FROM gridmap_documents ORDER BY id")
        return [document_record(r) for r in rows]

    def take_turn(self, key: str, now: float, interval: float, burst: float) -> float | None:
        """One event for ``key`` at ``now`` (seconds since the epoch) under a limit shared
        by every process: None if allowed, else the seconds to wait.

        The generic cell rate algorithm: each key has a time its next turn is ``due``; an
        event moves it ``interval`` on, and is refused while ``due`` lies more than
        ``burst`` ahead of now (``limit`` events per ``window``: ``interval = window /
        limit``, ``burst = window - interval``). One upsert decides under the row's lock,
        so concurrent processes never both take the last turn, and a request whose ``now``
        is a little older than another's only finds less room. A ``due`` further ahead
        than one window (a clock that went back) is brought back to one window ahead, so
        the key waits at most a window, never starts afresh.
        """
        window = interval + burst
        rows = self._run(
            "INSERT INTO gridmap_limits (key, due) VALUES (?, ?) ON CONFLICT (key) DO UPDATE "
            "SET due = CASE WHEN gridmap_limits.due > ? THEN gridmap_limits.due ELSE ? END + ? "
            "WHERE gridmap_limits.due - ? <= ? RETURNING due",
            (key, now + interval, now, now, interval, now, burst + _EPSILON_S),
        )
        if rows:
            return None
        self._run(  # a clock that went back: one window ahead at most
            "UPDATE gridmap_limits SET due = ? WHERE key = ? AND due > ?",
            (now + window, key, now + window),
        )
        due = self._run("SELECT due FROM gridmap_limits WHERE key = ?", (key,))
        return max(0.0, float(due[0][0]) - now - burst) if due else 0.0

    def forget_turns(self, before: float) -> None:
        """Drop the limit rows whose turn was due before ``before`` (they limit nothing)."""
        self._run("DELETE FROM gridmap_limits WHERE due < ?", (before,))

    def idempotent_find(self, username: str, key: str) -> tuple[str, str, int, float] | None:
        """The (fingerprint, layer, feature id, time kept) of a user's idempotency key."""
        rows = self._run(
            "SELECT fingerprint, layer, fid, at FROM gridmap_idempotency "
            "WHERE username = ? AND key = ?",
            (username, key),
        )
        if not rows:
            return None
        fp, layer, fid, at = rows[0]
        return str(fp), str(layer), int(fid), float(at)

    def idempotent_drop(self, username: str, key: str) -> None:
        """Forget one key (it outlived its time)."""
        self._run("DELETE FROM gridmap_idempotency WHERE username = ? AND key = ?", (username, key))

    def idempotent_keep(
        self, username: str, key: str, fingerprint: str, layer: str, fid: int, now: float
    ) -> None:
        """Remember what a key created (in the caller's transaction, with the creation)."""
        self._run(
            "INSERT INTO gridmap_idempotency (username, key, fingerprint, layer, fid, at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (username, key, fingerprint, layer, int(fid), now),
        )

    def idempotent_forget(self, before: float) -> None:
        """Drop keys kept since before ``before`` (a retry comes within hours, not days)."""
        self._run("DELETE FROM gridmap_idempotency WHERE at < ?", (before,))

    def meta(self, key: str) -> str | None:
        """A stored setting."""
        rows = self._run("SELECT value FROM gridmap_meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    def set_meta(self, key: str, value: str) -> None:
        """Store a setting."""
        self._run(
            "INSERT INTO gridmap_meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def all_meta(self) -> dict[str, str]:
        """Every stored setting."""
        return {str(k): str(v) for k, v in self._run("SELECT key, value FROM gridmap_meta")}


_USER_COLS = ", ".join(USER_FIELDS)
_DOC_COLS = ", ".join(DOCUMENT_FIELDS)


def _marks(fields: Sequence[str]) -> str:
    return ", ".join("?" * len(fields))
