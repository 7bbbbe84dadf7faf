"""Scenario reports: a rich table for people, ``--json`` for machines."""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table


@dataclass(slots=True)
class Target:
    """One target of the issue and whether this run met it."""

    name: str
    goal: str
    measured: str
    met: bool | None  # None: not measurable in this run


@dataclass(slots=True)
class ScenarioReport:
    """What one scenario measured: a table, targets, and notes on what limits the figures."""

    scenario: str
    command: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    ok: bool = True

    def add_row(self, *values: Any) -> None:
        """Append a row (one value per column)."""
        self.rows.append(list(values))

    def target(self, name: str, goal: str, measured: str, met: bool | None) -> None:
        """Record a target and the measured figure."""
        self.targets.append(Target(name, goal, measured, met))

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data, with the machine it ran on."""
        out = asdict(self)
        out["machine"] = machine()
        return out


def machine() -> dict[str, Any]:
    """The machine the run happened on (figures are meaningless without it)."""
    return {
        "cpus": psutil.cpu_count(logical=True),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg_1m": round(psutil.getloadavg()[0], 2),
    }


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value >= 100:
            return f"{value:,.0f}"
        if value >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    return str(value)


def render(report: ScenarioReport, console: Console) -> None:
    """Print the report as tables."""
    table = Table(title=f"rentahal bench {report.scenario}", title_justify="left")
    for col in report.columns:
        table.add_column(col, justify="left" if col == report.columns[0] else "right")
    for row in report.rows:
        table.add_row(*(_cell(v) for v in row))
    console.print(table)
    if report.targets:
        targets = Table(title="targets", title_justify="left")
        for col in ("target", "goal", "measured", "met"):
            targets.add_column(col)
        for t in report.targets:
            met = {True: "[green]yes[/green]", False: "[red]no[/red]", None: "n/a"}[t.met]
            targets.add_row(t.name, t.goal, t.measured, met)
        console.print(targets)
    for note in report.notes:
        console.print(f"[dim]- {note}[/dim]")
    m = machine()
    console.print(
        f"[dim]machine: {m['cpus']} CPUs, {m['memory_gib']} GiB, Python {m['python']}, "
        f"load {m['load_avg_1m']}[/dim]"
    )


def dumps(reports: list[ScenarioReport]) -> str:
    """The reports as one JSON document."""
    if len(reports) == 1:
        return json.dumps(reports[0].to_dict(), indent=2)
    return json.dumps([r.to_dict() for r in reports], indent=2)
