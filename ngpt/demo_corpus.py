"""The demo's pretrain corpus: the primer facts rendered as a folder of markdown notes for `roam`.

`ngpt demo` pretrains on text the project wrote itself, never on text copied from elsewhere. This
module turns the same facts file the `primer` SFT source is made from (data/public_facts.json) into
markdown notes, one document per `.md` file, in the shape the `roam` source reads: headings per
category, bullet lists, "Q: / A:" study cards, short paragraphs combining the facts of one category,
and `[[wiki links]]` between topics. Pretraining on the notes teaches the knowledge that the SFT
dialogues then ask about, and a train/val split by file still sees the same facts on both sides.

Each category gets notes in proportion to its number of facts; each note is filled with sections
(facts in a seeded rotation, phrased with varied templates and question paraphrases) until it
reaches its share of `total_bytes`. The same facts, seed and sizes give the same bytes; the folder
is built beside `out_dir` and moved into place whole, so a reader never sees half a corpus.

    python -m ngpt.demo_corpus --facts data/public_facts.json --out data/.demo-notes --seed 0

    paths = write_notes("data/public_facts.json", "data/.demo-notes", seed=0, n_notes=80, total_bytes=400_000)
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from ngpt.io_utils import atomic_write_text, replace_dir, temp_dir_for
from ngpt.primer import Fact, Facts, load_facts
from ngpt.tokenizer import find_special

DEFAULT_N_NOTES = 80
DEFAULT_TOTAL_BYTES = 400_000
# Written into every generated corpus; a folder without it is someone's own notes and is never replaced.
MARKER = ".ngpt-demo-corpus"

_FIRST_PERSON = re.compile(r"\b(I|me|my)\b")
_CODE_SPAN = re.compile(r"(`[^`]*`)")

NOTE_KINDS = ("overview", "study cards", "faq", "explainer", "in brief", "notes")
# Section weights per note kind, in the order of SECTION_MAKERS below: card, heading, quote, bullets, paragraph.
KIND_WEIGHTS = {
    "overview": (1, 2, 1, 2, 3),
    "study cards": (6, 0, 1, 1, 1),
    "faq": (1, 6, 1, 0, 1),
    "explainer": (0, 1, 2, 1, 6),
    "in brief": (1, 0, 1, 6, 1),
    "notes": (2, 2, 2, 2, 2),
}


def title_of(category: str) -> str:
    """The page title of a category, the target of its `[[links]]`."""
    return category.replace("_", " ")


def _link(text: str, titles: list[str], rng: random.Random, rate: float) -> str:
    """Turn the first mention of some topic titles into `[[title]]` links, never inside `code`."""
    linked: set[str] = set()
    parts = _CODE_SPAN.split(text)
    for i in range(0, len(parts), 2):  # even parts are outside code spans
        for title in titles:
            if title in linked or rng.random() >= rate:
                continue
            pattern = re.compile(rf"(?<![\w\[/.-]){re.escape(title)}(?![\w\]/-]|\.\w)")
            parts[i], hits = pattern.subn(f"[[{title}]]", parts[i], count=1)
            if hits:
                linked.add(title)
    return "".join(parts)


class _Writer:
    """Renders the notes of one category; all randomness comes from the note's own RNG."""

    def __init__(self, facts: Facts, category: str, rng: random.Random):
        self.name = facts.assistant_name
        self.category = category
        self.title = title_of(category)
        self.facts = facts.categories[category]
        self.others = [title_of(c) for c in facts.categories if c != category]
        self.rng = rng
        self.order: list[int] = []

    def next_facts(self, n: int) -> list[Fact]:
        """The next `n` facts of a seeded rotation, so every fact is used about equally often."""
        out = []
        for _ in range(n):
            if not self.order:
                self.order = list(range(len(self.facts)))
                self.rng.shuffle(self.order)
            out.append(self.facts[self.order.pop()])
        return out

    def question(self, fact: Fact) -> str:
        return self.rng.choice(fact.questions)

    def prose(self, answer: str) -> str:
        """An answer as note text: first-person answers are quoted as the assistant's own words."""
        if _FIRST_PERSON.search(answer):
            return self.rng.choice((
                f'{self.name} puts it this way: "{answer}"',
                f'In its own words, {self.name} says: "{answer}"',
                f'As {self.name} would tell you: "{answer}"',
            ))
        return _link(answer, [self.title, *self.others], self.rng, 0.5)

    # ---- sections: each returns one markdown block about one or a few facts

    def card(self) -> str:
        fact = self.next_facts(1)[0]
        lines = [f"Q: {self.question(fact)}", f"A: {fact.answer}"]
        for turn in fact.follow_ups:
            if self.rng.random() < 0.6:
                lines += ["", f"Q: {self.rng.choice(turn.questions)}", f"A: {turn.answer}"]
        return "\n".join(lines)

    def heading(self) -> str:
        fact = self.next_facts(1)[0]
        block = f"## {self.question(fact)}\n\n{self.prose(fact.answer)}"
        if fact.follow_ups:
            turn = self.rng.choice(fact.follow_ups)
            lead = self.rng.choice(("A natural next question is", "People then often ask", "Next comes"))
            block += f'\n\n{lead} "{self.rng.choice(turn.questions)}" {self.prose(turn.answer)}'
        return block

    def quote(self) -> str:
        fact = self.next_facts(1)[0]
        q = self.question(fact)
        block = self.rng.choice((
            f'When someone asks "{q}", {self.name} answers: {fact.answer}',
            f'Asked "{q}", {self.name} replies: {fact.answer}',
            f"> {q}\n\n{fact.answer}",
        ))
        if fact.follow_ups and self.rng.random() < 0.5:
            turn = self.rng.choice(fact.follow_ups)
            block += f'\n\nAnd to the follow-up "{self.rng.choice(turn.questions)}" the answer is: {turn.answer}'
        return block

    def bullets(self) -> str:
        n = min(len(self.facts), self.rng.randint(2, 4))
        intro = self.rng.choice((
            f"Key points about [[{self.title}]]:",
            f"Quick facts on {self.title}:",
            f"Worth remembering about [[{self.title}]]:",
            "In short:",
        ))
        items = []
        for fact in self.next_facts(n):
            items.append(f"- **{self.question(fact)}** {fact.answer}")
            if fact.follow_ups and self.rng.random() < 0.5:
                turn = self.rng.choice(fact.follow_ups)
                items.append(f"  - **{self.rng.choice(turn.questions)}** {turn.answer}")
        return "\n".join([intro, "", *items])

    def paragraph(self) -> str:
        n = min(len(self.facts), self.rng.randint(2, 3))
        opener = self.rng.choice((
            f"A few things to know about [[{self.title}]].",
            f"More on {self.title}.",
            f"This part of the notes is about {self.title}.",
            f"Some background on [[{self.title}]].",
        ))
        # Each answer follows its question asked aloud: many answers ("In two phases.") need it to make sense.
        return " ".join([opener, *(f"{self.question(f)} {self.prose(f.answer)}" for f in self.next_facts(n))])

    SECTION_MAKERS: tuple[Callable[[_Writer], str], ...] = (card, heading, quote, bullets, paragraph)

    def note(self, index: int, budget: int) -> str:
        """Note `index` of this category: a heading, sections up to about `budget` bytes, then links."""
        kind = NOTE_KINDS[index % len(NOTE_KINDS)]
        # The first note's heading is exactly the title that `[[title]]` links point at, as in roam.
        head = f"# {self.title}" if index == 0 else f"# {self.title}: {kind}"
        tags = f"Tags: #ngpt #{self.category}"
        related = ", ".join(f"[[{t}]]" for t in self.rng.sample(self.others, min(3, len(self.others))))
        footer = f"Related notes: {related}" if related else ""
        blocks = [head, tags]
        size = sum(len(b.encode("utf-8")) + 2 for b in (*blocks, footer))
        weights = KIND_WEIGHTS[kind]
        while True:
            block = self.rng.choices(self.SECTION_MAKERS, weights)[0](self)
            cost = len(block.encode("utf-8")) + 2
            # Stop at the block that would overshoot by more than half its size: totals land near budget.
            if len(blocks) > 2 and size + cost / 2 > budget:
                break
            blocks.append(block)
            size += cost
        if footer:
            blocks.append(footer)
        return "\n\n".join(blocks) + "\n"


