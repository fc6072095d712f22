"""The sweep's memory: {out}/results.jsonl, one JSON line per trial, which is what makes a sweep resumable.

    store = ResultStore(out / "results.jsonl")
    key = trial_key(spec, info.fingerprint())
    record = store.reusable(key, timeout_s)      # None: run the trial, then store.append({"key": key, ...})

A trial is the same trial when its spec and the torch/device fingerprint are the same (trial_key).
Each line is appended and fsynced as its trial ends, so an interrupted sweep loses at most the trial
that was running; the same command then reuses every stored line and measures only the rest.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ngpt.bench.sweep.grid import SweepError
from ngpt.io_utils import atomic_write_text


def trial_key(spec: dict, fingerprint: dict) -> str:
    blob = json.dumps({"spec": spec, "fingerprint": fingerprint}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class ResultStore:
    """{out}/results.jsonl: one JSON line per measured trial, appended and fsynced as each trial ends.

    A kill mid-append leaves at most one unterminated last line: loading drops it (the trial runs again).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: dict[str, dict] = {}
        self.dropped_torn_line = False
        self._load()

    def _load(self) -> None:
        if not self.path.is_file():
            return
        text = self.path.read_text(encoding="utf-8")
        lines = text.split("\n")
        if text and not text.endswith("\n"):
            torn = lines.pop()
            try:
                json.loads(torn)
                lines.append(torn)  # complete, only its newline was lost
            except json.JSONDecodeError:
                self.dropped_torn_line = True
            atomic_write_text(self.path, "".join(line + "\n" for line in lines if line))
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise SweepError(f"{self.path}, line {n} is not valid JSON ({e.msg}); delete that line (its trial "
                                 "runs again) or the whole file (every trial runs again)") from None
            if isinstance(record, dict) and "key" in record:
                self.records[record["key"]] = record  # a later line for the same trial wins

    def reusable(self, key: str, timeout_s: float) -> dict | None:
        """A stored result worth keeping: ok and OOM always; a timeout only if the timeout was not shorter."""
        record = self.records.get(key)
        if record is None:
            return None
        if record["status"] in ("ok", "oom"):
            return record
        if record["status"] == "timeout" and record.get("timeout_s", 0) >= timeout_s:
            return record
        return None  # errors (and shorter timeouts) are measured again

    def append(self, record: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.records[record["key"]] = record
