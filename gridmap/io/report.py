"""What an import found and did: counts, the columns it understood, and each problem by row."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from gridmap.errors import InvalidFeatureError

MAX_LISTED = 200
"""Problems listed one by one; beyond this they are counted only."""


@dataclass
class Problem:
    """One reason a row (or the file) cannot be imported; ``row`` as the user counts rows."""

    row: int | None
    message: str
    kind: str = "invalid"


@dataclass
class Report:
    """The outcome of an import or of its dry run."""

    file: str
    layer: str
    mode: str
    format: str = ""
    rows: int = 0
    encoding: str | None = None
    crs: str | None = None
    columns: dict[str, str] = field(default_factory=dict)
    ignored_columns: list[str] = field(default_factory=list)
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    repaired: list[str] = field(default_factory=list)
    snapped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    problem_count: int = 0
    dry_run: bool = False
    committed: bool = False
    digest: str = ""

    def add(self, row: int | None, message: str, kind: str = "invalid") -> None:
        """Note one problem (listed while fewer than MAX_LISTED are)."""
        self.problem_count += 1
        if len(self.problems) < MAX_LISTED:
            self.problems.append(Problem(row, message, kind))

    @property
    def ok(self) -> bool:
        """True if nothing stops the import."""
        return self.problem_count == 0

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        return asdict(self)

    def summary(self) -> str:
        """One line: what was (or would be) written."""
        verb = "would write" if not self.committed else "wrote"
        return (
            f"{self.layer}: {self.rows} rows read; {verb} {self.inserted} new, "
            f"{self.updated} updated, {self.deleted} deleted; {self.unchanged} unchanged"
        )


class ImportRefusedError(InvalidFeatureError):
    """The import found problems and wrote nothing; ``report`` lists them by row."""

    def __init__(self, report: Report) -> None:
        first = report.problems[0] if report.problems else None
        where = f"row {first.row}: " if first and first.row is not None else ""
        more = f" (and {report.problem_count - 1} more)" if report.problem_count > 1 else ""
        text = f"{where}{first.message}" if first else "the import was refused"
        super().__init__(f"nothing was imported: {text}{more}")
        self.report = report
