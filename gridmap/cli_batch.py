"""City-wide batch commands on Dask: ``gridmap batch assign|stats|plans``.

Each runs on a new local cluster of ``--workers`` processes, or on a running Dask
scheduler (``--scheduler tcp://host:port``), with a progress bar of its tasks. A store,
scheduler, campaign or option that cannot be used ends the command with exit code 2.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.markup import escape
from rich.table import Table

from gridmap.cli import DbOption, _shown, app, console, err, progress_bar
from gridmap.settings import DEFAULT_DATABASE

if TYPE_CHECKING:
    import pandas as pd

batch_app = typer.Typer(help="City-wide batch jobs on Dask (分布式批处理).", no_args_is_help=True)
app.add_typer(batch_app, name="batch")

WorkersOption = Annotated[
    int | None,
    typer.Option(
        "--workers",
        "-w",
        min=1,
        max=256,
        help="Worker processes of the local cluster (default: one per core).",
    ),
]
SchedulerOption = Annotated[
    str | None,
    typer.Option(
        "--scheduler",
        envvar="GRIDMAP_DASK_SCHEDULER",
        help="A running Dask scheduler (tcp://host:port) instead of a local cluster.",
    ),
]
PerTaskOption = Annotated[
    int, typer.Option("--per-task", min=1, max=10_000, help="Communities (grids) per task.")
]
OUTPUTS = (".csv", ".json")
SHOWN_ROWS = 40


def _stop(message: str) -> NoReturn:
    """Say what is wrong and end with exit code 2."""
    err.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(code=2)


def _output(path: Path | None) -> Path | None:
    """``--output`` checked: a .csv or .json file in a folder that exists."""
    if path is None:
        return None
    if path.suffix.lower() not in OUTPUTS:
        _stop(f"--output must end in {' or '.join(OUTPUTS)}")
    if not path.resolve().parent.is_dir():
        _stop(f"no folder {path.resolve().parent} to write {path.name} into")
    if path.is_dir():
        _stop(f"{path} is a folder; name a file to write")
    return path


def _write(frame: pd.DataFrame, path: Path) -> None:
    """A table as CSV (UTF-8 with BOM, for spreadsheets) or as JSON records."""
    if path.suffix.lower() == ".csv":
        frame.to_csv(path, index=False, encoding="utf-8-sig")
    else:
        records = json.loads(frame.to_json(orient="records", force_ascii=False))
        path.write_text(json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")
    console.print(f"wrote {escape(str(path))} ({len(frame):,} rows)")


def _run(job: Any, label: str, **kwargs: Any) -> Any:
    """A batch job with a progress bar of its tasks (shown once they are submitted); its
    errors end the command (code 2)."""
    from gridmap.errors import GridmapError

    bar = progress_bar(14)
    task: list[Any] = []

    def step(done: int, total: int) -> None:
        if not task:
            bar.start()
            task.append(bar.add_task(label, total=total))
        bar.update(task[0], completed=done, total=total)

    try:
        return job(progress=step, **kwargs)
    except GridmapError as exc:
        bar.stop()
        _stop(str(exc))
    finally:
        bar.stop()


def _table(frame: pd.DataFrame, title: str) -> None:
    """The first rows of a table (all with --output)."""
    table = Table(title=title)
    for col in frame.columns:
        table.add_column(str(col), justify="left" if col in ("name", "note", "error") else "right")
    import pandas as pd

    for row in frame.head(SHOWN_ROWS).itertuples(index=False):
        table.add_row(*("" if pd.isna(v) else escape(str(v)) for v in row))
    console.print(table)
    if len(frame) > SHOWN_ROWS:
        console.print(f"… {len(frame) - SHOWN_ROWS:,} more rows (--output writes them all)")


@batch_app.command("assign")
def assign(
    database: DbOption = DEFAULT_DATABASE,
    workers: WorkersOption = None,
    scheduler: SchedulerOption = None,
    per_task: PerTaskOption = 1,
    write: Annotated[
        bool,
        typer.Option(
            "--write", help="Have the store derive again each mismatched household's grid."
        ),
    ] = False,
    output: Annotated[
        Path | None,
        typer.Option(help="Write the mismatched households (.csv or .json)."),
    ] = None,
) -> None:
    """Every household's grid from its location, compared with the grid stored for it."""
    from gridmap import batch

    output = _output(output)
    result = _run(
        batch.assign_households,
        "households",
        url=database,
        workers=workers,
        scheduler=scheduler,
        per_task=per_task,
    )
    n = len(result.ids)
    rate = n / result.seconds if result.seconds else 0.0
    console.print(
        f"{escape(_shown(database))}: {n:,} households in {result.tasks} tasks, "
        f"{result.seconds:.1f} s ({rate:,.0f}/s); {result.outside:,} in no grid, "
        f"{result.mismatches:,} stored in another grid than the one they lie in"
    )
    frame = result.to_frame()
    wrong = frame[frame["grid_id"] != frame["stored_grid_id"]].astype("Int64")
    wrong = wrong.mask(wrong == batch.NO_GRID)  # none: blank in the table, null in the file
    if len(wrong):
        _table(wrong, "households whose stored grid differs (住户网格不符)")
    if output is not None:
        _write(wrong, output)
    if write and len(wrong):
        _write_back(database, result)


