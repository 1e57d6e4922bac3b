"""`gridmap import` and `gridmap export`: files in and out of a layer, from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from gridmap.cli import DbOption, _fail, _open, app, console, err, progress_bar
from gridmap.errors import GridmapError
from gridmap.io.report import Report
from gridmap.settings import DEFAULT_DATABASE

_H0 = "GeoPackage, Shapefile (.shp, folder or .zip), GeoJSON, KML/KMZ, GPX, CSV or XLSX."
_H1 = (
    "The coordinates' CRS: wgs84, cgcs2000, gcj02 (Amap), bd09 (Baidu) or EPSG:n "
    "(needed when the file carries none)."
)
_H2 = "Text encoding (gbk, utf-8 …) when it cannot be told from the file."
_H3 = (
    "append (new rows only), upsert (update rows with the same key) or replace (also "
    "delete what the file lacks)."
)
_H4 = "Import rows that lie outside the grid they name, where they lie."
_H5 = "Metres within which grid/community edges are snapped together."
_H6 = "CRS of the coordinates written (CRS84 by default; gcj02, bd09, EPSG:4547 …)."


@app.command("import")
def import_file(
    file: Annotated[
        Path,
        typer.Argument(help=_H0),
    ],
    layer: Annotated[
        str, typer.Option("--layer", "-l", help="The layer to import into (households, grids …).")
    ],
    crs: Annotated[
        str | None,
        typer.Option(help=_H1),
    ] = None,
    encoding: Annotated[
        str | None,
        typer.Option(help=_H2),
    ] = None,
    mapping: Annotated[
        Path | None, typer.Option(help="TOML file: a [columns] table of header = property.")
    ] = None,
    mode: Annotated[
        str,
        typer.Option(help=_H3),
    ] = "append",
    source_layer: Annotated[
        str | None, typer.Option(help="The layer or sheet to read, in a file that holds several.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check everything, write nothing.")
    ] = False,
    repair: Annotated[
        bool, typer.Option("--repair", help="Make invalid geometries valid (reported).")
    ] = False,
    allow_outside_grid: Annotated[
        bool,
        typer.Option(
            "--allow-outside-grid",
            help=_H4,
        ),
    ] = False,
    snap: Annotated[float, typer.Option(help=_H5)] = 0.5,
    database: DbOption = DEFAULT_DATABASE,
) -> None:
    """Import a file into a layer: all rows or none, checked as the API checks edits."""
    from gridmap.cli_field import _cli_principal
    from gridmap.io.importer import Options, run
    from gridmap.io.report import ImportRefusedError

    if not file.exists():
        _fail(GridmapError(f"no file {file}"))
    options = Options(
        layer=layer,
        mode=mode,  # type: ignore[arg-type]
        crs=crs,
        encoding=encoding,
        mapping=mapping,
        source_layer=source_layer,
        dry_run=dry_run,
        repair=repair,
        allow_outside_grid=allow_outside_grid,
        snap_m=snap,
    )
    store = _open(database)
    try:
        with console.status("importing") as status:
            report = run(
                store,
                file,
                options,
                principal=_cli_principal(),
                source="cli",
                progress=lambda stage: status.update(stage),
            )
    except ImportRefusedError as exc:
        _show(exc.report)
        _fail(exc)
    except GridmapError as exc:
        _fail(exc)
    finally:
        store.close()
    _show(report)
    colour = "green" if report.committed else "yellow"
    console.print(f"[{colour}]{escape(report.summary())}[/]")


def _show(report: Report) -> None:
    enc, crs = report.encoding or "-", report.crs or "-"
    console.print(f"{escape(report.file)}: {report.format}, {report.rows} rows, {enc}, CRS {crs}")
    if report.columns:
        pairs = ", ".join(f"{c} → {t}" for c, t in report.columns.items())
        console.print(f"columns: {escape(pairs)}")
    if report.ignored_columns:
        console.print(f"[yellow]ignored columns:[/] {escape(', '.join(report.ignored_columns))}")
    for line in [*report.notes, *report.repaired, *report.snapped]:
        console.print(f"  {escape(line)}")
    for line in report.warnings:
        err.print(f"[yellow]warning:[/] {escape(line)}")
    for p in report.problems:
        if p.kind == "file" and report.problem_count == 1:
            continue  # said once, by the error line
        where = f"row {p.row}: " if p.row is not None else ""
        err.print(f"[red]{p.kind}[/] {escape(where + p.message)}")
    if report.problem_count > len(report.problems):
        err.print(f"… and {report.problem_count - len(report.problems)} more problems")  # fmt: skip


@app.command("export")
def export_file(
    layer: Annotated[str, typer.Option("--layer", "-l", help="The layer to export.")],
    format: Annotated[
        str,
        typer.Option("--format", "-f", help="gpkg, shp (zipped), geojson, csv, xlsx, kml or gpx."),
    ] = "gpkg",
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="File to write (default: <layer>.<format>).")
    ] = None,
    crs: Annotated[
        str | None,
        typer.Option(help=_H6),
    ] = None,
    encoding: Annotated[
        str | None, typer.Option(help="Shapefile text encoding: utf-8 (default) or gbk.")
    ] = None,
    lang: Annotated[
        str, typer.Option(help="zh (Chinese headers and labels in Excel) or en.")
    ] = "zh",
    database: DbOption = DEFAULT_DATABASE,
) -> None:
    """Export a layer as a file (as a subdistrict admin sees it: personal fields masked)."""
    from gridmap.cli_field import _cli_principal
    from gridmap.crs import CRS84, UnsupportedCRSError, normalize_crs
    from gridmap.io.exporter import export
    from gridmap.io.writers import FORMATS, check_format
    from gridmap.layers import get_layer

    try:
        out_crs = normalize_crs(crs) if crs else CRS84
        fmt = check_format(format, get_layer(layer), encoding=encoding, crs=out_crs)
    except (GridmapError, UnsupportedCRSError) as exc:
        _fail(exc)
    if lang not in ("zh", "en"):
        _fail(GridmapError("--lang must be zh or en"))
    target = out or Path(f"{layer}.{FORMATS[fmt][1]}")
    if target.is_dir():
        name = f"{layer}.{FORMATS[fmt][1]}"
        _fail(GridmapError(f"{target} is a folder; name the file to write (-o {target}/{name})"))
    if not target.resolve().parent.is_dir():
        _fail(GridmapError(f"no folder {target.resolve().parent} to write {target.name} into"))
    store = _open(database)
    try:
        with progress_bar() as bar:
            task = bar.add_task(f"reading {layer}", total=None)
            data, n = export(
                store,
                layer,
                fmt,
                principal=_cli_principal(),
                crs=out_crs,
                encoding=encoding,
                lang=lang,
                source="cli",
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
    except GridmapError as exc:
        _fail(exc)
    finally:
        store.close()
    target.write_bytes(data)
    console.print(f"[green]exported[/] {n} features of {layer} to {target} ({len(data):,} bytes)")
