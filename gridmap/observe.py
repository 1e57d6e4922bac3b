"""What a running service tells its operators: JSON log lines that carry the request id,
and the database time each request spent (counted by :func:`timed_backend`)."""

from __future__ import annotations

import datetime as dt
import functools
import inspect
import logging
import sys
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson


@dataclass
class Tally:
    """One request's id and the seconds its store calls took (shared with its threads)."""

    request_id: str
    db_seconds: float = 0.0
    db_calls: int = 0


CURRENT: ContextVar[Tally | None] = ContextVar("gridmap_request", default=None)
"""The request being served (worker threads see it: anyio copies the context)."""
_depth = threading.local()


def current_request_id() -> str | None:
    """The id of the request this code serves, if any."""
    t = CURRENT.get()
    return t.request_id if t else None


T = TypeVar("T", bound=type)


def timed_backend(cls: T) -> T:
    """Class decorator: every public method of a backend adds its wall time to the current
    request's :class:`Tally` (the outermost call only: a method calling another counts once)."""
    for name in dir(cls):
        fn = inspect.getattr_static(cls, name)
        if name.startswith("_") or not inspect.isfunction(fn):
            continue  # properties, class and static methods are no database calls
        setattr(cls, name, _timed(fn))
    return cls


def _timed(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        tally = CURRENT.get()
        if tally is None or getattr(_depth, "n", 0):
            return fn(*args, **kwargs)
        _depth.n = 1
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _depth.n = 0
            tally.db_seconds += time.perf_counter() - start
            tally.db_calls += 1

    return wrapper


_RESERVED = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the request id, any
    ``extra`` fields, and the traceback of an exception."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None) or current_request_id()
        if rid:
            out["request_id"] = rid
        for k, v in vars(record).items():
            if k not in _RESERVED and k not in out:
                out[k] = v
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


_CONTROL = {c: f"\\x{c:02x}" for c in [*range(32), 127]} | {0x2028: "\\u2028", 0x2029: "\\u2029"}


def plain(text: str) -> str:
    """``text`` on one line: control characters (a newline in a requested path) written
    as escapes, so no one can forge a log line of their own."""
    return text.translate(_CONTROL)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = self.formatTime(record)
        line = f"{stamp} {record.levelname} {record.name}: {plain(record.getMessage())}"
        rid = getattr(record, "request_id", None) or current_request_id()
        if rid:
            line += f" [{plain(str(rid))}]"
        if record.exc_info:  # our own traceback: its lines stay lines
            line += "\n" + self.formatException(record.exc_info)
        return line


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time (a test may have swapped it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


_OURS = "_gridmap_handler"
LOGGERS = ("gridmap", "api", "uvicorn.error")


def configure_logging(fmt: str = "json", level: str = "INFO") -> None:
    """Send gridmap's (and uvicorn's error) log to stderr as JSON lines or text; idempotent
    (a second call replaces the handler the first installed)."""
    handler = _Stderr()
    handler.set_name(_OURS)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(_TextFormatter())
    for name in LOGGERS:
        logger = logging.getLogger(name)
        for h in [h for h in logger.handlers if h.get_name() == _OURS]:
            logger.removeHandler(h)
        logger.addHandler(handler)
        logger.setLevel(level.upper())
        # uvicorn's own handler sits on "uvicorn": its errors would be written twice
        logger.propagate = not name.startswith("uvicorn")
