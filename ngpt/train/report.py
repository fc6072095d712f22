"""Run records: metrics.jsonl (stable keys), resolved_settings.json, and report.md with a loss-curve PNG.

    runs/<run_id>/resolved_settings.json   written at start
    runs/<run_id>/metrics.jsonl            one JSON object per log/eval event
    runs/<run_id>/report.md, loss.png      written at the end

Metric keys (DESIGN.md contract): train_loss, lr, tokens_per_s, mfu, val_pretrain_loss,
val_sft_loss, val_bpb; every line also has phase and step.
"""

from __future__ import annotations

import json
from pathlib import Path

from ngpt.io_utils import atomic_output, atomic_write_text

METRIC_KEYS = ("train_loss", "lr", "tokens_per_s", "mfu", "val_pretrain_loss", "val_sft_loss", "val_bpb")


class MetricsLog:
    def __init__(self, run_dir: Path):
        self.path = run_dir / "metrics.jsonl"
        run_dir.mkdir(parents=True, exist_ok=True)

    def write(self, phase: str, step: int, **metrics: float | None) -> None:
        unknown = set(metrics) - set(METRIC_KEYS) - {"tokens", "elapsed_s"}
        if unknown:
            raise ValueError(f"not a metric key: {sorted(unknown)} (stable keys: {METRIC_KEYS})")
        record = {"phase": phase, "step": step, **{k: v for k, v in metrics.items() if v is not None}}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def read_metrics(path: Path) -> list[dict]:
    """Records of a metrics.jsonl; a step logged twice (a resumed run) keeps its last record."""
    if not path.is_file():
        return []
    latest: dict[tuple, dict] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            r = json.loads(line)
            kind = "eval" if any(k.startswith("val_") for k in r) else "train"
            latest[(r["phase"], r["step"], kind)] = r
    return sorted(latest.values(), key=lambda r: (r["phase"] != "pretrain", r["step"]))


def plot_losses(records: list[dict], out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for key, style in (("train_loss", "-"), ("val_pretrain_loss", "o-"), ("val_sft_loss", "s-")):
        pts = [(r["step"], r[key]) for r in records if key in r]
        if pts:
            ax.plot(*zip(*pts), style, label=key, markersize=3, linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_output(out_png) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def write_report(run_dir: Path, title: str, tables: dict[str, dict], final: dict) -> Path:
    """report.md: the plan tables, final metrics and the loss curve."""
    records = read_metrics(run_dir / "metrics.jsonl")
    plot_losses(records, run_dir / "loss.png")
    lines = [f"# {title}", ""]
    for name, rows in tables.items():
        lines += [f"## {name}", "", "| key | value |", "| --- | --- |"]
        lines += [f"| {k} | {v} |" for k, v in rows.items()]
        lines.append("")
    lines += ["## final metrics", "", "| metric | value |", "| --- | --- |"]
    lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in final.items()]
    lines += ["", "![loss curves](loss.png)", ""]
    path = run_dir / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
