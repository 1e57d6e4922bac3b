"""Database administration commands: ``gridmap grant-service``."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from gridmap.cli import DbOption, _fail, app, console
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
