"""What each config measured (ConfigOutcome: fit envelope, timings, AMP check) and the 90 % rule that ranks them.

    ranked = rank(outcomes)        # ranked[0] is the overnight pick; configs with no timing are left out
    ranked[0].best.tokens_per_s, ranked[0].share, ranked[0].contender

The 90 % rule: take each config's best tokens/s; among the configs within 90 % of the fastest, the
one with the most parameters wins (a bigger model that trains nearly as fast learns more per night);
the rest follow by tokens/s.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ngpt.bench.sweep.grid import GridEntry

KEEP_FRACTION = 0.9  # the 90 % rule


@dataclass(frozen=True)
class Fit:
    """The fit envelope: the largest micro_B that ran, and what stopped the search."""

    max_b: int  # 0: not even the first micro-batch ran
    limit: str  # cap | memory | time | error
    detail: str


@dataclass(frozen=True)
class Timing:
    micro_b: int
    checkpointing: bool
    status: str
    tokens_per_s: float | None
    step_ms: float | None
    error: str | None

    @classmethod
    def of(cls, record: dict) -> "Timing":
        return cls(record["micro_b"], record["spec"]["activation_checkpointing"], record["status"],
                   record.get("tokens_per_s"), record.get("step_ms"), record.get("error"))


@dataclass
class ConfigOutcome:
    entry: GridEntry
    params: int
    fit: Fit
    precision: str | None = None  # as resolved in the trial: "fp32", "bf16 autocast" ...
    amp_low_precision: bool | None = None  # all Linear outputs in the autocast dtype (None: AMP off)
    dtypes: dict | None = None
    fit_ckpt: Fit | None = None  # the same search with activation checkpointing (only where memory limited)
    timings: list[Timing] = field(default_factory=list)

    @property
    def best(self) -> Timing | None:
        ok = [t for t in self.timings if t.status == "ok" and t.tokens_per_s]
        return max(ok, key=lambda t: t.tokens_per_s) if ok else None

    @property
    def failure(self) -> str | None:
        if self.best is not None:
            return None
        if self.fit.max_b == 0 and (self.fit_ckpt is None or self.fit_ckpt.max_b == 0):
            return f"micro_B=1 did not run: {self.fit.detail}"
        failed = "; ".join(f"micro_B={t.micro_b}: {t.status}" for t in self.timings)
        return f"no timing trial finished ({failed})"


@dataclass(frozen=True)
class Ranked:
    outcome: ConfigOutcome
    best: Timing
    share: float  # of the fastest config's tokens/s
    contender: bool  # within KEEP_FRACTION of the fastest


def rank(outcomes: list[ConfigOutcome], keep: float = KEEP_FRACTION) -> list[Ranked]:
    """The 90 % rule: configs within `keep` of the best tokens/s first, most parameters first; then by tokens/s.

    Among contenders of the same size, the longer context wins (as fast, and it sees more per
    example: SFT conversations are cut to seq_len), then the faster.
    """
    timed = [(o, o.best) for o in outcomes if o.best is not None]
    if not timed:
        return []
    top = max(b.tokens_per_s for _, b in timed)
    # The tolerance: a config at exactly 90 % must not drop out to float rounding.
    rows = [Ranked(o, b, b.tokens_per_s / top, b.tokens_per_s >= keep * top * (1 - 1e-12)) for o, b in timed]
    return sorted(rows, key=lambda r: (not r.contender, -r.outcome.params if r.contender else 0,
                                       -r.outcome.entry.seq_len if r.contender else 0, -r.best.tokens_per_s))
