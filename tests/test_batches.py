"""Tests for ngpt/batches.py: SFT rows pack whole examples, label only what the examples label, and
say which example each position belongs to.

    pytest tests/test_batches.py

The readers are in-memory stand-ins with SFTReader's interface (example, lengths, num_examples,
split), so the packing rules can be checked against known examples.
"""

from __future__ import annotations

import numpy as np

from ngpt.batches import SFTBatches
from ngpt.settings import IGNORE_INDEX

PAD = 3


class ListReader:
    """Examples as (ids, labels) lists; labels mark every second token as trained."""

    split = "train"

    def __init__(self, lengths: list[int], first_id: int) -> None:
        self.examples = []
        for n, length in enumerate(lengths):
            ids = np.arange(first_id + 100 * n, first_id + 100 * n + length)
            labels = np.where(np.arange(length) % 2 == 1, ids, IGNORE_INDEX)
            self.examples.append((ids, labels))
        self.num_examples = len(self.examples)

    def example(self, i: int):
        return self.examples[i]

    def lengths(self) -> np.ndarray:
        return np.array([len(ids) for ids, _ in self.examples])


def test_sft_rows_pack_whole_examples_with_their_doc_ids():
    readers = {"a": ListReader([5, 9, 3, 7], 1000), "b": ListReader([4, 6], 5000)}
    batches = SFTBatches(readers, {"a": 1.0, "b": 1.0}, batch_size=6, seq_len=16, seed=0, pad_id=PAD)
    x, y, doc_ids = batches.next()
    assert x.shape == y.shape == doc_ids.shape == (6, 16)
    known = {int(ids[0]): (ids, labels) for r in readers.values() for ids, labels in r.examples}
    for row in range(6):
        ids = np.append(x[row].numpy(), -1)  # the row's T+1 tokens, the last one unknown (shifted away)
        docs = doc_ids[row].numpy()
        assert docs[0] == 0 and (np.diff(docs) >= 0).all() and (np.diff(docs) <= 1).all()
        for doc in np.unique(docs):
            span = np.flatnonzero(docs == doc)
            first = int(ids[span[0]])
            if first == PAD:  # the padding after the last example: all pad, no loss
                assert (x[row, span] == PAD).all() and (y[row, span] == IGNORE_INDEX).all()
                continue
            ex_ids, ex_labels = known[first]  # every document starts at an example's first token
            n = min(len(ex_ids), 16 - span[0])
            assert span.size == n and (x[row, span].numpy() == ex_ids[:n]).all()
            # y[t] is the label of token t+1: the example's own labels, shifted by one
            assert (y[row, span[:-1]].numpy() == ex_labels[1:n]).all()


def test_same_seed_same_rows_and_state_resumes_the_stream():
    readers = {"a": ListReader([5, 9, 3, 7, 2], 1000)}
    one = SFTBatches(readers, {"a": 1.0}, batch_size=3, seq_len=12, seed=7, pad_id=PAD)
    two = SFTBatches(readers, {"a": 1.0}, batch_size=3, seq_len=12, seed=7, pad_id=PAD)
    one.next()
    two.load_state_dict(one.state_dict())
    for a, b in zip(one.next(), two.next()):
        assert (a == b).all()
