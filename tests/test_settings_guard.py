"""Every hyperparameter and every special-token string lives in ngpt/settings.py, nowhere else in the package.

    pytest tests/test_settings_guard.py

A learning rate typed into a call, a default `momentum=0.95` on a function, or "<|eot|>" spelled in
a template are the same fact written twice: the copy silently stops following the settings. The
check reads the source with `ast` (docstrings and comments may mention them; code may not).
"""

from __future__ import annotations

import ast
from pathlib import Path

from ngpt.settings import SPECIAL_TOKENS

PKG = Path(__file__).resolve().parents[1] / "ngpt"
SETTINGS = PKG / "settings.py"
# Functions whose job is to name the off/argmax values themselves (greedy decoding is a definition, not a choice).
DEFINITIONS = {("ngpt/sampling.py", "greedy")}
# Names that are hyperparameters of training or sampling when they are bound to a number.
HYPERPARAMETERS = {
    "lr", "muon_lr", "embed_lr", "head_lr", "scalar_lr", "min_lr", "betas", "eps", "momentum", "weight_decay",
    "warmup_steps", "warmdown_frac", "final_lr_frac", "grad_clip", "dropout", "ns_steps", "temperature", "top_k",
    "top_p", "repetition_penalty", "logit_softcap", "softcap", "rope_theta", "norm_eps",
}


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                ids.add(id(first.value))
    return ids


def _is_number(node: ast.AST | None) -> bool:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        node = node.operand
    if isinstance(node, ast.Tuple):
        return bool(node.elts) and all(_is_number(e) for e in node.elts)
    return isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool)


def _exempt_lines(tree: ast.AST, where: str) -> set[int]:
    return {line for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and (where, node.name) in DEFINITIONS
            for line in range(node.lineno, node.end_lineno + 1)}


def violations(path: Path, where: str | None = None) -> list[str]:
    """Each hard-coded hyperparameter or special-token string in `path`, as 'where:line: what'."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docs = _docstrings(tree)
    where = where or path.relative_to(PKG.parent).as_posix()
    exempt = _exempt_lines(tree, where)
    found = []
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in exempt:
            continue
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            hits = [t for t in SPECIAL_TOKENS if t in node.value]
            if hits:
                found.append(f"{where}:{node.lineno}: special token {hits[0]} spelled out (use ngpt.settings.SPECIAL_TOKENS)")
        elif isinstance(node, ast.keyword) and node.arg in HYPERPARAMETERS and _is_number(node.value):
            found.append(f"{where}:{node.value.lineno}: {node.arg}= hard-coded (read it from settings)")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args.args + node.args.kwonlyargs
            defaults = [None] * (len(node.args.args) - len(node.args.defaults)) + node.args.defaults + node.args.kw_defaults
            for arg, default in zip(args, defaults):
                if arg.arg in HYPERPARAMETERS and _is_number(default):
                    found.append(f"{where}:{node.lineno}: {node.name}({arg.arg}=...) default hard-coded (take it from settings)")
    return found


def test_hyperparameters_and_special_tokens_are_written_only_in_settings():
    found = [v for p in sorted(PKG.rglob("*.py")) if p != SETTINGS for v in violations(p)]
    assert found == [], "\n".join(found)


def test_the_guard_catches_what_it_is_for(tmp_path):
    bad = tmp_path / "probe.py"
    bad.write_text('"""doc may say <|eot|>"""\nT = "<|usr|>"\ndef f(x, lr=3e-4):\n    return g(x, momentum=0.9)\n'
                   'def greedy(n):\n    return P(n, temperature=0.0)\n')
    found = violations(bad, "ngpt/probe.py")
    assert len(found) == 4 and any("special token <|usr|>" in v for v in found)
    assert any("f(lr=...)" in v for v in found) and any("momentum=" in v for v in found)
    assert any(v.startswith("ngpt/probe.py:6: temperature=") for v in found)
    # sampling.greedy is where argmax decoding is defined: the one place its temperature=0 may be written
    exempt = violations(bad, "ngpt/sampling.py")
    assert len(exempt) == 3 and not any("temperature=" in v for v in exempt)
