"""The field-work commands: ``gridmap campaign``, ``gridmap plan`` and ``gridmap import-osm``.

The shell user holds the database file, so acts as the subdistrict admin; what they do
is written to the audit log as ``cli:<login name>``.
"""

from __future__ import annotations

import datetime as dt
import getpass
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.markup import escape
from rich.table import Table

from gridmap.cli import DbOption, _fail, _open, app, console, progress_bar
from gridmap.errors import GridmapError
from gridmap.settings import DEFAULT_DATABASE

campaign_app = typer.Typer(help="Visit campaigns (走访活动).", no_args_is_help=True)
app.add_typer(campaign_app, name="campaign")

OUT_FORMATS = (".gpx", ".csv", ".geojson", ".json")


def _cli_principal() -> Any:
    from gridmap.security import Principal, Role

    try:
        who = getpass.getuser()
    except (KeyError, OSError):
        who = "unknown"
    return Principal(f"cli:{who}"[:60], Role.SUBDISTRICT_ADMIN)


def _date(text: str, option: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        _fail(GridmapError(f"{option} must be YYYY-MM-DD, got {text!r}"))


@campaign_app.command("create")
def campaign_create(
    name: Annotated[str, typer.Argument(help="The campaign's name, e.g. 2026年冬季走访.")],
    starts: Annotated[str, typer.Option(help="First day (YYYY-MM-DD).")],
    ends: Annotated[str, typer.Option(help="Last day (YYYY-MM-DD).")],
    target: Annotated[
        str | None,
        typer.Option(
            help="Which households, as CQL2 text (default: all), "
            "e.g. \"A_CONTAINS(tags, ('hardship'))\"."
        ),
    ] = None,
    grid: Annotated[list[int] | None, typer.Option(help="Limit to these grids (repeat).")] = None,
    service_min: Annotated[float, typer.Option(help="Minutes with each household.")] = 10.0,
    setup_min: Annotated[float, typer.Option(help="Minutes to enter a stairwell.")] = 3.0,
    database: DbOption = DEFAULT_DATABASE,
) -> None:
    """Start a visit campaign over some or all households."""
    from gridmap import campaigns as camp
    from gridmap.accounts import audit

    first, last = _date(starts, "--starts"), _date(ends, "--ends")
    store = _open(database)
    try:
        rules = camp.Rules(service_min=service_min, setup_min=setup_min)
        who = _cli_principal()
        c = camp.create(
            store,
            name=name,
            starts=first,
            ends=last,
            target=target,
            grid_ids=grid,
            rules=rules,
            by=who.username,
        )
        audit(store, who, "create", object=f"campaigns/{c.id}", source="cli")
        n = len(camp.targets(store, c, scope=_all()))
    except GridmapError as exc:
        _fail(exc)
    finally:
        store.close()
    console.print(
        f"[green]created[/] campaign {c.id} 「{escape(c.name)}」: {n} households, {first}–{last}"
    )
    console.print(f"next: gridmap plan --campaign {c.id} --grid 1 --date {first} --out plan.gpx")


def _all() -> Any:
    from gridmap.store.base import Scope

    return Scope.ALL


@campaign_app.command("list")
def campaign_list(database: DbOption = DEFAULT_DATABASE) -> None:
    """Every campaign with its days and status."""
    from gridmap import campaigns as camp

    store = _open(database)
    table = Table(title="campaigns 走访活动")
    for col in ("id", "name", "days", "status", "grids", "target"):
        table.add_column(col)
    for c in camp.all_campaigns(store):
        grids = "all" if c.grid_ids is None else ",".join(map(str, sorted(c.grid_ids)))
        target = escape(c.target) if c.target else "all"
        table.add_row(str(c.id), escape(c.name), f"{c.starts}–{c.ends}", c.status, grids, target)
    store.close()
    console.print(table)


@campaign_app.command("status")
def campaign_status(
    campaign_id: Annotated[int, typer.Argument(help="Campaign id.")],
    level: Annotated[str, typer.Option(help="grids, communities or zones.")] = "grids",
    database: DbOption = DEFAULT_DATABASE,
) -> None:
    """Households done per grid (or community, zone), and the plans made."""
    from gridmap import campaigns as camp
    from gridmap import plans, queries

    if level not in ("grids", "communities", "zones"):
        _fail(GridmapError("--level must be grids, communities or zones"))
    store = _open(database)
    try:
        c = camp.get(store, campaign_id)
        rows = queries.household_stats(store, level, scope=_all(), campaign=c.id)
        made = plans.of_campaign(store, c.id, scope=_all())
    except GridmapError as exc:
        store.close()
        _fail(exc)
    store.close()
    planned = {p["grid_id"]: 0 for p in made}
    for p in made:
        planned[p["grid_id"]] += 1
    table = Table(title=f"{escape(c.name)} ({c.starts}–{c.ends}, {c.status})")
    for col in ("id", "name", "households", "done", "coverage", "plans"):
        table.add_column(col, justify="right" if col != "name" else "left")
    total = done = 0
    for r in rows:
        k = r["campaign"]
        total += k["households"]
        done += k["done"]
        cov = "" if k["coverage"] is None else f"{k['coverage']:.0%}"
        plans_here = str(planned.get(r["id"], "")) if level == "grids" else ""
        table.add_row(
            str(r["id"]),
            escape(str(r["name"])),
            str(k["households"]),
            str(k["done"]),
            cov,
            plans_here,
        )
    console.print(table)
    share = f"{done / total:.1%}" if total else "–"
    console.print(f"done {done} of {total} households ({share}); {len(made)} plan(s)")


@campaign_app.command("close")
def campaign_close(
    campaign_id: Annotated[int, typer.Argument(help="Campaign id.")],
    reopen: Annotated[bool, typer.Option(help="Open it again instead.")] = False,
    database: DbOption = DEFAULT_DATABASE,
) -> None:
    """Close a campaign (no more plans or visits), or reopen it."""
    from gridmap import campaigns as camp
    from gridmap.accounts import audit

    store = _open(database)
    try:
        c = camp.set_status(store, campaign_id, "open" if reopen else "closed")
        audit(store, _cli_principal(), "update", object=f"campaigns/{c.id}", source="cli")
    except GridmapError as exc:
        _fail(exc)
    finally:
        store.close()
    console.print(f"campaign {c.id} is {c.status}")


@app.command("plan")
def plan(
    campaign: Annotated[int, typer.Option(help="Campaign id.")],
    grid: Annotated[list[int], typer.Option(help="Grid id (repeat for several).")],
    date: Annotated[str, typer.Option(help="First day (YYYY-MM-DD).")],
    workers: Annotated[int, typer.Option(min=1, max=10, help="Grid workers walking.")] = 1,
    days: Annotated[int, typer.Option(min=1, max=14, help="Days to plan.")] = 1,
    weekend: Annotated[bool, typer.Option(help="Work on Saturday and Sunday too.")] = False,
    time_limit: Annotated[
        float, typer.Option(min=0.1, max=60, help="Seconds of search per grid.")
    ] = 2.0,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Write the plan: .gpx (phone), .csv (roster), .geojson; one file per "
            "grid when several (name-GRID.ext)."
        ),
    ] = None,
    database: DbOption = DEFAULT_DATABASE,
) -> None:
    """Plan walking routes for a campaign's open households, grid by grid, and store them."""
    from gridmap import plan_output, plans
    from gridmap.accounts import audit

    first = _date(date, "--date")
    if out is not None and out.suffix.lower() not in OUT_FORMATS:
        _fail(GridmapError(f"--out must end in {', '.join(OUT_FORMATS)}"))
    if out is not None and not out.resolve().parent.is_dir():
        _fail(GridmapError(f"no folder {out.resolve().parent} to write {out.name} into"))
    store = _open(database)
    who = _cli_principal()
    reqs = [
        plans.PlanRequest(
            campaign, g, first, days=days, workers=workers, weekend=weekend, time_limit_s=time_limit
        )
        for g in dict.fromkeys(grid)
    ]
    try:
        for r in reqs:
            plans.check(store, r, scope=_all())
        bodies = _compute_all(store, reqs)
        docs = plans.save(store, bodies, by=who.username)
        for d in docs:
            audit(
                store, who, "create", object=f"plans/{d['id']}", grid_id=d["grid_id"], source="cli"
            )
        _summarise(docs)
        if out is not None:
            for d in docs:
                path = (
                    out
                    if len(docs) == 1
                    else out.with_name(f"{out.stem}-{d['grid_id']}{out.suffix}")
                )
                path.write_bytes(_render(store, d, out.suffix.lower(), plan_output))
                if out.suffix.lower() != ".gpx":  # names of people left the database
                    audit(store, who, "read", object=f"plans/{d['id']}", detail=str(path))
                console.print(f"wrote {path}")
    except GridmapError as exc:
        _fail(exc)
    finally:
        store.close()


