"""The progress bar eval loops show (requests scored, windows read), with a rate: the Tracker of ngpt.eval.harness.

    with rich_tracker() as track:
        run_tasks(model, tok, runs, ..., progress=track)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ngpt.console import progress


@contextmanager
def rich_tracker(unit: str = "/s") -> Iterator[Callable[[str, int], Callable[[int], None]]]:
    with progress() as bar:
        def start(description: str, total: int) -> Callable[[int], None]:
            task = bar.add_task(description, total=total, stats="")
            t0, done = time.perf_counter(), [0]

            def advance(n: int) -> None:
                done[0] += n
                elapsed = time.perf_counter() - t0
                bar.update(task, advance=n, stats=f"{done[0] / elapsed:,.0f}{unit}" if elapsed > 0 else "")

            return advance

        yield start
