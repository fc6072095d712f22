"""`ngpt export hf|gguf`: a checkpoint → a transformers folder, or one GGUF file for llama.cpp / ollama / LM Studio.

    ngpt export hf --ckpt checkpoints/best.pt --out exports/ngpt-small
    ngpt export hf --ckpt checkpoints/sft/ --out exports/ngpt-small --force --dtype bfloat16
    ngpt export gguf --ckpt checkpoints/best.pt --out exports/ngpt.gguf --dtype q8_0 --ollama
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


@app.command()
def gguf(
    ckpt: CkptOpt,
    out: Annotated[Path, typer.Option("--out", help="The .gguf file to write (must not exist unless --force).")],
    dtype: Annotated[str, typer.Option(help="Matrix weights: f32, f16, bf16 or q8_0 (8-bit blocks; norms stay f32).")] = "f32",
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --out (and its .Modelfile).")] = False,
    ollama: Annotated[bool, typer.Option("--ollama", help="Also write an ollama Modelfile beside it (FILE.Modelfile).")] = False,
) -> None:
    """Write one GGUF file llama.cpp runs as ngpt does: same tokens, logits, chat template and stop token."""
    from ngpt.export.gguf import export_gguf

    console.print(kv_table("export gguf", {"checkpoint": ckpt, "out": out, "dtype": dtype, "ollama Modelfile": ollama,
                                           "replace existing": force}))
    with console.status("exporting"):
        result = export_gguf(ckpt, out, dtype=dtype, force=force, ollama=ollama)
    console.print(table(f"{result.out} ({result.architecture}, {result.dtype}; from {result.checkpoint}, "
                        f"{result.num_params:,} parameters)", ("file", "size"),
                        [(name, human_bytes(size)) for name, size in result.files.items()]))
    console.print(f"Run it with llama.cpp: llama-cli -m {result.out}  (or Llama({str(result.out)!r}) in llama-cpp-python)",
                  soft_wrap=True)
    if result.modelfile is not None:
        console.print(f"ollama: ollama create {result.out.stem} -f {result.modelfile}", soft_wrap=True)
