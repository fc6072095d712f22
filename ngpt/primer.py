"""The primer: short chat dialogues about ngpt itself, generated from a facts file with templates.

The primer is the `primer` SFT source: it teaches the model who it is, what ngpt does, and that it
is small and can be wrong. Generation is deterministic for a seed, so the shipped
`data/primer.jsonl` is exactly what this command makes from the shipped `data/public_facts.json`:

    ngpt primer generate --facts data/public_facts.json --out data/primer.jsonl --seed 0 --n-per-category 30 --shuffle

    facts = load_facts("data/public_facts.json")
    records = generate(facts, n_per_category=30, seed=0, shuffle=True)
    write_primer(records, "data/primer.jsonl")

Facts file schema (version 1), a JSON object:

    {
      "version": 1,
      "assistant_name": "ngpt",                  # replaces "{assistant_name}" in any text below
      "system_prompts": ["You are {assistant_name} ..."],   # optional; some dialogues get one
      "answer_leads": ["", "Sure. "],            # optional; prefixed to the first answer ("" = none)
      "categories": {
        "<category>": [                          # non-empty list of facts
          {
            "question": ["paraphrase 1", "paraphrase 2"],   # non-empty list of strings
            "answer": "the answer",
            "lead": false,                      # optional: no answer lead-in (e.g. answers starting "No.")
            "follow_up": [                      # optional: a second user turn and its answer
              {"question": ["..."], "answer": "..."}
            ]
          }
        ]
      }
    }

Every text must be non-empty and must not contain a special-token string such as <|eot|>
(those are reserved for the chat template). Each output line is
`{"messages": [...], "category": "<category>"}` and passes `chat_format.validate_messages`.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from ngpt.chat_format import validate_messages
from ngpt.io_utils import atomic_write_text, read_json_file
from ngpt.tokenizer import find_special

FACTS_VERSION = 1
NAME_SLOT = "{assistant_name}"
# Shares of dialogues that get each variation; fixed so the same facts and seed give the same file.
SYSTEM_RATE = 0.3
FOLLOW_UP_RATE = 0.5
CASUAL_RATE = 0.15  # user typed in lower case without the question mark: people do
DISTINCT_TRIES = 25  # draws per dialogue to avoid repeating an earlier dialogue of the category

TOP_KEYS = {"version", "assistant_name", "system_prompts", "answer_leads", "categories"}
FACT_KEYS = {"question", "answer", "follow_up", "lead"}
TURN_KEYS = {"question", "answer"}


class FactsError(ValueError):
    """The facts file breaks the schema; the message names the file, the key and the fix."""


@dataclass(frozen=True)
class Turn:
    questions: tuple[str, ...]
    answer: str


@dataclass(frozen=True)
class Fact:
    questions: tuple[str, ...]
    answer: str
    follow_ups: tuple[Turn, ...] = ()
    lead: bool = True


@dataclass(frozen=True)
class Facts:
    assistant_name: str
    system_prompts: tuple[str, ...]
    answer_leads: tuple[str, ...]
    categories: dict[str, tuple[Fact, ...]]

    @property
    def num_facts(self) -> int:
        return sum(len(facts) for facts in self.categories.values())


class _Reader:
    """Schema checks that all report `file: key path: problem. fix`."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, where: str, problem: str) -> FactsError:
        return FactsError(f"Facts file {self.path}: {where}: {problem}")

    def keys(self, obj: object, where: str, allowed: set[str], required: set[str]) -> dict:
        if not isinstance(obj, dict):
            raise self.fail(where, f"must be a JSON object, got {type(obj).__name__}")
        missing = sorted(required - set(obj))
        if missing:
            raise self.fail(where, f"missing key {', '.join(repr(k) for k in missing)} (keys: {', '.join(sorted(allowed))})")
        extra = sorted(set(obj) - allowed)
        if extra:
            raise self.fail(where, f"unknown key {', '.join(repr(k) for k in extra)}; valid keys: {', '.join(sorted(allowed))}")
        return obj

    def text(self, value: object, where: str, name: str, allow_empty: bool = False) -> str:
        if not isinstance(value, str):
            raise self.fail(where, f"must be a string, got {type(value).__name__}")
        if not allow_empty and not value.strip():
            raise self.fail(where, "is empty; write the text or remove the entry")
        value = value.replace(NAME_SLOT, name)
        hit = find_special(value)
        if hit:
            raise self.fail(where, f"contains the special token {hit[0]!r}; special tokens are reserved for the chat template, spell it differently")
        return value

    def texts(self, value: object, where: str, name: str, allow_empty: bool = False) -> tuple[str, ...]:
        if not isinstance(value, list) or not value:
            raise self.fail(where, f"must be a non-empty list of strings, got {json.dumps(value)[:60]}")
        return tuple(self.text(v, f"{where}[{i}]", name, allow_empty) for i, v in enumerate(value))

    def turn(self, obj: object, where: str, name: str) -> Turn:
        obj = self.keys(obj, where, TURN_KEYS, TURN_KEYS)
        return Turn(self.texts(obj["question"], f"{where}.question", name), self.text(obj["answer"], f"{where}.answer", name))

    def fact(self, obj: object, where: str, name: str) -> Fact:
        obj = self.keys(obj, where, FACT_KEYS, TURN_KEYS)
        turn = self.turn({k: obj[k] for k in TURN_KEYS}, where, name)
        follow = obj.get("follow_up", [])
        if not isinstance(follow, list):
            raise self.fail(f"{where}.follow_up", f"must be a list of {{question, answer}} objects, got {type(follow).__name__}")
        follow_ups = tuple(self.turn(t, f"{where}.follow_up[{i}]", name) for i, t in enumerate(follow))
        lead = obj.get("lead", True)
        if not isinstance(lead, bool):
            raise self.fail(f"{where}.lead", f"must be true or false, got {json.dumps(lead)}")
        return Fact(turn.questions, turn.answer, follow_ups, lead)


