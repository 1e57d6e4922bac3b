"""Operations commands: ``gridmap backup``, ``gridmap restore``, ``gridmap upgrade``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from gridmap.cli import DbOption, _fail, _shown, app, console, err, progress_bar
from gridmap.errors import GridmapError
from gridmap.settings import DEFAULT_DATABASE


def _stepper(bar):  # type: ignore[no-untyped-def]
    tasks: dict[str, int] = {}

    def step(what: str, done: int, total: int) -> None:
        if what not in tasks:
            tasks[what] = bar.add_task(what, total=max(total, 1))
        bar.update(tasks[what], completed=done, total=max(total, 1))

    return step


@app.command("backup")
def backup_cmd(
    destination: Annotated[Path, typer.Argument(help="The new backup file.")],
    database: DbOption = DEFAULT_DATABASE,
) -> None:
    """Back the store up while the service runs: a consistent copy (GeoPackage: VACUUM INTO;
    PostGIS: pg_dump of one snapshot) and a manifest of checksums beside it."""
    from gridmap.backup import backup

    start = time.perf_counter()
    with progress_bar() as bar:
        try:
            m = backup(database, destination, step=_stepper(bar))
        except GridmapError as exc:
            _fail(exc)
    rows = sum(int(t["rows"]) for t in m.tables.values())
    console.print(
        f"[green]backed up[/] {escape(_shown(database))} to {escape(str(destination))}: "
        f"{len(m.tables)} tables, {rows} rows, sha256 {m.sha256[:16]}…, "
        f"{time.perf_counter() - start:.2f} s"
    )


@app.command("restore")
def restore_cmd(
    backup_file: Annotated[Path, typer.Argument(help="A file made by `gridmap backup`.")],
    database: DbOption = DEFAULT_DATABASE,
    check_only: Annotated[
        bool, typer.Option("--check-only", help="Verify the backup; restore nothing.")
    ] = False,
) -> None:
    """Restore a backup: verified against its manifest first, checked again after. A
    GeoPackage is replaced (stop the service first; the old file is kept beside it); a
    PostgreSQL backup goes into an empty database."""
    from gridmap.backup import integrity_problems, restore, verify

    start = time.perf_counter()
    with progress_bar() as bar:
        try:
            if check_only:
                verify(backup_file, step=_stepper(bar))
            else:
                restore(backup_file, database, step=_stepper(bar))
        except GridmapError as exc:
            _fail(exc)
    took = time.perf_counter() - start
    if check_only:
        console.print(f"[green]✓[/] {escape(str(backup_file))} matches its manifest")
        return
    problems = integrity_problems(database)
    console.print(
        f"[green]restored[/] {escape(str(backup_file))} into {escape(_shown(database))} "
        f"in {took:.2f} s; every table matches the backup's checksums"
    )
    _report_problems(problems)


@app.command("upgrade")
def upgrade_cmd(
    database: DbOption = DEFAULT_DATABASE,
    backup_to: Annotated[
        Path | None,
        typer.Option(help="Where the backup taken first goes (GeoPackage default: beside it)."),
    ] = None,
    check: Annotated[
        bool,
        typer.Option(
            "--check", help="Only say whether an upgrade is due: exit 1 if so, 2 on an error."
        ),
    ] = False,
    no_backup: Annotated[
        bool,
        typer.Option("--no-backup", help="A server database: upgrade without a backup first."),
    ] = False,
) -> None:
    """Bring a store written by an earlier release to this release's schema, in place,
    after a backup; then run the integrity check."""
    from gridmap.upgrade import current_digest, recorded_digest, upgrade

    try:
        before, after = recorded_digest(database), current_digest(database)
    except GridmapError as exc:
        if check:  # 1 says "an upgrade is due": an error is another answer
            err.print(f"[bold red]error:[/] {escape(str(exc))}")
            raise typer.Exit(code=2) from None
        _fail(exc)
    if check:
        if before == after:
            console.print(f"{escape(_shown(database))} is current (schema {after})")
            return
        console.print(f"{escape(_shown(database))} needs `gridmap upgrade` ({before} → {after})")
        raise typer.Exit(code=1)
    with progress_bar() as bar:
        try:
            report = upgrade(database, backup_to=backup_to, step=_stepper(bar), backed_up=no_backup)
        except GridmapError as exc:
            _fail(exc)
    if report.backup:
        console.print(f"backed up first to {escape(str(report.backup))}")
    if report.before == report.after:
        console.print(f"the schema was current already ({report.after})")
    else:
        was = report.before or "first release"
        console.print(f"[green]schema upgraded[/] {was} → {report.after}")
    for s in report.steps:
        console.print(f"[green]✓[/] {escape(s)}")
    _report_problems(report.problems)


def _report_problems(problems: list[str]) -> None:
    if problems:
        for p in problems[:30]:
            err.print(f"[red]✗[/] {escape(p)}")
        err.print(f"{len(problems)} integrity problem(s); see `gridmap check`")
        raise typer.Exit(code=1)
    console.print("[green]✓[/] integrity checks passed")
