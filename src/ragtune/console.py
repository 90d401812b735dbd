"""What a user sees while a stage runs: rich progress bars and the one-line stage summary."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ragtune.errors import UserError

T = TypeVar("T")

# stderr keeps stdout clean for `ragtune search --json`; DVC shows both.
console = Console(stderr=True, highlight=False)


def _quiet() -> bool:
    """Progress bars are noise in CI logs and in `--json` output."""
    if os.environ.get("RAGTUNE_QUIET") == "1":
        return True
    return not sys.stderr.isatty() and os.environ.get("CI") == "true"


def progress() -> Progress:
    """A progress bar with count, elapsed and remaining time (transient, so logs stay readable)."""
    return Progress(
        TextColumn("[bold blue]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=_quiet(),
    )


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a rich progress bar."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress() as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)


def warn(message: str) -> None:
    console.print(f"[bold yellow]WARNING[/] {message}")


@contextmanager
def stage(name: str) -> Iterator[dict[str, str]]:
    """Time a stage and print its one-line summary: ``[stage] read … → wrote … (12.3s)``.

    The body fills ``summary["read"]`` and ``summary["wrote"]``. A :class:`~ragtune.errors.UserError` (bad params,
    bad input) ends the stage with its message on one red line and exit code 1, without a traceback: the message
    already says what, where and how to fix it. Any other exception is a bug and keeps its traceback.
    """
    summary: dict[str, str] = {"read": "", "wrote": ""}
    start = time.perf_counter()
    try:
        yield summary
    except UserError as exc:
        console.print(f"[bold red]{name} failed:[/] {exc}", markup=True, highlight=False, soft_wrap=True)
        raise SystemExit(1) from None
    elapsed = time.perf_counter() - start
    console.print(f"[bold green]\\[{name}][/] read {summary['read']} → wrote {summary['wrote']} ({elapsed:.1f}s)")
