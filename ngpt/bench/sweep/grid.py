"""The sweep's grid: which configs to measure, from a JSON file (`--grid`) or the device-aware default.

    entries = load_grid(Path("my_grid.json"), vocab_size=16384)   # every problem names file, entry and key
    name, entries = default_grid(device_info, vocab_size=16384)   # what `ngpt bench sweep` runs without --grid

A grid file is a non-empty JSON list of configs, e.g.
`[{"seq_len": 256, "n_embd": 384, "n_layer": 6, "n_head": 6, "amp": "true"}]`: the keys are GRID_KEYS
(seq_len, n_embd, n_layer, n_head required); vocab_size defaults to the settings' model.vocab_size.
SweepError, the sweep's one error type (bad grid, results file or setting), lives here too.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from ngpt.io_utils import read_json_file
from ngpt.settings import AMP_CHOICES, AMP_DTYPE_CHOICES, ModelSettings

if TYPE_CHECKING:
    from ngpt.bench.sweep.runner import DeviceInfo

GRID_KEYS = ("seq_len", "n_embd", "n_layer", "n_head", "vocab_size", "d_ff", "amp", "amp_dtype")
REQUIRED_KEYS = ("seq_len", "n_embd", "n_layer", "n_head")
# Names people reach for first (the summary's column heads); a hint, not an alias.
SHORT_NAMES = {"T": "seq_len", "C": "n_embd", "L": "n_layer", "H": "n_head", "V": "vocab_size"}


class SweepError(ValueError):
    """A bad grid, results file or sweep setting; the message names the file/entry/key and the fix."""


@dataclass(frozen=True)
class GridEntry:
    """One config to measure: the model shape and the autocast setting (micro_B and checkpointing are searched)."""

    seq_len: int
    n_embd: int
    n_layer: int
    n_head: int
    vocab_size: int
    amp: str = "auto"  # auto | true | false, as pretrain.amp
    amp_dtype: str = "auto"  # auto | bf16 | fp16, as pretrain.amp_dtype
    d_ff: int | None = None

    def model_dict(self) -> dict:
        out = {"vocab_size": self.vocab_size, "seq_len": self.seq_len, "n_embd": self.n_embd,
               "n_layer": self.n_layer, "n_head": self.n_head}
        return out if self.d_ff is None else {**out, "d_ff": self.d_ff}

    def model(self) -> ModelSettings:
        return ModelSettings(**self.model_dict())

    @property
    def label(self) -> str:
        """'V=512 T=32 C=32 L=1 H=2 d_ff=128 amp=true': the model's dims_label, then the autocast setting."""
        amp = f"amp={self.amp}" + ("" if self.amp_dtype == "auto" else f"/{self.amp_dtype}")
        return f"{self.model().dims_label} {amp}"


