"""Task data as splits of questions: a local copy (a file or a folder in the dataset's own format) or the hub.

    splits = load_splits(task, "../shared/data/eval/piqa", shots=0)   # {"validation": Split}
    splits = load_splits(task, None, shots=5)                          # datasets.load_dataset(task.hub)

A folder's files are assigned to splits by name (train / dev|val|valid|validation / test, as the
releases name them: ARC-Easy-Dev.jsonl, dev_rand_split.jsonl, lambada_test.jsonl); a single file
whose name says none is the split the task scores. Every row of the splits a run needs is checked
when it loads, before the model sees anything: a bad row is a TaskDataError naming file, line and field.
"""

from __future__ import annotations

import bisect
import json
import re
from dataclasses import dataclass
from pathlib import Path

from ngpt.eval.tasks.base import Question, Row, Task, TaskDataError
from ngpt.tokenizer import UnencodableText, check_encodable

SPLIT_WORDS = {"train": "train", "dev": "validation", "val": "validation", "valid": "validation",
               "validation": "validation", "test": "test", "tests": "test"}
POOL_ORDER = ("train", "validation", "test")  # lm-eval's few-shot pool: the first split the task has


@dataclass
class Split:
    """One split: docs in the hub's schema (file order), their questions, and where each row came from."""

    name: str
    docs: list[dict]
    questions: list[Question]
    where: list[str]
    origin: str


def split_of(path: Path) -> str | None:
    """The split a file's name says (train / validation / test), or None when it says none or several."""
    found = {SPLIT_WORDS[w] for w in re.split(r"[^a-z]+", path.name.lower()) if w in SPLIT_WORDS}
    return found.pop() if len(found) == 1 else None


def needed_splits(task: Task, available: list[str], shots: int) -> list[str]:
    """The split scored, plus the few-shot pool when shots > 0 (train, else validation, else test — as lm-eval)."""
    needed = [task.eval_split]
    if shots > 0:
        pool = next(s for s in POOL_ORDER if s in available)
        if pool not in needed:
            needed.append(pool)
    return needed


def load_splits(task: Task, path: str | Path | None, shots: int = 0) -> dict[str, Split]:
    """The splits of `task` a run with `shots` needs, from the local copy at `path` (None: the hub)."""
    raw, origins = _from_hub(task, shots) if path is None else _from_local(task, Path(path))
    if task.eval_split not in raw:
        have = ", ".join(f"{s} ({origins[s]})" for s in raw) or "nothing"
        raise TaskDataError(
            f"{task.name} scores the {task.eval_split} split, as lm-evaluation-harness does, but {path} has {have}. "
            f"{task.local_hint}"
        )
    return {s: _checked(task, s, raw[s], origins[s]) for s in needed_splits(task, list(raw), shots)}


def _checked(task: Task, name: str, rows: list[Row], origin: str) -> Split:
    docs, questions, where = [], [], []
    for row, at in rows:
        try:
            doc = task.to_doc(row)
            questions.append(task.question(doc))
        except TaskDataError as e:
            raise TaskDataError(f"{at}: {task.name}: {e}. {task.local_hint}".rstrip()) from None
        docs.append(doc)
        where.append(at)
    if not docs:
        raise TaskDataError(f"{origin}: the {name} split of {task.name} has no rows")
    return Split(name, docs, questions, where, origin)


def _from_local(task: Task, path: Path) -> tuple[dict[str, list[Row]], dict[str, str]]:
    if not path.exists():
        raise TaskDataError(f"{task.name}: the local copy {path} does not exist. {task.local_hint}")
    if path.is_file():
        files = [path]
    else:
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in task.extensions
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not files:
            raise TaskDataError(f"{task.name}: {path} holds no {'/'.join(task.extensions)} file. {task.local_hint}")
    raw: dict[str, list[Row]] = {}
    origins: dict[str, str] = {}
    for f in files:
        rows = (task.read or read_rows)(f)
        if not isinstance(rows, dict):
            split = split_of(f) or (task.eval_split if path.is_file() else None)
            if split is None:
                raise TaskDataError(f"{task.name}: which split is {f}? Its name says none of train, dev/val/validation, "
                                    "test; rename it, or pass the file itself as the split the task scores")
            rows = {split: rows}
        for split, split_rows in rows.items():
            if split in raw:
                raise TaskDataError(f"{task.name}: two files hold the {split} split: {origins[split]} and {f}; keep one")
            raw[split], origins[split] = split_rows, str(f)
    return raw, origins


