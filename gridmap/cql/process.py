"""cql2's parser in a child process: a filter that crashes it or parses too long is cut
off, never the service.

cql2 (Rust) recurses once per nesting level without a limit (a few thousand levels
overflow the stack and kill the process) and backtracks exponentially on nested
parentheses (about 30 characters take an hour, holding Python's global lock). gridmap
therefore limits nesting before parsing and runs every parse in one child process: if it
dies, or has not answered within ``timeout`` seconds, it is replaced and the filter is
refused (400). A parse takes well under a millisecond, so one child serves a process.
"""

from __future__ import annotations

import atexit
import multiprocessing as mp
import threading
from multiprocessing.connection import Connection
from typing import Any

TIMEOUT_S = 2.0
STARTUP_S = 60.0


def _serve(conn: Connection) -> None:  # pragma: no cover - runs in the child
    """The child: parse (lang, text) requests until the pipe closes."""
    import signal

    import cql2

    # Ctrl-C (or a notebook kernel's shutdown) interrupts the parent, which ends this
    # child by closing the pipe; the child itself would only print a traceback
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn.send(("ready", None))
    while True:
        try:
            lang, text = conn.recv()
        except EOFError:
            return
        try:
            expr = cql2.parse_text(text) if lang == "cql2-text" else cql2.parse_json(text)
            conn.send(("ok", expr.to_json()))
        except Exception as exc:  # cql2's ParseError / ValidationError and the like
            conn.send(("error", str(exc)[:1000]))


class ParserProcess:
    """One child process parsing CQL2, restarted when it fails; thread-safe."""

    def __init__(self, timeout: float = TIMEOUT_S) -> None:
        self.timeout = timeout
        self._lock = threading.Lock()
        self._proc: Any = None
        self._conn: Connection | None = None

    def _start(self) -> Connection:
        if self._conn is None or self._proc is None or not self._proc.is_alive():
            ctx = mp.get_context("spawn")  # never fork a threaded server
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(target=_serve, args=(theirs,), daemon=True, name="cql2-parser")
            proc.start()
            theirs.close()
            if not ours.poll(STARTUP_S) or ours.recv()[0] != "ready":
                proc.kill()
                msg = "the CQL2 parser process did not start"
                raise RuntimeError(msg)
            self._proc, self._conn = proc, ours
        return self._conn

    def _stop(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.join(5)
        if self._conn is not None:
            self._conn.close()
        self._proc = self._conn = None

    def parse(self, lang: str, text: str) -> tuple[str, Any]:
        """("ok", CQL2-JSON) or ("error", message); ("error", …) too when the parser died
        or ran out of time (it is replaced)."""
        with self._lock:
            conn = self._start()
            try:
                conn.send((lang, text))
                if conn.poll(self.timeout):
                    return conn.recv()  # type: ignore[no-any-return]
                self._stop()
                return ("error", f"the filter takes more than {self.timeout:g} s to parse")
            except (EOFError, OSError, BrokenPipeError):
                self._stop()
                return ("error", "the filter cannot be parsed (the parser gave up on it)")

    def close(self) -> None:
        """Stop the child (it also ends with this process)."""
        with self._lock:
            self._stop()


PARSER = ParserProcess()
"""The parser every filter of this process goes through."""
atexit.register(PARSER.close)