def _compute_all(store: Any, reqs: list[Any]) -> list[dict[str, Any]]:
    from gridmap import plans

    with progress_bar() as bar:
        task = bar.add_task("planning grids", total=len(reqs))
        return plans.compute_many(store, reqs, scope=_all(), on_done=lambda _: bar.advance(task))


def _summarise(docs: list[dict[str, Any]]) -> None:
    table = Table(title="plans 走访计划")
    for col in ("plan", "grid", "routes", "stops", "households", "left out", "km"):
        table.add_column(col, justify="right")
    for d in docs:
        b = d["body"]
        stops = sum(len(r["stops"]) for r in b["routes"])
        hh = sum(len(s["households"]) for r in b["routes"] for s in r["stops"])
        km = sum(r["distance_m"] for r in b["routes"]) / 1000
        table.add_row(
            str(d["id"]), str(d["grid_id"]), str(len(b["routes"])), str(stops), str(hh),
            str(len(b["unassigned"])), f"{km:.1f}",
        )  # fmt: skip
        if b.get("note"):
            console.print(f"[yellow]grid {d['grid_id']}:[/] {escape(b['note'])}")
    console.print(table)


def _render(store: Any, doc: dict[str, Any], suffix: str, plan_output: Any) -> bytes:
    scope = _all()
    if suffix == ".gpx":
        return plan_output.to_gpx(store, doc, scope).encode()
    if suffix == ".csv":
        return plan_output.roster_csv(plan_output.roster(store, doc, scope))
    return orjson.dumps(plan_output.to_geojson(store, doc, scope))


