"""Options and steps every command shares: --config, --source NAME=PATH, --print-config.

    settings = resolve_settings(config, sources, overrides, print_config)
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from pydantic import BaseModel

from ngpt.console import console
from ngpt.settings import WEIGHT_FORMATS, Settings, WeightFormat, deep_merge, load_settings, parse_source_flags, prune_none, settings_json

ConfigOpt = Annotated[
    Optional[Path], typer.Option("--config", "-c", help="JSON override file shaped like Settings (see configs/).")
]
SourceOpt = Annotated[
    Optional[list[str]],
    typer.Option("--source", help="NAME=PATH: read source NAME from a local file/dir in the hub's schema. Repeatable."),
]
CHECKPOINT_HELP = "Checkpoint file, or a folder holding best.pt / latest.pt."
CkptOpt = Annotated[Path, typer.Option("--ckpt", help=CHECKPOINT_HELP)]
PrintConfigOpt = Annotated[bool, typer.Option("--print-config", help="Print the resolved settings as JSON and exit.")]


def setting_help(dotted: str, label: str | None = None) -> str:
    """The description of the settings field at `dotted` (e.g. "pretrain.max_time"), as a flag's --help.

    Flags that set a settings field take their help from here, so the fact is written once (settings.py);
    `label` names the field in the help when it is not `dotted` (a flag shared by both phases).
    """
    model: type[BaseModel] = Settings
    *sections, name = dotted.split(".")
    for section in sections:
        model = model.model_fields[section].annotation
    return f"{model.model_fields[name].description} (setting {label or dotted})"


# Typer takes a list of choices only as an Enum; the values come from the one table in settings.
WeightFormatEnum = Enum("WeightFormatEnum", {name: name for name in WEIGHT_FORMATS}, type=str)
WeightsOpt = Annotated[
    WeightFormat, typer.Option("--precision", help="Weights: auto (what decodes fastest here) | fp32 | bf16 | fp16 | int8.")
]
ThreadsOpt = Annotated[Optional[int], typer.Option(min=1, help="CPU threads for torch (default: torch's choice).")]


def resolve_settings(
    config: Path | None,
    sources: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
    print_config: bool = False,
    base: tuple[str, dict[str, Any]] | None = None,
) -> Settings:
    """defaults < base (e.g. a checkpoint's) < --config < NGPT_* env < flags; --print-config prints it and exits 0."""
    flags = deep_merge(parse_source_flags(sources), prune_none(overrides or {}))
    settings = load_settings(config, overrides=flags, base=base)
    if print_config:
        console.print_json(settings_json(settings))
        raise typer.Exit(0)
    return settings