def parse_grid(data: object, origin: str, vocab_size: int) -> list[GridEntry]:
    """A JSON list of configs → entries; every problem names the file, the entry and the key."""
    example = '[{"seq_len": 256, "n_embd": 384, "n_layer": 6, "n_head": 6, "amp": "true"}]'
    if not isinstance(data, list) or not data:
        raise SweepError(f"{origin}: a grid is a non-empty JSON list of configs, e.g. {example}")
    entries: list[GridEntry] = []
    for i, item in enumerate(data, 1):
        where = f"{origin}, entry {i}"
        if not isinstance(item, dict):
            raise SweepError(f"{where}: each config is a JSON object like {example[1:-1]}, got {json.dumps(item)}")
        unknown = [k for k in item if k not in GRID_KEYS]
        if unknown:
            hints = []
            for key in unknown:
                close = SHORT_NAMES.get(key) or next(iter(difflib.get_close_matches(key, GRID_KEYS, n=1)), None)
                hints.append(f"'{key}'" + (f" (did you mean '{close}'?)" if close else ""))
            raise SweepError(f"{where}: unknown key(s) {', '.join(hints)}. Valid keys: {', '.join(GRID_KEYS)}")
        missing = [k for k in REQUIRED_KEYS if k not in item]
        if missing:
            raise SweepError(f"{where}: missing {', '.join(repr(k) for k in missing)}; every config needs "
                             f"{', '.join(REQUIRED_KEYS)}")
        amp = item.get("amp", "auto")
        amp = {True: "true", False: "false"}.get(amp, amp) if isinstance(amp, bool) else amp
        if amp not in AMP_CHOICES:
            raise SweepError(f"{where}: amp={json.dumps(item['amp'])}; use one of {', '.join(AMP_CHOICES)} (or true/false)")
        amp_dtype = item.get("amp_dtype", "auto")
        if amp_dtype not in AMP_DTYPE_CHOICES:
            raise SweepError(f"{where}: amp_dtype={json.dumps(amp_dtype)}; use one of {', '.join(AMP_DTYPE_CHOICES)}")
        dims = {k: item[k] for k in ("seq_len", "n_embd", "n_layer", "n_head", "vocab_size", "d_ff") if k in item}
        bad = {k: v for k, v in dims.items() if not (isinstance(v, int) and not isinstance(v, bool)) and v is not None}
        if bad:
            raise SweepError(f"{where}: {', '.join(f'{k}={json.dumps(v)}' for k, v in bad.items())} must be whole numbers")
        entry = GridEntry(vocab_size=dims.pop("vocab_size", vocab_size), amp=amp, amp_dtype=amp_dtype, **dims)
        try:
            entry.model()
        except ValidationError as e:
            msgs = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'config'}: {err['msg'].removeprefix('Value error, ')}"
                             for err in e.errors())
            raise SweepError(f"{where}: {msgs}") from None
        if entry in entries:
            raise SweepError(f"{where} repeats entry {entries.index(entry) + 1} ({entry.label}); remove one")
        entries.append(entry)
    return entries


def load_grid(path: Path, vocab_size: int) -> list[GridEntry]:
    data = read_json_file(path, "grid file", "Pass a JSON list of configs to --grid.", SweepError)
    return parse_grid(data, f"grid file {path}", vocab_size)


# (n_embd, n_layer, n_head) per device class; see README "ngpt bench sweep" for why these.
CPU_SIZES = ((128, 4, 4), (256, 6, 8))
MPS_SIZES = ((384, 6, 6), (512, 8, 8))
CUDA_SIZES_SMALL = ((384, 6, 6), (512, 8, 8))  # < 10 GiB
CUDA_SIZES_MID = ((512, 8, 8), (768, 12, 12))  # 10–16 GiB
CUDA_SIZES_LARGE = ((512, 8, 8), (768, 12, 12), (1024, 16, 16))  # >= 16 GiB


def default_grid(info: DeviceInfo, vocab_size: int) -> tuple[str, list[GridEntry]]:
    """The device-aware default grid and a one-line description of why it is this one."""
    if info.type == "cuda":
        gib = info.total_gib
        if gib < 10:
            name, seq_lens, sizes = f"CUDA < 10 GiB ({gib:.0f} GiB)", (256, 512), CUDA_SIZES_SMALL
        elif gib < 16:
            name, seq_lens, sizes = f"CUDA 10–16 GiB ({gib:.0f} GiB)", (256, 512), CUDA_SIZES_MID
        else:
            name, seq_lens, sizes = f"CUDA >= 16 GiB ({gib:.0f} GiB)", (512, 1024), CUDA_SIZES_LARGE
        amps = ("true",)
    elif info.type == "mps":
        name, seq_lens, sizes, amps = "MPS (AMP off)", (256, 512), MPS_SIZES, ("false",)
    else:
        bf16 = bool(info.raw.get("bf16"))
        name = "CPU (bf16 on/off: native bf16 here)" if bf16 else "CPU (fp32 only: no native bf16 here)"
        seq_lens, sizes, amps = (128, 256), CPU_SIZES, ("false", "true") if bf16 else ("false",)
    grid = [GridEntry(seq_len=t, n_embd=c, n_layer=l, n_head=h, vocab_size=vocab_size, amp=amp)
            for (c, l, h) in sizes for t in seq_lens for amp in amps]
    return f"default grid for {name}", grid
