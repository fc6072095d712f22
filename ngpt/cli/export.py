"""`ngpt export hf`: a checkpoint → a transformers folder (LlamaForCausalLM + tokenizer + chat template).

    ngpt export hf --ckpt checkpoints/best.pt --out exports/ngpt-small
    ngpt export hf --ckpt checkpoints/sft/ --out exports/ngpt-small --force --dtype bfloat16
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ngpt.cli.common import CkptOpt
from ngpt.console import console, human_bytes, kv_table, table

app = typer.Typer(no_args_is_help=True)


@app.command()
def hf(
    ckpt: CkptOpt,
    out: Annotated[Path, typer.Option("--out", help="Folder to write (must be new or empty unless --force).")],
    force: Annotated[bool, typer.Option("--force", help="Replace a non-empty --out folder.")] = False,
    dtype: Annotated[str, typer.Option(help="Weight dtype in model.safetensors: float32, bfloat16 or float16.")] = "float32",
) -> None:
    """Write a folder that AutoModelForCausalLM / AutoTokenizer open with no ngpt code."""
    from ngpt.export.hf import export_hf

    console.print(kv_table("export hf", {"checkpoint": ckpt, "out": out, "dtype": dtype, "replace existing": force}))
    with console.status("exporting"):
        result = export_hf(ckpt, out, force=force, dtype=dtype)
    console.print(table(f"{result.out} (from {result.checkpoint}, {result.num_params:,} parameters)", ("file", "size"),
                        [(name, human_bytes(size)) for name, size in result.files.items()]))
    console.print(f"Load it with transformers: AutoModelForCausalLM.from_pretrained({str(result.out)!r})", soft_wrap=True)
