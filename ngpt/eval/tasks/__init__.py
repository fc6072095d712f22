"""The task registry: every module in this package that declares `TASKS` (one module per data format).

    from ngpt.eval.tasks import get_task, task_names
    task = get_task("arc_easy")       # a Task (ngpt.eval.tasks.base); unknown names list the known ones

Adding a task is one file here: a module with `TASKS = [Task(...)]` (see base.py and piqa.py).
Names are lm-evaluation-harness's, so a number reported here is comparable with one from lm-eval.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from functools import cache

from ngpt.eval.tasks.base import Task, TaskDataError


@cache
def registry() -> dict[str, Task]:
    """Every task of every module in this package, by name (imported on first use)."""
    tasks: dict[str, Task] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for task in getattr(module, "TASKS", ()):
            if task.name in tasks:
                raise RuntimeError(f"task {task.name} is declared twice (in {module.__name__} and before)")
            tasks[task.name] = task
    return tasks


def task_names() -> list[str]:
    return list(registry())


def get_task(name: str) -> Task:
    tasks = registry()
    if name in tasks:
        return tasks[name]
    close = difflib.get_close_matches(name, tasks, n=1, cutoff=0.5)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise TaskDataError(f"unknown task '{name}'{hint}. Known tasks: {', '.join(tasks)}")
