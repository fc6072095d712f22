"""Tiny data files in each hub's own schema, for tests (no network, a few KB each).

Each writer puts its file (or folder) under `dir` and returns its path, ready for
`data.sources.<name>`:

    from fixtures import write_all_sources      # tests/ is on sys.path under pytest
    paths = write_all_sources(tmp_path)          # {"wikitext": Path, ..., "primer": Path}
    settings = load_settings(overrides={"data": {"sources": {k: str(v) for k, v in paths.items()}}}, environ={})

The contents are deterministic; the constants below say what a correct reader must find.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

_WORDS = (
    "river stone light garden window paper music city number seven twelve because while quickly "
    "model learns small data every morning under the old bridge and a quiet lamp"
).split()


def _sentences(n: int, seed: int) -> str:
    rng = random.Random(seed)
    return " ".join(" ".join(rng.choice(_WORDS) for _ in range(rng.randint(5, 12))).capitalize() + "." for _ in range(n))


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _write_parquet(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


# ---------------------------------------------------------------- wikitext (one row per raw line)

WIKITEXT_TITLES = ("Robert Boulter", "Du Fu", "Kiss You ( One Direction song )", "Tropical Storm Lee", "Ise class")


def wikitext_rows(seed: int = 0) -> list[str]:
    """HF wikitext raw rows: "" for blank lines, " = Title = \\n" headings, " = = Sec = = \\n" sub-headings."""
    rows = [""]
    for k, title in enumerate(WIKITEXT_TITLES):
        rows += [f" = {title} = \n", "", f" {_sentences(3, seed + k)} \n", "", " = = Career = = \n", "",
                 f" {_sentences(4, seed + 100 + k)} \n", f" {_sentences(2, seed + 200 + k)} \n", ""]
        if k % 2:
            rows += [" = = = Later years = = = \n", "", f" {_sentences(2, seed + 300 + k)} \n", ""]
    return rows


def write_wikitext_parquet(dir: str | Path, split: str = "test") -> Path:
    """`{dir}/wikitext-103-raw-v1/{split}-00000-of-00001.parquet`, the hub's file layout."""
    return _write_parquet(Path(dir) / "wikitext-103-raw-v1" / f"{split}-00000-of-00001.parquet",
                          [{"text": t} for t in wikitext_rows()])


def write_wikitext_jsonl(dir: str | Path, split: str = "test") -> Path:
    return _write_jsonl(Path(dir) / "wikitext-jsonl" / f"{split}.jsonl", [{"text": t} for t in wikitext_rows()])


def write_wikitext_raw_dir(dir: str | Path) -> Path:
    """`wiki.train.raw` + `wiki.valid.raw` (+ `wiki.test.raw`) as in the original zip: blank lines are " \\n"."""
    out = Path(dir) / "wikitext-raw"
    out.mkdir(parents=True, exist_ok=True)
    for split, seed in (("train", 0), ("valid", 1), ("test", 2)):
        lines = [row if row else " \n" for row in wikitext_rows(seed)]
        (out / f"wiki.{split}.raw").write_text("".join(lines), encoding="utf-8")
    return out


# ---------------------------------------------------------------- fineweb-edu

FINEWEB_COLUMNS = ("text", "id", "dump", "url", "file_path", "language", "language_score", "token_count", "score", "int_score")


def fineweb_rows(n: int = 8) -> list[dict]:
    return [
        {
            "text": _sentences(6, 1000 + i), "id": f"<urn:uuid:0000-{i:04d}>", "dump": "CC-MAIN-2024-10",
            "url": f"https://example.org/page/{i}", "file_path": "s3://commoncrawl/crawl-data/x.warc.gz",
            "language": "en", "language_score": 0.97, "token_count": 60, "score": 3.1, "int_score": 3,
        }
        for i in range(n)
    ]


def write_fineweb_jsonl(dir: str | Path) -> Path:
    return _write_jsonl(Path(dir) / "fineweb-edu" / "sample.jsonl", fineweb_rows())


def write_fineweb_parquet(dir: str | Path) -> Path:
    return _write_parquet(Path(dir) / "fineweb-edu-parquet" / "000_00000.parquet", fineweb_rows())


# ---------------------------------------------------------------- Project Gutenberg

GUTENBERG_HEADER_MARK = "This eBook is for the use of anyone anywhere"
GUTENBERG_FIRST_BODY_LINE = "THE LITTLE BOOK OF TESTS"


