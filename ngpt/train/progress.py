"""The live training line: step, loss, lr, tokens/s, MFU, ETA (Rich), plus the last eval results."""

from __future__ import annotations

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ngpt.console import console


class TrainProgress:
    def __init__(self, total_steps: int, start_step: int, enabled: bool = True):
        self.enabled = enabled
        self.progress = Progress(
            TextColumn("[bold]step"), MofNCompleteColumn(), BarColumn(), TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console, disable=not enabled,
        )
        self.task = self.progress.add_task("train", total=total_steps, completed=start_step, stats="")
        self.eval_text = ""

    def __enter__(self) -> "TrainProgress":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def update(self, step: int, loss: float, lr: float, tokens_per_s: float, mfu: float | None) -> None:
        mfu_text = f" mfu {100 * mfu:.1f}%" if mfu is not None else ""
        stats = f"loss {loss:.4f} lr {lr:.2e} {tokens_per_s:,.0f} tok/s{mfu_text}{self.eval_text}"
        self.progress.update(self.task, completed=step, stats=stats)

    def note(self, text: str) -> None:
        if self.enabled:
            self.progress.console.print(text)

    def note_eval(self, metrics: dict) -> None:
        self.eval_text = " | " + " ".join(f"{k.removeprefix('val_')} {v:.3f}" for k, v in metrics.items())
        self.note(f"step {self.progress.tasks[0].completed:.0f} eval: " + self.eval_text.strip(" |"))