def _notes_per_category(facts: Facts, n_notes: int) -> dict[str, int]:
    """Split `n_notes` over categories by their number of facts (largest remainder, at least one each)."""
    cats = list(facts.categories)
    if n_notes < len(cats):
        raise ValueError(f"n_notes={n_notes} is fewer than the {len(cats)} categories in the facts file; ask for at least {len(cats)} notes.")
    spare = n_notes - len(cats)
    total = facts.num_facts
    shares = {c: spare * len(facts.categories[c]) / total for c in cats}
    counts = {c: 1 + int(shares[c]) for c in cats}
    by_remainder = sorted(cats, key=lambda c: (-(shares[c] - int(shares[c])), cats.index(c)))
    for c in by_remainder[: n_notes - sum(counts.values())]:
        counts[c] += 1
    return counts


def render_notes(facts: Facts, *, seed: int = 0, n_notes: int = DEFAULT_N_NOTES, total_bytes: int = DEFAULT_TOTAL_BYTES) -> dict[str, str]:
    """{file name: markdown text} for the whole corpus, in a stable order (nothing is written)."""
    if total_bytes < 1:
        raise ValueError(f"total_bytes must be positive, got {total_bytes}")
    counts = _notes_per_category(facts, n_notes)
    budget = total_bytes // n_notes
    notes: dict[str, str] = {}
    for category, count in counts.items():
        slug = re.sub(r"[^a-z0-9]+", "-", category.lower()).strip("-") or "category"
        for index in range(count):
            # One RNG per note: a note's text depends only on the facts, the seed, its place and the budget.
            writer = _Writer(facts, category, random.Random(f"{seed}:{category}:{index}"))
            text = writer.note(index, budget)
            hit = find_special(text)
            if hit:  # the facts are checked on load; this guards the templates themselves
                raise ValueError(f"demo note {slug}-{index:02d}.md contains the special token {hit[0]!r} at offset {hit[1]}")
            notes[f"{slug}-{index:02d}.md"] = text
    return notes


