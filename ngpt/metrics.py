"""The metrics log: runs/<run_id>/metrics.jsonl, one JSON object per log or eval event.

Metric keys (DESIGN.md contract): train_loss, lr, tokens_per_s, mfu, val_pretrain_loss,
val_sft_loss, val_bpb; every line also has phase and step. Training writes it; reports, the demo
and the hub's model card read it.

    MetricsLog(run_dir).write("pretrain", 100, train_loss=3.2, lr=6e-4)
    records = read_metrics(run_dir / "metrics.jsonl")
"""

from __future__ import annotations

import json
from pathlib import Path

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
