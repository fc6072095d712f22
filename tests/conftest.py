"""Shared test fixtures: a tiny real sentencepiece tokenizer, and the optional ../shared/data samples.

Tests never touch the network: the hub is forced offline for the whole session. The one-time speed
measurements behind "auto" (ngpt.measured) are made afresh into a temporary file.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import pytest

from ngpt.tokenizer import SourceSample, Tokenizer, train_tokenizer

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
# The "auto" speed measurements (ngpt.measured) go to a file of this session's, not the user's cache.
os.environ["NGPT_MEASURED_CACHE"] = str(Path(tempfile.mkdtemp(prefix="ngpt-measured-")) / "measured.json")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

WORDS = (
    "the a model token cache train loss step learn data text small chat user answer question river "
    "mountain city light music paper stone window garden number seven twelve because while quickly"
).split()


def synthetic_text(n_sentences: int, seed: int = 0) -> str:
    """Deterministic English-like sentences: enough for a tokenizer to learn real pieces."""
    rng = random.Random(seed)
    lines = []
    for i in range(n_sentences):
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 14))]
        lines.append(" ".join(words).capitalize() + rng.choice([".", "?", "!"]) + f" {i % 97}")
    return "\n".join(lines)


@pytest.fixture(scope="session")
def tiny_tokenizer_path(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tokenizer")
    sample = SourceSample("synthetic", [synthetic_text(3000)], "tests")
    train_tokenizer([sample], out, vocab_size=512, seed=0, threads=1)
    return out / "spm.model"


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_path) -> Tokenizer:
    return Tokenizer(tiny_tokenizer_path)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data when this checkout has it; tests that need it skip cleanly otherwise."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not present (real public samples are optional)")
    return SHARED_DATA
