"""What the sweep tells people: the ranked table (terminal and {out}/summary.md) and the per-config details.

    rows = summary_rows(report.ranked, hours)          # the table, for console.table or markdown
    cols = summary_columns(hours)
    text = summary_markdown(report)                     # all of summary.md
    warning = busy_warning(sweep)                       # None, or why the numbers may be too low

The table's shape column is compact T/C/L/H (seq_len/n_embd/n_layer/n_head; V only when the grid
mixes vocab sizes), so the ranks read at a glance; the details below it spell each config out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ngpt.bench.sweep.overnight import OVERNIGHT_EFFICIENCY, duration_text
from ngpt.bench.sweep.ranking import KEEP_FRACTION, ConfigOutcome, Ranked

if TYPE_CHECKING:
    from ngpt.bench.sweep.search import Sweep, SweepReport

SUMMARY_COLUMNS = ("rank", "T/C/L/H", "params", "micro_B", "AMP", "ckpt", "tokens/s", "% of best",
                   "tokens in {hours}", "max micro_B (limit)")


def busy_warning(sweep: Sweep) -> str | None:
    """A warning when other work competed with the trials, judged from the load average.

    Back-to-back trials alone keep the 1-minute load near their thread count; clearly above that,
    other processes were running, and on CPU a few busy neighbours can slow torch's threads many-fold.
    """
    threads = int(sweep.info.raw.get("threads") or 1)
    if sweep.info.type != "cpu" or sweep.max_load <= threads + 1:
        return None
    return (f"Other work competed with the trials: the load average reached {sweep.max_load:.1f} on {threads} "
            f"threads (the trials alone make about {threads}). Their tokens/s are too low and may be ranked "
            f"wrongly; re-run when the machine is quiet, after deleting {sweep.store.path} to measure again.")


def amp_cell(o: ConfigOutcome) -> str:
    if not o.precision or o.precision == "fp32":
        return "off"
    dtype = o.precision.split()[0]
    if o.amp_low_precision is None:
        return dtype
    if o.amp_low_precision:
        return f"{dtype} ✓"
    found = ", ".join(sorted((o.dtypes or {}).get("Linear", {}))) or "?"
    return f"{dtype} ✗ (matmuls ran in {found})"


def fit_cell(o: ConfigOutcome) -> str:
    text = f"{o.fit.max_b} ({o.fit.limit})"
    if o.fit_ckpt is not None:
        text += f"; ckpt: {o.fit_ckpt.max_b}" if o.fit_ckpt.max_b > o.fit.max_b else "; ckpt: no gain"
    return text


def summary_rows(ranked: list[Ranked], hours: float) -> list[tuple]:
    rows = []
    mixed_vocab = len({r.outcome.entry.vocab_size for r in ranked}) > 1  # else V is the same everywhere: noise
    for i, r in enumerate(ranked, 1):
        e, b = r.outcome.entry, r.best
        mark = " ★" if i == 1 else (" ≥90%" if r.contender else "")
        shape = f"{e.seq_len}/{e.n_embd}/{e.n_layer}/{e.n_head}" + (f"/V={e.vocab_size}" if mixed_vocab else "")
        rows.append((f"{i}{mark}", shape, _si(r.outcome.params), b.micro_b,
                     amp_cell(r.outcome), "yes" if b.checkpointing else "no", round(b.tokens_per_s),
                     f"{100 * r.share:.0f} %", _si(b.tokens_per_s * hours * 3600), fit_cell(r.outcome)))
    return rows


def summary_columns(hours: float) -> tuple[str, ...]:
    return tuple(c.format(hours=duration_text(hours)) for c in SUMMARY_COLUMNS)


def _si(n: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.0f}"


def _md_table(columns: tuple[str, ...], rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |" for row in rows]
    return "\n".join(lines)


def config_details(o: ConfigOutcome) -> str:
    """One line per config: the fit search, each timing, the AMP check, what checkpointing did."""
    timings = ", ".join(
        f"micro_B={t.micro_b}{' ckpt' if t.checkpointing else ''}: "
        + (f"{t.tokens_per_s:,.0f} tok/s ({t.step_ms:,.1f} ms/step)" if t.status == "ok" else t.status)
        for t in o.timings) or "none"
    if o.fit_ckpt is None:
        ckpt = f"not tried (the limit was {o.fit.limit}, not memory)" if o.fit.max_b else "not tried"
    elif o.fit_ckpt.max_b > o.fit.max_b:
        ckpt = f"moves max micro_B from {o.fit.max_b} to {o.fit_ckpt.max_b} (then {o.fit_ckpt.detail})"
    else:
        ckpt = f"does not move max micro_B (with it: {o.fit_ckpt.detail})"
    dtypes = "; ".join(f"{k}: " + ", ".join(f"{n}× {d}" for d, n in v.items()) for k, v in (o.dtypes or {}).items())
    return (f"- **{o.entry.label}** ({_si(o.params)} params): max micro_B {o.fit.max_b}, limit {o.fit.limit} "
            f"({o.fit.detail}). Timings: {timings}. AMP: {amp_cell(o)}"
            + (f" [{dtypes}]" if dtypes else "") + f". Checkpointing: {ckpt}.")


def summary_markdown(report: SweepReport) -> str:
    s, p = report.sweep, report.sweep.plan
    fp = s.info.raw
    lines = [
        f"# ngpt bench sweep — {fp['device']} ({fp['device_name']})", "",
        f"torch {fp['torch']}, python {fp['python']}, {fp['threads']} threads; "
        f"{s.grid_name}, {len(s.grid)} configs; timeout {p.timeout_s:g} s per trial; max micro_B {p.max_micro_b}; "
        f"memory budget {'device default' if s.memory_gb is None else f'{s.memory_gb:g} GiB'}; "
        f"{report.ran} trials run, {report.reused} reused from results.jsonl; {report.wall_s:.0f} s; "
        f"load average as the trials started: up to {s.max_load:.2f} (the trials' own {fp['threads']} threads make "
        f"about {fp['threads']}; other work on the machine makes every number lower); {s.load_start:.2f} when this "
        "run began.", "",
        *([f"**Warning:** {busy_warning(s)}", ""] if busy_warning(s) else []),
        f"Ranked by the 90 % rule: among configs within {100 * KEEP_FRACTION:.0f} % of the best tokens/s, the one "
        "with the most parameters first (same size: the longer context), ★ = the pick, ≥90% = within reach of "
        "the best; then the rest by tokens/s. "
        "T/C/L/H = seq_len/n_embd/n_layer/n_head; max micro_B (limit) = the largest micro-batch that ran and "
        "what stopped the search (memory: OOM above it; time: a larger one would not time within the "
        "timeout; cap: --max-micro-b). "
        "tokens/s is of full training steps (forward, backward, clipping, AdamW) on synthetic batches, median "
        "step after discarded warm-up steps.", "",
        _md_table(summary_columns(p.hours), summary_rows(report.ranked, p.hours)) if report.ranked
        else "**No config could be timed.** See the failures below and results.jsonl.", "",
    ]
    if report.overrides is not None:
        t = report.overrides["pretrain"]
        w = report.winner
        step_tokens = t["micro_batch"] * w.outcome.entry.seq_len * t["accum_steps"]
        lines += [
            f"Overnight config: {', '.join(str(x) for x in report.config_paths)} — micro_batch {t['micro_batch']} × "
            f"accum_steps {t['accum_steps']} × T {w.outcome.entry.seq_len} = {step_tokens:,} tokens per optimizer "
            f"step (target {s.batch_tokens:,}); total_steps {t['total_steps']:,} plans on "
            f"{100 * OVERNIGHT_EFFICIENCY:.0f} % of the measured rate for {duration_text(p.hours)}, and max_time "
            f"{t['max_time']} stops the run then. Run it: `ngpt train pretrain -c {report.config_paths[-1]}`.", ""]
    lines += ["## Per config", ""] + [config_details(o) for o in report.outcomes]
    failed = [o for o in report.outcomes if o.failure]
    if failed:
        lines += ["", "## Not ranked", ""] + [f"- **{o.entry.label}**: {o.failure}" for o in failed]
    return "\n".join(lines) + "\n"