def _from_hub(task: Task, shots: int) -> tuple[dict[str, list[Row]], dict[str, str]]:
    hub_path, hub_name = task.hub
    label = hub_path + (f" ({hub_name})" if hub_name else "")
    try:
        from datasets import load_dataset

        ds = load_dataset(hub_path, hub_name)
    except Exception as e:  # offline, unknown dataset, hub error: all mean "give a local copy"
        raise TaskDataError(
            f"{task.name}: could not load {label} from the Hugging Face hub ({type(e).__name__}: {str(e)[:200]}). "
            f"Give a local copy with --task-data {task.name}=PATH or eval.task_data (configs/eval-offline.json "
            f"points at ../shared/data/eval). {task.local_hint}"
        ) from None
    keep = needed_splits(task, list(ds), shots) if task.eval_split in ds else []
    raw = {s: [(dict(r), f"{label} {s} row {i}") for i, r in enumerate(ds[s])] for s in keep}
    return raw, {s: f"hub {label}" for s in raw}


# ---------------------------------------------------------------------------------------------
# Readers: rows with "file:line", every failure naming the file and line.


def read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise TaskDataError(f"{path}:{line}: not valid UTF-8 (byte {e.start}); save the file as UTF-8") from None


def read_rows(path: Path) -> list[Row]:
    """A .jsonl file (one JSON object per line) or a .json file (one array of objects, or JSON lines)."""
    text = read_text(path)
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        return _json_array(path, text)
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append((_decoded(json.loads, line, f"{path}:{n}"), f"{path}:{n}"))
        except json.JSONDecodeError as e:
            raise TaskDataError(f"{path}:{n}: not valid JSON (column {e.colno}: {e.msg})") from None
    return rows


def _decoded(decode, text: str, where: str, *args):
    """decode(text, *args), with what json raises on hostile input (and lone surrogates) as TaskDataError."""
    try:
        result = decode(text, *args)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise TaskDataError(f"{where}: JSON nested too deeply to read; a task row is one flat object") from None
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise TaskDataError(f"{where}: not valid JSON ({e})") from None
    _check_strings(result[0] if isinstance(result, tuple) else result, where)
    return result


def _check_strings(obj, where: str) -> None:
    """Every string in a parsed row is text the tokenizer can encode (a JSON \\ud800 escape is not)."""
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                check_encodable(item, where)
            except UnencodableText as e:
                raise TaskDataError(str(e)) from None
        elif isinstance(item, dict):
            stack += list(item.keys()) + list(item.values())
        elif isinstance(item, list):
            stack += item


def _json_array(path: Path, text: str) -> list[Row]:
    """The objects of a top-level JSON array, each with the line it starts on."""
    newlines = [i for i, c in enumerate(text) if c == "\n"]
    line_of = lambda pos: bisect.bisect_right(newlines, pos - 1) + 1  # noqa: E731
    decoder, rows = json.JSONDecoder(), []
    ws = re.compile(r"\s*")
    i = ws.match(text, text.index("[") + 1).end()
    try:
        while text[i : i + 1] != "]":
            obj, end = _decoded(decoder.raw_decode, text, f"{path}:{line_of(i)}", i)
            rows.append((obj, f"{path}:{line_of(i)}"))
            i = ws.match(text, end).end()
            if text[i : i + 1] == ",":
                i = ws.match(text, i + 1).end()
            elif text[i : i + 1] != "]":
                raise TaskDataError(f"{path}:{line_of(i)}: not valid JSON: expected ',' or ']' between array items")
    except json.JSONDecodeError as e:
        raise TaskDataError(f"{path}:{e.lineno}: not valid JSON (column {e.colno}: {e.msg})") from None
    if text[i + 1 :].strip():
        raise TaskDataError(f"{path}:{line_of(i + 1)}: not valid JSON: text after the closing ']'")
    return rows


def read_labels(path: Path, n_rows: int, allowed: tuple[str, ...] = ("0", "1")) -> list[int]:
    """A labels file (PIQA's valid-labels.lst): one label per line, aligned with the rows of its data file."""
    labels = []
    for n, line in enumerate(read_text(path).splitlines(), 1):
        value = line.strip()
        if value not in allowed:
            raise TaskDataError(f"{path}:{n}: label {value!r} is out of range; each line must be one of {', '.join(allowed)}")
        labels.append(int(value))
    if len(labels) != n_rows:
        raise TaskDataError(f"{path}: {len(labels)} labels for {n_rows} rows; each row needs its label on the same line number")
    return labels