def _write_back(database: str, result: Any) -> None:
    """Derive again the stored grid of the mismatched households, each write audited."""
    from gridmap import batch
    from gridmap.accounts import audit
    from gridmap.cli_field import _cli_principal
    from gridmap.errors import GridmapError
    from gridmap.store import open_store

    try:
        store = open_store(database)
    except GridmapError as exc:
        _stop(str(exc))
    who = _cli_principal()

    def audited(fid: int, old: Any, new: int) -> None:
        audit(
            store, who, "update", object=f"collections/households/items/{fid}",
            grid_id=new, source="cli", detail=f"batch assign: grid_id {old} → {new}",
        )  # fmt: skip

    try:
        fixed = batch.write_grids(store, result, audited)
    finally:
        store.close()
    console.print(f"[green]wrote[/] the grid of {len(fixed.written):,} households")
    for fid, why in fixed.refused[:SHOWN_ROWS]:
        console.print(f"[yellow]household {fid} not changed:[/] {escape(why)}")
    if len(fixed.refused) > SHOWN_ROWS:
        console.print(f"… and {len(fixed.refused) - SHOWN_ROWS:,} more not changed")


@batch_app.command("stats")
def stats(
    database: DbOption = DEFAULT_DATABASE,
    workers: WorkersOption = None,
    scheduler: SchedulerOption = None,
    per_task: PerTaskOption = 1,
    days: Annotated[int, typer.Option(min=1, max=3660, help="Visit window in days.")] = 30,
    today: Annotated[
        str | None, typer.Option(help="Count visits up to this day (YYYY-MM-DD; default today).")
    ] = None,
    output: Annotated[Path | None, typer.Option(help="Write every grid (.csv or .json).")] = None,
) -> None:
    """Households, population, recent visits and tags of every grid."""
    from gridmap import batch

    output = _output(output)
    ref = _day(today, "--today") if today else None
    frame = _run(
        batch.grid_statistics,
        "communities",
        url=database,
        today=ref,
        days=days,
        workers=workers,
        scheduler=scheduler,
        per_task=per_task,
    ).reset_index()
    if output is not None:
        _write(frame, output)
    else:
        _table(frame, "grid statistics 网格统计")
    console.print(
        f"{len(frame):,} grids, {int(frame['households'].sum()):,} households, "
        f"{int(frame['population'].sum()):,} people"
    )


def _day(text: str, option: str) -> dt.date:
    """A YYYY-MM-DD option's date (exit code 2 if it is none)."""
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        _stop(f"{option} must be YYYY-MM-DD, got {text!r}")


@batch_app.command("plans")
def plans_cmd(
    campaign: Annotated[int, typer.Option(help="Campaign id.")],
    day: Annotated[str, typer.Option(help="The day to plan (YYYY-MM-DD).")],
    database: DbOption = DEFAULT_DATABASE,
    workers: WorkersOption = None,
    scheduler: SchedulerOption = None,
    per_task: PerTaskOption = 1,
    grid: Annotated[
        list[int] | None, typer.Option(help="Only these grids (repeat); default every grid.")
    ] = None,
    walkers: Annotated[int, typer.Option(min=1, max=10, help="Grid workers per grid.")] = 1,
    time_limit: Annotated[
        float, typer.Option(min=0.1, max=60, help="Seconds of search per grid.")
    ] = 2.0,
    save: Annotated[bool, typer.Option("--save", help="Store the plans (one writer).")] = False,
    output: Annotated[Path | None, typer.Option(help="Write the summary (.csv or .json).")] = None,
) -> None:
    """The visit plans of every grid of a campaign for one day, in brief (stored with --save)."""
    import getpass

    from gridmap import batch

    output = _output(output)
    when = _day(day, "--day")
    try:
        who = f"cli:{getpass.getuser()}"[:60]
    except (KeyError, OSError):
        who = "cli:unknown"
    run = _run(
        batch.visit_plans,
        "grids",
        url=database,
        campaign_id=campaign,
        day=when,
        grid_ids=grid,
        walkers=walkers,
        time_limit_s=time_limit,
        save=save,
        by=who,
        workers=workers,
        scheduler=scheduler,
        per_task=per_task,
        on_saved=_audit_plan if save else None,
    )
    frame = run.summary.reset_index()
    if output is not None:
        _write(frame, output)
    else:
        _table(_brief(frame, saved=save), "visit plans 走访计划")
    failed = int(frame["error"].notna().sum()) if "error" in frame else 0
    stops, households = (int(frame[c].sum()) if c in frame else 0 for c in ("stops", "households"))
    console.print(
        f"{len(frame):,} grids planned in {run.seconds:.1f} s "
        f"({len(frame) / run.seconds:.2f} grids/s): {stops:,} stops, {households:,} households"
        + (f"; {len(run.saved):,} plans saved" if save else "")
        + (f"; [red]{failed} grids failed[/]" if failed else "")
    )


def _brief(frame: pd.DataFrame, *, saved: bool) -> pd.DataFrame:
    """The plans' summary as a narrow table: km and minutes, errors and ids only if any."""
    out = frame[[c for c in ("grid_id", "households_open", "stops", "households") if c in frame]]
    out = out.rename(columns={"households_open": "open", "households": "planned"})
    if "distance_m" in frame:
        out["km"] = (frame["distance_m"] / 1000).round(1)
        out["minutes"] = (frame["duration_s"] / 60).round(0)
        out["seconds"] = frame["seconds"]
    if "error" in frame and frame["error"].notna().any():
        out["error"] = frame["error"]
    if saved:
        out["plan"] = frame["plan_id"]
    return out


def _audit_plan(store: Any, grid_id: int, plan_id: int) -> None:
    """The audit entry of one plan saved, as ``gridmap plan`` writes, right after it."""
    from gridmap.accounts import audit
    from gridmap.cli_field import _cli_principal

    audit(
        store, _cli_principal(), "create", object=f"plans/{plan_id}", grid_id=grid_id, source="cli"
    )
