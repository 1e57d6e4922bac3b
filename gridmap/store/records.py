"""Names every backend shares: the fields of the tables that hold no features (accounts,
audit log, documents), the batch size of bulk writes, and identifier quoting."""

from __future__ import annotations

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
