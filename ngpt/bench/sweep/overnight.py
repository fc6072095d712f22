"""The sweep's answer: the winning config as an override file for `ngpt train pretrain -c`.

    overrides = overnight_overrides(winner, hours=8, batch_tokens=131_072, device="cuda", base_warmup=200)
    overrides, paths = write_overnight_config(winner, plan, batch_tokens, device)   # {out}/overnight.json

The file holds the model dims, micro_batch, amp, activation checkpointing, accum_steps for the
target effective batch, total_steps for `hours` and max_time; the sweep's --config is merged under
it, so the file stands alone. It is checked to load as settings before it is written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from ngpt.bench.sweep.grid import SweepError
from ngpt.bench.sweep.ranking import Ranked
from ngpt.io_utils import atomic_write_text
from ngpt.settings import SettingsError, deep_merge, format_duration, load_settings, read_config_file

if TYPE_CHECKING:
    from ngpt.bench.sweep.search import SweepPlan

# The training loop also evaluates, checkpoints and reads data: total_steps plans on 90 % of the
# measured rate, and max_time stops the run at `hours` whatever happens.
OVERNIGHT_EFFICIENCY = 0.9


def duration_text(hours: float) -> str:
    """8 → '8h', 1.5 → '1h30m', 0.01 → '36s' (what pretrain.max_time parses)."""
    return format_duration(hours * 3600)


def overnight_overrides(winner: Ranked, hours: float, batch_tokens: int, device: str, base_warmup: int) -> dict:
    """The winner as `ngpt train` overrides: dims, micro_batch, amp, checkpointing, accum/total steps, max_time."""
    entry, best = winner.outcome.entry, winner.best
    micro_tokens = best.micro_b * entry.seq_len
    accum = max(1, round(batch_tokens / micro_tokens))
    step_tokens = micro_tokens * accum
    total_steps = max(1, int(OVERNIGHT_EFFICIENCY * best.tokens_per_s * hours * 3600 / step_tokens))
    pretrain = {"device": device, "micro_batch": best.micro_b, "accum_steps": accum, "total_steps": total_steps,
                "amp": entry.amp, "amp_dtype": entry.amp_dtype, "activation_checkpointing": best.checkpointing,
                "max_time": duration_text(hours)}
    if total_steps < 10 * base_warmup:  # a short run: keep warm-up to a tenth of it
        pretrain["warmup_steps"] = max(1, total_steps // 10)
    return {"model": entry.model_dict(), "pretrain": pretrain}


def write_overnight_config(winner: Ranked, plan: SweepPlan, batch_tokens: int,
                           device: str) -> tuple[dict, list[Path]]:
    """Write {out}/overnight.json (and --write-config); returns the overrides and the paths written."""
    overrides = overnight_overrides(winner, plan.hours, batch_tokens, device, plan.settings.pretrain.warmup_steps)
    written = deep_merge(read_config_file(plan.base_config) if plan.base_config else {}, overrides)
    try:
        load_settings(overrides=written, environ={})  # what `ngpt train -c` will do with it
    except SettingsError as e:
        raise SweepError(f"the overnight config does not load as settings ({e}); this is a bug in ngpt") from None
    text = json.dumps(written, indent=2) + "\n"
    paths = []
    for path in (plan.out_dir / "overnight.json", plan.write_config):
        if path is not None:
            atomic_write_text(path, text)
            paths.append(path)
    return overrides, paths
