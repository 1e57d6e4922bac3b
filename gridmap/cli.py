"""The ``gridmap`` command: serve, demo, info, check."""

from __future__ import annotations

import datetime as dt
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from gridmap.errors import GridmapError
from gridmap.layers import LAYERS
from gridmap.settings import DEFAULT_DATABASE

if TYPE_CHECKING:
    from gridmap.store import FeatureStore

# A refused connection is said once, by the command (the pool's retries would repeat it).
logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)

app = typer.Typer(
    help="gridmap — grid management (网格化管理) for a subdistrict: data, API and maps.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
err = Console(stderr=True)

DbOption = Annotated[
    str,
    typer.Option(
        "--database",
        "-d",
        envvar="GRIDMAP_DATABASE",
        help="GeoPackage file or postgresql:// URL (env GRIDMAP_DATABASE).",
    ),
]


def progress_bar(width: int = 16) -> Progress:
    """A progress bar: what is being done, the bar, done of total, time so far."""
    return Progress(
        TextColumn(f"{{task.description:<{width}}}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def _fail(exc: Exception) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(str(exc))}")
    raise typer.Exit(code=1)


def _open(database: str) -> FeatureStore:
    from gridmap.store import open_store

    try:
        return open_store(database)
    except GridmapError as exc:
        _fail(exc)


@app.command()
def demo(
    database: DbOption = DEFAULT_DATABASE,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file.")] = False,
    if_missing: Annotated[
        bool, typer.Option("--if-missing", help="Do nothing if the file already exists.")
    ] = False,
    seed: Annotated[int, typer.Option(help="Random seed of the invented layout.")] = 20261124,
    today: Annotated[
        str | None, typer.Option(help="Reference date for visits (YYYY-MM-DD; default today).")
    ] = None,
) -> None:
    """Build the sample subdistrict 中心路街道 (synthetic households) into a GeoPackage, or
    into an empty PostgreSQL + PostGIS database (``--database postgresql://…``)."""
    from gridmap.security import ROLE_ZH
    from gridmap.store import is_server_url

    if _holds_store(database):
        server = is_server_url(database)
        if if_missing:
            console.print(f"{escape(_shown(database))} exists; keeping it ({_rebuild(server)})")
            return
        if server:
            _fail(
                GridmapError(f"{_shown(database)} already holds a gridmap store; {_rebuild(True)}")
            )
        if not force:
            _fail(GridmapError(f"{database} exists; {_rebuild(False)}"))
        for suffix in ("", "-wal", "-shm"):
            Path(str(database) + suffix).unlink(missing_ok=True)
    ref = None
    if today:
        try:
            ref = dt.date.fromisoformat(today)
        except ValueError:
            _fail(GridmapError(f"--today must be YYYY-MM-DD, got {today!r}"))
    with progress_bar(20) as bar:
        tasks: dict[str, int] = {}

        def step(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=max(total, 1))
            bar.update(tasks[stage], completed=done, total=max(total, 1))

        try:
            counts, creds = _build_demo(database, seed, ref, step)
        except GridmapError as exc:
            _fail(exc)
    console.print(
        f"[green]built[/] {_shown(database)}: " + ", ".join(f"{k} {v}" for k, v in counts.items())
    )
    console.print(
        "All names, phone numbers and ID numbers are synthetic (phones start 100, "
        "ID check digits are wrong)."
    )
    table = Table(title="sample users — passwords are shown once (`gridmap users reset NAME`)")
    for col in ("username", "role", "password"):
        table.add_column(col)
    for username, (role, password) in creds.items():
        table.add_row(username, f"{role.value} {ROLE_ZH[role]}", password)
    console.print(table)


def _rebuild(server: bool) -> str:
    """How to build the sample again where a store already is (``--force`` replaces a file
    only: gridmap never drops a database's tables)."""
    if server:
        return "to rebuild it, drop and create the database again (dropdb, createdb)"
    return "pass --force to rebuild it"


def _build_demo(database: str, seed: int, ref: dt.date | None, step):  # type: ignore[no-untyped-def]
    """Build the sample (through a GeoPackage, then copied, for a server); counts, users."""
    import tempfile

    from gridmap.accounts import seed_sample_users
    from gridmap.sample import build_demo
    from gridmap.store import is_server_url
    from gridmap.transfer import copy_store

    if not is_server_url(database):
        store = build_demo(database, seed=seed, today=ref, step=step)
        creds = seed_sample_users(store)
    else:
        with tempfile.TemporaryDirectory(prefix="gridmap-demo-") as tmp:
            local = Path(tmp) / "sample.gpkg"
            built = build_demo(local, seed=seed, today=ref, step=step)
            creds = seed_sample_users(built)
            built.close()
            copy_store(local, database, progress=lambda part, done, total: step(part, done, total))
        store = _open(database)
    counts = {layer.id: store.count(layer.id) for layer in LAYERS}
    store.close()
    return counts, creds


def _holds_store(database: str) -> bool:
    """True if a store already lives at ``database`` (a file, or gridmap's tables)."""
    from gridmap.errors import StoreError
    from gridmap.store import is_server_url, open_store

    if not is_server_url(database):
        return Path(database).exists()
    try:
        open_store(database).close()
    except StoreError as exc:
        if "holds no gridmap store" in str(exc):
            return False
        _fail(exc)
    return True


def _shown(database: str) -> str:
    """A database setting fit to print (a URL without its password)."""
    from gridmap.store import is_server_url

    if is_server_url(database):
        from gridmap.store.postgis import redact

        return redact(database)
    return database


@app.command()
def copy(
    source: Annotated[str, typer.Argument(help="GeoPackage file or postgresql:// URL.")],
    destination: Annotated[
        str, typer.Argument(help="New GeoPackage file, or an empty (or half-copied) database.")
    ],
    batch: Annotated[int, typer.Option(min=1, max=100_000, help="Rows per batch.")] = 2_000,
) -> None:
    """Copy a whole store between GeoPackage and PostGIS, either way: every layer (ids and
    versions kept), campaigns and plans, accounts, the audit log and settings. Each part is
    copied in one transaction; run the same command again to resume an interrupted copy (or
    one stopped because the source changed meanwhile)."""
    from gridmap.transfer import copy_store

    with progress_bar(20) as bar:
        tasks: dict[str, int] = {}

        def step(part: str, done: int, total: int) -> None:
            if part not in tasks:
                tasks[part] = bar.add_task(part, total=max(total, 1))
            bar.update(tasks[part], completed=done, total=max(total, 1))

        try:
            report = copy_store(source, destination, batch=batch, progress=step)
        except GridmapError as exc:
            _fail(exc)
    rows = sum(report.rows.values())
    console.print(
        f"[green]copied[/] {rows} rows into {escape(_shown(destination))}"
        + (f" (already there: {', '.join(report.skipped)})" if report.skipped else "")
    )


@app.command()
def info(database: DbOption = DEFAULT_DATABASE) -> None:
    """List the layers with their feature counts, geometry types and extent."""
    store = _open(database)
    table = Table(title=escape(_shown(database)))
    for col in ("collection", "图层", "geometry", "features", "extent (WGS84)"):
        table.add_column(col)
    for layer in LAYERS:
        ext = store.extent(layer.id)
        table.add_row(
            layer.id,
            layer.zh,
            layer.geometry_type,
            str(store.count(layer.id)),
            "" if ext is None else ", ".join(f"{v:.5f}" for v in ext),
        )
    console.print(table)
    store.close()


@app.command()
def check(database: DbOption = DEFAULT_DATABASE) -> None:
    """Check integrity: grids in communities, no overlaps, households in exactly one grid."""
    from gridmap.integrity import check_store

    store = _open(database)
    problems = check_store(store)
    store.close()
    if problems:
        for p in problems:
            err.print(f"[red]✗[/] {p}")
        err.print(f"{len(problems)} problem(s)")
        raise typer.Exit(code=1)
    console.print("[green]✓[/] integrity checks passed")


@app.command()
def serve(
    database: DbOption = DEFAULT_DATABASE,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
) -> None:
    """Serve the OGC API and the maps (http://127.0.0.1:8000 by default)."""
    import uvicorn

    if not _holds_store(database):
        _fail(GridmapError(f"no store at {_shown(database)}; build the sample with `gridmap demo`"))
    os.environ["GRIDMAP_DATABASE"] = str(database)
    from gridmap.settings import Settings

    proxies = Settings().forwarded_allow_ips
    console.print(
        f"serving {_shown(database)} on http://{host}:{port}/  (map: http://{host}:{port}/map)"
    )
    # X-Forwarded-For names the client only behind a proxy we were told of: otherwise
    # anyone could pick the address the log-in throttle and the audit log see
    uvicorn.run(
        "api.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        proxy_headers=bool(proxies),
        forwarded_allow_ips=proxies or None,
        timeout_keep_alive=75,  # as nginx: a browser's idle connections are not reopened
        access_log=False,  # the app logs each request itself: JSON, with its id and timings
        log_config=None,  # the app's handler (GRIDMAP_LOG_FORMAT) writes uvicorn's errors too
    )


users_app = typer.Typer(help="Manage user accounts.", no_args_is_help=True)
app.add_typer(users_app, name="users")


def _accounts(database: str):  # type: ignore[no-untyped-def]
    from gridmap.accounts import Accounts, token_secret

    store = _open(database)
    return store, Accounts(store, secret=token_secret(store))


@users_app.command("add")
def users_add(
    username: Annotated[str, typer.Argument(help="Login name (letters, digits, _).")],
    role: Annotated[
        str,
        typer.Option(help="subdistrict_admin, community_admin, grid_worker, planner or auditor."),
    ],
    grid: Annotated[
        list[int] | None, typer.Option(help="Grid id (grid workers; repeat for several).")
    ] = None,
    community: Annotated[int | None, typer.Option(help="Community id (community admins).")] = None,
    password: Annotated[
        str | None,
        typer.Option(help="Password (prompted when omitted; --generate for a random one)."),
    ] = None,
    generate: Annotated[bool, typer.Option(help="Generate a random password.")] = False,
    database: DbOption = DEFAULT_DATABASE,
) -> None:
    """Add a user (the password must pass the policy)."""
    from gridmap.accounts import generate_password

    store, accounts = _accounts(database)
    if generate:
        password = generate_password()
    elif password is None:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    try:
        accounts.add_user(username, password, role, grid_ids=grid, community_id=community)
        _account_audit(store, "account_add", username, f"role={role}")
    except (GridmapError, ValueError) as exc:
        store.close()
        _fail(exc)
    store.close()
    console.print(f"[green]added[/] {username} ({role})")
    if generate:
        console.print(f"password: {password}")


@users_app.command("assign")
def users_assign(
    username: str,
    grid: Annotated[
        list[int] | None, typer.Option(help="New grid id(s) of a grid worker (repeat).")
    ] = None,
    community: Annotated[int | None, typer.Option(help="New community of an admin.")] = None,
    database: DbOption = DEFAULT_DATABASE,
) -> None:
    """Give a grid worker other grids or a community admin another community (at once)."""
    store, accounts = _accounts(database)
    try:
        accounts.reassign(username, grid_ids=grid, community_id=community)
        _account_audit(store, "account_assign", username, f"grids={grid} community={community}")
    except GridmapError as exc:
        store.close()
        _fail(exc)
    store.close()
    console.print(f"{username} reassigned")


@users_app.command("disable")
def users_disable(
    username: str,
    enable: Annotated[bool, typer.Option(help="Enable instead.")] = False,
    database: DbOption = DEFAULT_DATABASE,
) -> None:
    """Disable a user (their tokens stop working at once), or enable again."""
    store, accounts = _accounts(database)
    try:
        accounts.set_disabled(username, not enable)
        _account_audit(store, "account_enable" if enable else "account_disable", username)
    except GridmapError as exc:
        store.close()
        _fail(exc)
    store.close()
    console.print(f"{username} {'enabled' if enable else 'disabled'}")


@users_app.command("reset")
def users_reset(
    username: str,
    password: Annotated[str | None, typer.Option(help="New password (default: generated).")] = None,
    database: DbOption = DEFAULT_DATABASE,
) -> None:
    """Set a new password; prints a generated one."""
    store, accounts = _accounts(database)
    try:
        new = accounts.reset_password(username, password)
        _account_audit(store, "account_reset", username)
    except GridmapError as exc:
        store.close()
        _fail(exc)
    store.close()
    console.print(f"{username}: password reset" + ("" if password else f" to {new}"))


def _account_audit(store: FeatureStore, action: str, username: str, detail: str = "") -> None:
    """An account change made in the shell, in the audit log as ``cli:<login name>``."""
    from gridmap.accounts import audit
    from gridmap.cli_field import _cli_principal

    audit(store, _cli_principal(), action, object=f"users/{username}", source="cli",
          detail=detail or None)  # fmt: skip


@users_app.command("list")
def users_list(database: DbOption = DEFAULT_DATABASE) -> None:
    """List users, their roles, grids and state."""
    store = _open(database)
    table = Table()
    for col in ("username", "role", "grids", "community", "disabled"):
        table.add_column(col)
    for u in store.users():
        table.add_row(
            u["username"],
            u["role"],
            ",".join(map(str, u["grid_ids"])),
            str(u["community_id"] or ""),
            "yes" if u["disabled"] else "",
        )
    store.close()
    console.print(table)


if __name__ == "__main__":  # pragma: no cover
    app()


from gridmap import cli_batch, cli_db, cli_field, cli_io, cli_ops  # noqa: E402, F401  (`campaign`, `import`…)
