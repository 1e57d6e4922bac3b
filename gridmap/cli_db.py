"""Database administration commands: ``gridmap grant-service``, ``gridmap city``."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import typer
from rich.markup import escape

from gridmap.cli import DbOption, _fail, _holds_store, _shown, app, console, progress_bar
from gridmap.errors import GridmapError
from gridmap.settings import DEFAULT_DATABASE


@app.command("grant-service")
def grant_service(
    role: Annotated[str, typer.Argument(help="The login role the API connects as.")],
    database: DbOption = DEFAULT_DATABASE,
) -> None:
    """Let a PostgreSQL role serve a PostGIS store with least rights (run as the owner).

    The role reads and writes features, accounts and documents, and only reads and
    appends to the audit log; owning no table, it cannot disable the log's triggers. A
    role that could reach further (a superuser, CREATEROLE, a member of the owner's role,
    an owner of the database, schema or a table) or cannot log in is refused."""
    from gridmap.store import is_server_url
    from gridmap.store.postgis import grant_service as grant

    if not is_server_url(database):
        _fail(GridmapError("grant-service is for a postgresql:// store; a GeoPackage has no roles"))
    try:
        done = grant(database, role)
    except GridmapError as exc:
        _fail(exc)
    for statement in done:
        console.print(escape(statement))
    console.print(
        f"[green]{escape(role)} may now serve this store[/green]: "
        f"GRIDMAP_DATABASE=postgresql://{escape(role)}@…"
    )


@app.command("city")
def city(
    database: Annotated[
        str,
        typer.Option(
            "--database",
            envvar="GRIDMAP_DATABASE",
            help="An empty postgresql:// database (or a new GeoPackage path) to fill.",
        ),
    ],
    subdistricts: Annotated[
        int, typer.Option(min=1, max=999, help="How many (≈15,000 households each).")
    ] = 67,
    seed: Annotated[int, typer.Option(help="Random seed of the first subdistrict.")] = 20261124,
    today: Annotated[
        str | None, typer.Option(help="Reference date for visits (YYYY-MM-DD; default today).")
    ] = None,
) -> None:
    """Build city-scale synthetic data: SUBDISTRICTS invented subdistricts side by side
    (67: about a million households, 2,680 grids), every feature through the store's
    rules. For scale tests and benchmarks; no accounts are made."""
    from gridmap.city import build_city

    if _holds_store(database):
        _fail(GridmapError(f"{_shown(database)} {_occupied(database)}"))
    try:
        ref = dt.date.fromisoformat(today) if today else None
    except ValueError:
        _fail(GridmapError(f"--today must be YYYY-MM-DD, got {today!r}"))
    with progress_bar(14) as bar:
        task = bar.add_task("subdistricts", total=subdistricts)
        try:
            store = build_city(
                database,
                subdistricts,
                seed=seed,
                today=ref,
                step=lambda _s, done, _n: bar.update(task, completed=done),
            )
        except GridmapError as exc:
            _fail(exc)
    counts = {layer.id: store.count(layer.id) for layer in store.layers()}
    store.close()
    console.print(
        f"[green]built[/] {escape(_shown(database))}: "
        + ", ".join(f"{k} {v:,}" for k, v in counts.items())
    )


def _occupied(database: str) -> str:
    """Why a database cannot take a new city: an unfinished build, a store, another file."""
    from gridmap.store import UNFINISHED, is_server_url, open_store

    try:
        store = open_store(database)
    except GridmapError:
        if is_server_url(database):
            return "already holds a gridmap store; give an empty database"
        return "already exists and is no gridmap store; give a new file name"
    try:
        note = store.meta(UNFINISHED)
    finally:
        store.close()
    if note:
        return f"holds an interrupted build ({note}): delete it (dropdb, or the file) and run again"
    return "already holds a gridmap store; give an empty database or a new file name"