def write_notes(
    facts_path: str | Path,
    out_dir: str | Path,
    *,
    seed: int = 0,
    n_notes: int = DEFAULT_N_NOTES,
    total_bytes: int = DEFAULT_TOTAL_BYTES,
) -> list[Path]:
    """Render the facts file into `n_notes` markdown notes of about `total_bytes` in all under `out_dir`.

    The folder is built next to `out_dir` and swapped in whole, replacing an earlier generated corpus
    (recognised by its marker file); a non-empty folder without the marker is refused, not deleted.
    Returns the note paths, sorted.
    """
    facts = load_facts(facts_path)
    notes = render_notes(facts, seed=seed, n_notes=n_notes, total_bytes=total_bytes)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).is_file())):
        raise FileExistsError(
            f"{out} exists and is not a generated demo corpus (no {MARKER} file in it); "
            "pass an empty or new folder as the output, or delete this one if it is yours to delete."
        )
    tmp = temp_dir_for(out)
    try:
        for name, text in notes.items():
            atomic_write_text(tmp / name, text)
        atomic_write_text(tmp / MARKER, f"made by ngpt.demo_corpus from {facts_path} with seed={seed} n_notes={n_notes} total_bytes={total_bytes}\n")
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return sorted(out / name for name in notes)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ngpt.demo_corpus", description=__doc__.split("\n\n")[0])
    parser.add_argument("--facts", default="data/public_facts.json", help="facts file (the primer's schema)")
    parser.add_argument("--out", required=True, help="folder to write the notes into (replaced whole)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-notes", type=int, default=DEFAULT_N_NOTES)
    parser.add_argument("--total-bytes", type=int, default=DEFAULT_TOTAL_BYTES)
    args = parser.parse_args(argv)
    paths = write_notes(args.facts, args.out, seed=args.seed, n_notes=args.n_notes, total_bytes=args.total_bytes)
    size = sum(p.stat().st_size for p in paths)
    print(f"wrote {len(paths)} notes, {size:,} bytes, to {args.out}")


if __name__ == "__main__":
    main()