def write_gutenberg_dir(dir: str | Path) -> Path:
    """Three books: one with BOM, CRLF and the PG header/footer; one long (several chunks); one plain."""
    out = Path(dir) / "gutenberg"
    out.mkdir(parents=True, exist_ok=True)
    body = f"{GUTENBERG_FIRST_BODY_LINE}\n\n" + "\n\n".join(_sentences(5, 2000 + i) for i in range(6))
    pg = (
        "\ufeffThe Project Gutenberg eBook of The Little Book of Tests\n\n"
        f"{GUTENBERG_HEADER_MARK} in the United States.\n\n"
        "*** START OF THE PROJECT GUTENBERG EBOOK THE LITTLE BOOK OF TESTS ***\n\n\n"
        f"{body}\n\n\n"
        "*** END OF THE PROJECT GUTENBERG EBOOK THE LITTLE BOOK OF TESTS ***\n\n"
        "Section 1. General Terms of Use and Redistributing Project Gutenberg electronic works\n"
    )
    (out / "pg90001.txt").write_bytes(pg.replace("\n", "\r\n").encode("utf-8"))
    long_book = "\n\n".join(_sentences(12, 3000 + i) for i in range(120))  # ~60k chars → several chunks
    (out / "90002-0.txt").write_text(long_book + "\n", encoding="utf-8")
    (out / "90003-0.txt").write_text("\n\n".join(_sentences(4, 4000 + i) for i in range(5)) + "\n", encoding="utf-8")
    return out


# ---------------------------------------------------------------- roam (markdown notes)

def write_roam_dir(dir: str | Path) -> Path:
    out = Path(dir) / "roam"
    for k, rel in enumerate(("daily/2024-01-01.md", "daily/2024-01-02.md", "ideas/tokenizers.md", "reading.md", "people/ada.md")):
        f = out / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(f"# {Path(rel).stem}\n\n- {_sentences(2, 5000 + k)}\n- [[reading]] {_sentences(1, 5100 + k)}\n", encoding="utf-8")
    (out / "attachment.png").write_bytes(b"\x89PNG not a note")
    return out


# ---------------------------------------------------------------- databricks-dolly-15k

DOLLY_CATEGORIES = ("open_qa", "closed_qa", "brainstorming", "summarization")


def dolly_rows(with_category: bool = True, n: int = 10) -> list[dict]:
    rows = []
    for i in range(n):
        row = {
            "instruction": f"Question {i}: {_sentences(1, 6000 + i)}",
            "context": _sentences(2, 6100 + i) if i % 3 == 0 else "",
            "response": f"Answer {i}: {_sentences(2, 6200 + i)}",
        }
        if with_category:
            row["category"] = DOLLY_CATEGORIES[i % len(DOLLY_CATEGORIES)]
        rows.append(row)
    return rows


def write_dolly_jsonl(dir: str | Path, with_category: bool = True) -> Path:
    name = "databricks-dolly-15k.jsonl" if with_category else "databricks-dolly-15k.no-category.jsonl"
    return _write_jsonl(Path(dir) / "dolly" / name, dolly_rows(with_category))


# ---------------------------------------------------------------- OpenAssistant oasst1 (message rows)

# Tree "t-best": the best-ranked thread is p1 → a-rank0 → p2 → a2-rank1 (a2-rank0 is deleted; the
# last prompt p3 has no reply, so it is dropped). Other trees test lang, deleted roots and ties.
OASST_BEST_THREAD = ("t-best p1", "t-best a rank0", "t-best p2", "t-best a2 rank1")
OASST_TIE_ANSWER = "t-tie answer aaa"  # two unranked replies: the lower message_id wins
OASST_DE_TEXT = "t-de Wie spät ist es?"
OASST_NEVER = ("t-best a rank1", "t-best a unranked", "t-best a2 rank0 deleted", "t-best p3 unanswered",
               "t-best a de reply", "t-deleted root", "t-deleted reply", "t-tie answer bbb")


def _msg(tree: str, mid: str, parent: str | None, role: str, text: str, rank: int | None = None,
         lang: str = "en", deleted: bool = False) -> dict:
    return {
        "message_id": mid, "parent_id": parent, "user_id": f"user-{mid}", "created_date": "2023-02-05T10:00:00+00:00",
        "text": text, "role": role, "lang": lang, "review_count": 3, "review_result": True, "deleted": deleted,
        "rank": rank, "synthetic": False, "model_name": None, "detoxify": None, "message_tree_id": tree,
        "tree_state": "ready_for_export", "emojis": None, "labels": None,
    }