def load_facts(path: str | Path) -> Facts:
    """Read and check a facts file; a FactsError (or FileNotFoundError) names the file and key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Facts file {path} does not exist. Pass --facts with a JSON facts file (the shipped one is data/public_facts.json).")
    data = read_json_file(path, "Facts file", "", FactsError)

    r = _Reader(path)
    data = r.keys(data, "top level", TOP_KEYS, {"version", "assistant_name", "categories"})
    if data["version"] != FACTS_VERSION:
        raise r.fail("version", f"is {data['version']!r}; this ngpt reads version {FACTS_VERSION}")
    name = r.text(data["assistant_name"], "assistant_name", NAME_SLOT)
    systems = r.texts(data["system_prompts"], "system_prompts", name) if "system_prompts" in data else ()
    leads = r.texts(data["answer_leads"], "answer_leads", name, allow_empty=True) if "answer_leads" in data else ("",)

    cats = data["categories"]
    if not isinstance(cats, dict) or not cats:
        raise r.fail("categories", 'must be a non-empty object {"<category>": [facts...]}')
    categories: dict[str, tuple[Fact, ...]] = {}
    for cat, facts in cats.items():
        where = f"categories.{cat}"
        if not cat.strip():
            raise r.fail(where, "category names must be non-empty")
        if not isinstance(facts, list):
            raise r.fail(where, f"must be a list of facts, got {type(facts).__name__}")
        if not facts:
            raise r.fail(where, "is empty; add at least one fact or remove the category")
        categories[cat] = tuple(r.fact(f, f"{where}[{i}]", name) for i, f in enumerate(facts))
    return Facts(name, systems, leads, categories)


def _casual(question: str) -> str:
    return question.rstrip("?").lower()


def _dialogue(rng: random.Random, facts: Facts, fact: Fact) -> list[dict]:
    messages: list[dict] = []
    if facts.system_prompts and rng.random() < SYSTEM_RATE:
        messages.append({"role": "system", "content": rng.choice(facts.system_prompts)})
    question = rng.choice(fact.questions)
    if rng.random() < CASUAL_RATE:
        question = _casual(question)
    messages.append({"role": "user", "content": question})
    lead = rng.choice(facts.answer_leads) if fact.lead else ""
    messages.append({"role": "assistant", "content": lead + fact.answer})
    if fact.follow_ups and rng.random() < FOLLOW_UP_RATE:
        turn = rng.choice(fact.follow_ups)
        messages.append({"role": "user", "content": rng.choice(turn.questions)})
        messages.append({"role": "assistant", "content": turn.answer})
    return messages


def generate(facts: Facts, n_per_category: int, seed: int, shuffle: bool = False) -> list[dict]:
    """`n_per_category` dialogues per category as {"messages", "category"} records.

    Facts are used round-robin in a seeded order (each is used about equally often); templates
    vary the phrasing, and a dialogue that repeats an earlier one of its category is redrawn.
    Each category has its own RNG (seeded by seed and name), so editing one category leaves the
    others' dialogues unchanged. Without `shuffle` the records come category by category.
    """
    if n_per_category < 1:
        raise ValueError(f"--n-per-category must be at least 1, got {n_per_category}")
    records: list[dict] = []
    for cat, cat_facts in facts.categories.items():
        rng = random.Random(f"{seed}:{cat}")
        order = list(range(len(cat_facts)))
        seen: set[str] = set()
        for i in range(n_per_category):
            if i % len(order) == 0:
                rng.shuffle(order)
            fact = cat_facts[order[i % len(order)]]
            for _ in range(DISTINCT_TRIES):
                messages = _dialogue(rng, facts, fact)
                key = json.dumps(messages)
                if key not in seen:
                    break
            seen.add(key)
            records.append({"messages": messages, "category": cat})
    if shuffle:
        random.Random(seed).shuffle(records)
    return records


def to_jsonl(records: list[dict], where: str = "primer") -> str:
    """One JSON object per line; every line is checked with the chat-format rules first."""
    lines = []
    for lineno, record in enumerate(records, start=1):
        line = json.dumps(record, ensure_ascii=False)
        validate_messages(json.loads(line), f"{where}:{lineno}")
        lines.append(line + "\n")
    return "".join(lines)


def write_primer(records: list[dict], out: str | Path) -> int:
    """Validate and write the records to `out` atomically; returns the number of bytes written."""
    text = to_jsonl(records, str(out))
    atomic_write_text(out, text)
    return len(text.encode("utf-8"))
