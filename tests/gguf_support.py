"""What the GGUF tests share: llama-cpp-python if it is installed and runs here, else a clean skip.

    from gguf_support import llama_cpp_or_skip, open_llama     # tests/ is on sys.path under pytest
    Llama = llama_cpp_or_skip()
    with open_llama(path, logits_all=True) as llm: ...

llama-cpp-python builds llama.cpp from source; built for the machine's own CPU (its default) on a VM
that reports AMX, its q8_0 kernels crash the process. A crash would take the whole test run with it,
so the first use runs a q8_0 model once in a subprocess and skips, saying why, if that dies.
"""

from __future__ import annotations

import functools
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

PROBE = """
import tempfile
from pathlib import Path
from llama_cpp import Llama
from ngpt.export.gguf import ids_only_vocab, write_gguf
from ngpt.model import GPT
from ngpt.settings import ModelSettings
cfg = ModelSettings(vocab_size=64, seq_len=16, n_embd=32, n_layer=1, n_head=2)
with tempfile.TemporaryDirectory() as d:
    path = Path(d) / "probe.gguf"
    write_gguf(path, GPT(cfg).state_dict(), cfg, ids_only_vocab(64), "q8_0")
    llm = Llama(str(path), n_ctx=16, verbose=False)
    llm.eval([1, 2, 3])
    llm.close()
"""


@functools.lru_cache(maxsize=1)
def _probe() -> str | None:
    """None when llama.cpp runs a q8_0 model here, else why not."""
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        return (f"llama-cpp-python fails on a q8_0 model here (exit {done.returncode}: {done.stderr.strip()[-300:]}); "
                "rebuild it without native CPU flags, as .ci/run does (README, Sharing models)")
    return None


def llama_cpp_or_skip():
    """llama_cpp.Llama, or a skip: not installed (the `gguf` extra), or crashing on this CPU."""
    pytest.importorskip("gguf")
    llama_cpp = pytest.importorskip("llama_cpp")
    reason = _probe()
    if reason:
        pytest.skip(reason)
    return llama_cpp.Llama


@contextmanager
def open_llama(path, **kwargs) -> Iterator:
    """A llama.cpp model with an fp32 KV cache (the default f16 one rounds keys and values), closed after."""
    Llama = llama_cpp_or_skip()
    kwargs = {"n_ctx": 256, "type_k": 0, "type_v": 0, "verbose": False, **kwargs}
    llm = Llama(str(path), **kwargs)
    try:
        yield llm
    finally:
        llm.close()