def oasst_rows() -> list[dict]:
    rows = [
        _msg("t-best", "t-best", None, "prompter", "t-best p1"),
        _msg("t-best", "b-a1", "t-best", "assistant", "t-best a rank1", rank=1),
        _msg("t-best", "b-a0", "t-best", "assistant", "t-best a rank0", rank=0),
        _msg("t-best", "b-a-none", "t-best", "assistant", "t-best a unranked"),
        _msg("t-best", "b-a-de", "t-best", "assistant", "t-best a de reply", rank=None, lang="de"),
        _msg("t-best", "b-p2", "b-a0", "prompter", "t-best p2"),
        _msg("t-best", "b-a2-0", "b-p2", "assistant", "t-best a2 rank0 deleted", rank=0, deleted=True),
        _msg("t-best", "b-a2-1", "b-p2", "assistant", "t-best a2 rank1", rank=1),
        _msg("t-best", "b-p3", "b-a2-1", "prompter", "t-best p3 unanswered"),
        _msg("t-de", "t-de", None, "prompter", OASST_DE_TEXT, lang="de"),
        _msg("t-de", "de-a", "t-de", "assistant", "t-de Es ist zehn Uhr.", rank=0, lang="de"),
        _msg("t-deleted", "t-deleted", None, "prompter", "t-deleted root", deleted=True),
        _msg("t-deleted", "del-a", "t-deleted", "assistant", "t-deleted reply", rank=0),
        _msg("t-noreply", "t-noreply", None, "prompter", "t-noreply prompt nobody answered"),
        _msg("t-tie", "t-tie", None, "prompter", "t-tie question"),
        _msg("t-tie", "bbb", "t-tie", "assistant", "t-tie answer bbb"),
        _msg("t-tie", "aaa", "t-tie", "assistant", OASST_TIE_ANSWER),
    ]
    for k in range(6):  # plain one-exchange trees, so both splits have something
        tree = f"t-plain-{k}"
        rows += [_msg(tree, tree, None, "prompter", f"{tree} question {_sentences(1, 7000 + k)}"),
                 _msg(tree, f"{tree}-a", tree, "assistant", f"{tree} answer {_sentences(2, 7100 + k)}", rank=0)]
    # Rows are not grouped by tree in the real file either: interleave deterministically.
    return sorted(rows, key=lambda r: (r["parent_id"] is not None, r["message_id"][::-1]))


def write_oasst_jsonl(dir: str | Path) -> Path:
    return _write_jsonl(Path(dir) / "oasst1" / "oasst1-messages.jsonl", oasst_rows())


# ---------------------------------------------------------------- primer (ngpt's chat jsonl)

def primer_records(n: int = 8) -> list[dict]:
    records = []
    for i in range(n):
        messages = [{"role": "user", "content": f"What is fact {i}?"}, {"role": "assistant", "content": f"Fact {i} is {_sentences(1, 8000 + i)}"}]
        if i % 4 == 0:
            messages.insert(0, {"role": "system", "content": "You are ngpt, a small helpful model."})
        records.append({"messages": messages})
    return records


def write_primer_jsonl(dir: str | Path) -> Path:
    return _write_jsonl(Path(dir) / "primer" / "primer.jsonl", primer_records())


def write_all_sources(dir: str | Path) -> dict[str, Path]:
    """Every source's fixture under `dir`, keyed by source name (values fit `data.sources.<name>`)."""
    return {
        "wikitext": write_wikitext_parquet(dir),
        "fineweb_edu": write_fineweb_jsonl(dir),
        "gutenberg": write_gutenberg_dir(dir),
        "roam": write_roam_dir(dir),
        "dolly15k": write_dolly_jsonl(dir),
        "oasst1": write_oasst_jsonl(dir),
        "primer": write_primer_jsonl(dir),
    }


# ---------------------------------------------------------------- the classic architecture


def classic_model() -> dict:
    """configs/classic.json's model options: the 2023 Llama (SwiGLU, tied head, gains) the recipe options are measured from."""
    return json.loads((Path(__file__).resolve().parents[1] / "configs" / "classic.json").read_text())["model"]


# ---------------------------------------------------------------- a whole tiny workspace


def ngpt_cli(*args) -> int:
    """Exit code of `ngpt ARGS` run in-process (click exits via SystemExit; main exits 1 on user errors)."""
    from ngpt.cli.main import main

    try:
        main([str(a) for a in args])
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def write_workspace(ws: Path, tokenizer_path: Path, model: dict, phase: dict) -> Path:
    """Fixture sources + `tokenizer_path` + every cache built by `ngpt cache build-all`; returns the config file."""
    sources = {k: str(v) for k, v in write_all_sources(ws / "src").items()}
    config = {
        "model": model,
        "tokenizer": {"model_path": str(tokenizer_path)},
        "data": {"cache_dir": str(ws / "cache"), "mix_pretrain": {"wikitext": 0.5, "gutenberg": 0.5},
                 "mix_sft": {"primer": 0.5, "dolly15k": 0.3, "oasst1": 0.2}, "sources": sources,
                 "sft_max_tokens": 33, "val_fraction": 0.3, "workers": 1},
        "pretrain": phase,
        "sft": phase,
        "checkpoints_dir": str(ws / "ckpt"),
        "runs_dir": str(ws / "runs"),
    }
    path = ws / "config.json"
    path.write_text(json.dumps(config))
    assert ngpt_cli("cache", "build-all", "-c", path) == 0
    return path
