"""The same numbers as lm-evaluation-harness: ngpt eval on a checkpoint vs lm_eval 0.4 (`--model hf`) on its export.

    pytest tests/test_eval_parity.py          # skips when lm_eval is not installed: pip install -e ".[eval]"

A tiny random model, its `ngpt export hf` folder, and two task slices given to lm_eval as local-file
YAMLs that `include:` lm_eval's own arc_easy and copa YAMLs (so the prompts are lm_eval's, not a copy):
ARC-Easy zero-shot (hub-schema rows in a JSON array) and COPA 2-shot from its train split (SuperGLUE
jsonl). Some prompts are longer than the model's context, so lm-eval's left truncation is compared too.
Equal acc and acc_norm, and every choice's log-likelihood within float noise (1e-5 relative).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

lm_eval = pytest.importorskip("lm_eval", reason="lm_eval is not installed (pip install -e '.[eval]')")

from test_eval_data import one_thread, tiny_checkpoint  # noqa: E402,F401  (one_thread is an autouse fixture)
from ngpt.eval.harness import prepare_tasks, run_tasks  # noqa: E402
from ngpt.eval.runner import load_model  # noqa: E402
from ngpt.export.hf import export_hf  # noqa: E402

WORDS = ("river stone light garden window paper music city number seven twelve model learns small data every "
         "morning under the old bridge quiet lamp question answer cache token train").split()


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize()


def arc_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        k = rng.choice([3, 4, 4, 5])
        labels = list("ABCDE"[:k]) if i % 4 else [str(j + 1) for j in range(k)]  # digit labels, as in ARC
        rows.append({"id": f"q{i}", "question": _sentence(rng, rng.randint(3, 30)) + "?",
                     "choices": {"text": [_sentence(rng, rng.randint(1, 6)) for _ in range(k)], "label": labels},
                     "answerKey": rng.choice(labels)})
    return rows


def copa_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"premise": _sentence(rng, rng.randint(4, 12)) + ".", "choice1": _sentence(rng, rng.randint(2, 7)) + ".",
             "choice2": _sentence(rng, rng.randint(2, 7)) + ".", "question": rng.choice(["cause", "effect"]),
             "label": rng.randint(0, 1), "idx": i} for i in range(n)]


def _write(path: Path, rows: list[dict], array: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=2) if array else "".join(json.dumps(r) + "\n" for r in rows))
    return path


def lm_eval_yamls(root: Path, files: dict[str, dict[str, Path]], cache: Path) -> Path:
    """Local-file tasks that include lm_eval's own YAMLs and only swap the data source."""
    tasks_dir = Path(lm_eval.__file__).parent / "tasks"
    out = root / "yamls"
    out.mkdir()
    for name, include, extra in (("arc_easy", tasks_dir / "arc" / "arc_easy.yaml", "training_split: null\n"),
                                 ("copa", tasks_dir / "super_glue" / "copa" / "default.yaml", "")):
        data = "".join(f"      {split}: {path}\n" for split, path in files[name].items())
        (out / f"parity_{name}.yaml").write_text(
            f"include: {include}\ntask: parity_{name}\ntag: null\ndataset_path: json\ndataset_name: null\n"
            f"dataset_kwargs:\n  cache_dir: {cache}\n  data_files:\n{data}{extra}")
    return out


def run_lm_eval(hf_dir: Path, yamls: Path, task: str, shots: int) -> dict:
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=str(hf_dir), dtype="float32", device="cpu", batch_size=8)
    out = lm_eval.simple_evaluate(model=lm, tasks=[task], num_fewshot=shots, task_manager=TaskManager(
        include_path=str(yamls), include_defaults=False), log_samples=True, bootstrap_iters=0, verbosity="ERROR")
    samples = sorted(out["samples"][task], key=lambda s: s["doc_id"])
    return {"acc": out["results"][task]["acc,none"], "acc_norm": out["results"][task].get("acc_norm,none"),
            "lls": [[float(r[0][0]) for r in s["resps"]] for s in samples]}


def test_ngpt_eval_equals_lm_eval_on_the_export(tmp_path, tiny_tokenizer, monkeypatch):
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    ckpt = tiny_checkpoint(tmp_path / "ckpt" / "best.pt", tiny_tokenizer, seq_len=64, std=0.3)
    hf_dir = export_hf(ckpt, tmp_path / "hf").out
    files = {"arc_easy": {"test": _write(tmp_path / "arc" / "test.json", arc_rows(24, 1), array=True),
                          "validation": _write(tmp_path / "arc" / "validation.json", arc_rows(6, 2), array=True)},
             "copa": {"train": _write(tmp_path / "copa" / "train.jsonl", copa_rows(12, 3)),
                      "validation": _write(tmp_path / "copa" / "val.jsonl", copa_rows(16, 4))}}
    yamls = lm_eval_yamls(tmp_path, files, tmp_path / "hf_datasets")
    model, tok, _, _ = load_model(ckpt, "cpu")
    for name, shots in (("arc_easy", 0), ("copa", 2)):
        runs = prepare_tasks([name], {name: str(files[name]["test" if name == "arc_easy" else "validation"].parent)},
                             shots=shots, limit=None)
        ours = run_tasks(model, tok, runs, shots=shots, seed=1234, batch_size=5).tasks[0]
        theirs = run_lm_eval(hf_dir, yamls, f"parity_{name}", shots)
        assert len(theirs["lls"]) == ours.n
        # float noise only: fp32 sums over different kernels (ngpt's KV-cache passes vs one padded forward)
        worst = max(abs(a - b) / max(1.0, abs(b)) for q_ours, q_theirs in zip(ours.logprobs, theirs["lls"])
                    for a, b in zip(q_ours, q_theirs))
        assert worst < 1e-5, (name, worst)
        assert ours.acc == theirs["acc"], name
        if theirs["acc_norm"] is not None:
            assert ours.acc_norm == theirs["acc_norm"], name
        assert 0 < ours.acc < 1 or name == "copa"  # a slice where the choices really compete