@app.command("import-osm")
def import_osm(
    extract: Annotated[Path, typer.Argument(help="OpenStreetMap extract (.osm or .pbf).")],
    replace: Annotated[
        bool, typer.Option(help="Replace the roads there are (else add to them).")
    ] = False,
    database: DbOption = DEFAULT_DATABASE,
) -> None:
    """Import the streets of an OpenStreetMap extract into the roads (walking network), cut
    to the subdistrict."""
    from gridmap import osm
    from gridmap.accounts import audit

    store = _open(database)
    try:
        area = store.service_area  # the roads layer holds nothing outside it
        with console.status(f"reading {extract.name}"):
            streets = osm.read_streets(extract, clip=None if area is None else osm.clip_area(area))
        with progress_bar() as bar:
            task = bar.add_task("writing roads", total=len(streets.geometries))
            ids = osm.import_streets(
                store,
                streets,
                replace=replace,
                progress=lambda n: bar.update(task, completed=n),
            )
        audit(
            store, _cli_principal(), "import", object="collections/roads", source="cli",
            detail=f"{len(ids)} streets from {extract.name}" + (" (replaced)" if replace else ""),
        )  # fmt: skip
    except GridmapError as exc:
        _fail(exc)
    finally:
        store.close()
    walkable = sum(1 for p in streets.properties if p["walkable"])
    console.print(
        f"[green]imported[/] {len(ids)} streets ({walkable} walkable) from {extract}; "
        f"{streets.skipped} other ways skipped"
    )
