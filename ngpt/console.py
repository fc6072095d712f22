"""Rich output every command shares: plan tables, key/value tables, progress bars, error panels.

Commands print what they resolved (sources, sizes, device, precision) before doing any work,
so a user sees the plan and can stop a wrong run before it starts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> Table:
    t = Table(title=title, title_justify="left", header_style="bold")
    for col in columns:
        t.add_column(col, overflow="fold")  # wrap long paths instead of cutting them: they are what users read
    for row in rows:
        t.add_row(*(fmt(v) for v in row))
    return t


def kv_table(title: str, items: Mapping[str, object]) -> Table:
    return table(title, ("setting", "value"), items.items())


def fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def progress() -> Progress:
    """A progress display with a free-form `stats` field (docs/s, tokens/s ...)."""
    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def error_panel(message: str, title: str = "error") -> None:
    err_console.print(Panel(message, title=f"[bold red]{title}", border_style="red", expand=False))
