"""Run the API in a child process on a free loopback port (tests, benchmarks, scripts)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_up(url: str, *, timeout: float = 60.0) -> None:
    """Poll ``url`` until it answers below 500; RuntimeError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    msg = f"{url} did not come up within {timeout:.0f} s"
    raise RuntimeError(msg)


@contextmanager
def running(
    command: list[str], *, url: str, env: dict[str, str] | None = None, probe: str = "/"
) -> Iterator[str]:
    """Start ``command`` (a server listening at ``url``), yield ``url``, stop it afterwards."""
    proc = subprocess.Popen(command, env={**os.environ, **(env or {})})
    try:
        wait_until_up(url + probe)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


UVICORN_STACK = (
    "--loop", "uvloop", "--http", "httptools", "--no-proxy-headers", "--timeout-keep-alive", "75",
)  # fmt: skip
"""The server stack every benchmarked service runs on (uvicorn[standard]); X-Forwarded-For
is not believed (no proxy in front); an idle connection is kept 75 s, as ``gridmap serve``
and nginx keep it (uvicorn's own 5 s makes a browser that opens the map now and then
connect again each time)."""


@contextmanager
def gridmap_server(database: str | Path, **settings: str) -> Iterator[str]:
    """The gridmap API over ``database`` in a uvicorn child process; yields its base URL.

    Extra keyword arguments become ``GRIDMAP_<NAME>`` settings.
    """
    port = free_port()
    env = {"GRIDMAP_DATABASE": str(database)}
    env.update({f"GRIDMAP_{k.upper()}": v for k, v in settings.items()})
    command = [
        sys.executable, "-m", "uvicorn", "api.app:create_app", "--factory",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", *UVICORN_STACK,
    ]  # fmt: skip
    with running(command, url=f"http://127.0.0.1:{port}", env=env) as url:
        yield url
