"""The end-of-run report: report.md with the plan tables, the final metrics and a loss-curve PNG.

    runs/<run_id>/resolved_settings.json   written at start (the loop)
    runs/<run_id>/metrics.jsonl            one JSON object per log/eval event (ngpt.metrics)
    runs/<run_id>/report.md, loss.png      written at the end (here)
    runs/<run_id>/eval.png + an eval section in report.md   after `ngpt train pipeline` evaluates (eval.*)
"""

from __future__ import annotations

from pathlib import Path

from ngpt.io_utils import atomic_output, atomic_write_text
from ngpt.metrics import read_metrics

EVAL_HEADING = "## eval"

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


def plot_eval(record: dict, out_png: Path) -> None:
    """One bar chart: accuracy per task (and chat accuracy) against its chance baseline; or bits/byte alone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = record.get("tasks") or {}
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(tasks) + 2), 4), dpi=100)
    if tasks:
        names = list(tasks)
        chat = any("chat_acc" in t for t in tasks.values())
        width = 0.4 if chat else 0.6
        xs = range(len(names))
        ax.bar([x - (width / 2 if chat else 0) for x in xs], [tasks[n]["acc"] for n in names], width, label="acc")
        if chat:
            ax.bar([x + width / 2 for x in xs], [tasks[n].get("chat_acc", 0.0) for n in names], width, label="chat acc")
        ax.scatter(list(xs), [tasks[n]["baseline"] for n in names], marker="_", s=900, color="black", label="chance", zorder=3)
        ax.set_xticks(list(xs), names, rotation=30, ha="right")
        ax.set_ylim(0, 1)
        ax.set_ylabel("accuracy")
        ax.set_title(f"CORE {record['core']:+.3f}" if record.get("core") is not None else "accuracy")
        ax.legend()
    else:
        ax.bar(["bits/byte"], [record["bpb"]["bpb"] or 0.0], 0.5)
        ax.set_title(f"bits per byte on {record['bpb']['source']}"[:80])
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_output(out_png) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def write_eval_section(run_dir: Path, record: dict, checkpoint: Path) -> Path:
    """Add (or replace) the eval section of report.md: bits/byte, the task table, CORE, and eval.png."""
    from ngpt.eval.summary import headline, task_rows

    lines = [EVAL_HEADING, "", f"Checkpoint `{checkpoint}`; the same numbers are in `{checkpoint.parent / 'eval.json'}`.", ""]
    if "bpb" in record:
        b = record["bpb"]
        lines += ["| text | bits/byte | loss/token | tokens |", "| --- | --- | --- | --- |",
                  f"| {b['source']} | {b['bpb']:.4f} | {b['loss']:.4f} | {b['tokens']:,} |", ""]
    if record.get("tasks"):
        columns, rows = task_rows(record)
        lines += [f"{headline(record)}, {record['shots']}-shot" + (f", first {record['limit']} questions" if record.get("limit") else ""), "",
                  "| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines.append("")
    plot_eval(record, run_dir / "eval.png")
    lines += ["![eval](eval.png)", ""]
    path = run_dir / "report.md"
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    old = old.split(f"\n{EVAL_HEADING}\n")[0].rstrip("\n")  # a re-run replaces its eval section
    atomic_write_text(path, (old + "\n\n" if old else "") + "\n".join(lines))
    return path
