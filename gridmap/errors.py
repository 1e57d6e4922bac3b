"""Domain errors, free of HTTP: the API maps each class to a status code in one table."""

from __future__ import annotations


class GridmapError(Exception):
    """Base of every error gridmap raises on purpose; ``str(exc)`` is safe to show a user."""


class QueryError(GridmapError, ValueError):
    """A query (parameter, filter, window) is malformed or out of range; nothing was read."""


class UnknownLayerError(GridmapError, LookupError):
    """No layer (collection) with that id."""


class FeatureNotFoundError(GridmapError, LookupError):
    """No feature with that id in the layer, or not in the caller's scope."""


class OutOfScope:
    """Marks a refusal answered exactly like a missing resource (404) but audited as a
    refused attempt (``denied_scope``): the resource exists outside the caller's scope."""


class HiddenLayerError(UnknownLayerError, OutOfScope):
    """The layer exists but the caller's role may not see it."""


class OutOfScopeError(FeatureNotFoundError, OutOfScope):
    """The feature exists (or would) outside the grids the caller may see or edit."""


class InvalidFeatureError(GridmapError, ValueError):
    """A feature's geometry or properties fail validation; nothing was written."""


class InvalidGeometryError(InvalidFeatureError):
    """A geometry is malformed, invalid, of the wrong type or outside the service area."""


class VersionConflictError(GridmapError):
    """The feature changed since the version the caller based its edit on."""


class IntegrityError(GridmapError):
    """Data breaks a structural rule (grids inside communities, no overlaps, …)."""


class StoreError(GridmapError):
    """The store cannot be opened, is not a gridmap store, or cannot answer now."""


class StorageFullError(StoreError):
    """The disk holding the store is full: the change was not written (→ 507)."""


class PermissionDeniedError(GridmapError):
    """The caller may see the resource but not do this to it."""


class AuthenticationError(GridmapError):
    """No valid credentials, or the token is expired, tampered or not for this service."""


class RateLimitedError(GridmapError):
    """Too many requests of this kind; ``retry_after`` seconds until the next is allowed."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after
