"""The end-of-run report: report.md with the plan tables, the final metrics and a loss-curve PNG.

    runs/<run_id>/resolved_settings.json   written at start (the loop)
    runs/<run_id>/metrics.jsonl            one JSON object per log/eval event (ngpt.metrics)
    runs/<run_id>/report.md, loss.png      written at the end (here)
"""

from __future__ import annotations

from pathlib import Path

from ngpt.io_utils import atomic_output, atomic_write_text
from ngpt.metrics import read_metrics

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
