"""`ngpt bench sweep`: for this machine, the model config and training knobs of the most useful overnight run.

    from ngpt.bench.sweep import SweepPlan, prepare_sweep
    sweep = prepare_sweep(SweepPlan(settings=load_settings(), device="cpu", out_dir=Path("bench")))
    report = sweep.run()            # report.ranked[0] is the winner; report.config_paths the override files

For every config of the grid (device-aware defaults, or a JSON list of configs), trials run one at a
time, each in a fresh process killed at `timeout_s`: the largest micro_B that fits (OOM is a result),
tokens/s there and at half of it, and activation checkpointing where memory was the limit. Each
trial appends one line to {out}/results.jsonl as it ends; a re-run reuses every line with the same
trial settings and torch/device fingerprint, so an interrupted sweep resumes where it stopped. The
90 % rule ranks the configs, and the winner becomes {out}/overnight.json (and --write-config), an
override file for `ngpt train pretrain -c`.

Modules, in the order a sweep uses them:
    grid.py       GridEntry; the --grid file and the default grid per device; SweepError
    runner.py     one trial in a fresh process, killed at the timeout; the device probe (DeviceInfo)
    trial.py      the trial process itself (`python -m ngpt.bench.sweep.trial SPEC`)
    store.py      results.jsonl: trial keys, reuse on a re-run, torn last lines
    search.py     SweepPlan → prepare_sweep → Sweep.run: the micro_B search and timings per config
    ranking.py    what each config measured (ConfigOutcome) and the 90 % rule (rank)
    overnight.py  the winner as an `ngpt train` override file
    summary.py    the ranked table, summary.md, the busy-machine warning
"""

from ngpt.bench.sweep.grid import GridEntry, SweepError, default_grid, load_grid
from ngpt.bench.sweep.overnight import duration_text, overnight_overrides
from ngpt.bench.sweep.ranking import ConfigOutcome, Fit, Ranked, Timing, rank
from ngpt.bench.sweep.runner import DeviceInfo
from ngpt.bench.sweep.search import Sweep, SweepPlan, SweepReport, prepare_sweep
from ngpt.bench.sweep.store import ResultStore
from ngpt.bench.sweep.summary import busy_warning, summary_columns, summary_markdown, summary_rows

__all__ = [
    "ConfigOutcome",
    "DeviceInfo",
    "Fit",
    "GridEntry",
    "Ranked",
    "ResultStore",
    "Sweep",
    "SweepError",
    "SweepPlan",
    "SweepReport",
    "Timing",
    "busy_warning",
    "default_grid",
    "duration_text",
    "load_grid",
    "overnight_overrides",
    "prepare_sweep",
    "rank",
    "summary_columns",
    "summary_markdown",
    "summary_rows",
]
