"""`ngpt primer generate`: write the primer SFT dialogues (data/primer.jsonl) from a facts file.

    ngpt primer generate --facts data/public_facts.json --out data/primer.jsonl --seed 0 --n-per-category 30 --shuffle

The same arguments always give the same bytes; the shipped data/primer.jsonl is made by exactly
the command above (tests check it is not stale).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ngpt.console import console, human_bytes, kv_table
from ngpt.primer import generate, load_facts, write_primer

app = typer.Typer(no_args_is_help=True)


@app.callback()
def primer() -> None:
    """Generate the primer SFT dialogues from facts."""
    # A callback keeps `generate` a subcommand when this app runs on its own (tests, CliRunner).


@app.command("generate")
def generate_cmd(
    facts: Annotated[Path, typer.Option("--facts", help="Facts JSON file (schema in ngpt/primer.py).")] = Path("data/public_facts.json"),
    out: Annotated[Path, typer.Option("--out", help="Output chat jsonl, written atomically.")] = Path("data/primer.jsonl"),
    seed: Annotated[int, typer.Option("--seed", help="Seed for every random choice: same seed, same bytes.")] = 0,
    n_per_category: Annotated[int, typer.Option("--n-per-category", min=1, help="Dialogues per category.")] = 30,
    shuffle: Annotated[bool, typer.Option("--shuffle/--no-shuffle", help="Shuffle dialogue order (seeded); else category by category.")] = False,
) -> None:
    """Generate chat dialogues about ngpt from facts + templates (question paraphrases, lead-ins, follow-ups, system prompts)."""
    loaded = load_facts(facts)
    console.print(kv_table("primer generate", {
        "facts file": facts,
        "categories": f"{len(loaded.categories)} ({', '.join(loaded.categories)})",
        "facts": loaded.num_facts,
        "n per category": n_per_category,
        "seed": seed,
        "shuffle": shuffle,
        "out": out,
    }))
    records = generate(loaded, n_per_category=n_per_category, seed=seed, shuffle=shuffle)
    size = write_primer(records, out)
    console.print(f"[green]wrote {len(records):,} dialogues[/green] ({human_bytes(size)}) to {out}")
