"""The sentencepiece tokenizer: train, load, encode/decode, special ids, sha256, token byte lengths.

Unigram model with byte fallback and identity normalisation, so decode(encode(s)) == s for any
string. The four chat tokens are sentencepiece *control* symbols: they have one id each, and no
text, whatever it contains, ever encodes to them — only code that builds a chat template emits them.

    ngpt tokenizer train     # writes artifacts/tokenizer/spm.model + tokenizer_meta.json
    tok = Tokenizer.load("artifacts/tokenizer/spm.model"); tok.encode("hi"), tok.eot_id
    stream = TextStream(tok); piece = stream.push(token_id)   # generation: text as it becomes whole
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sentencepiece as spm

from ngpt.io_utils import atomic_write_bytes, atomic_write_text
from ngpt.settings import PRETRAIN_SOURCES, SFT_SOURCES, SPECIAL_TOKENS, Settings

# sentencepiece turns spaces into U+2581 and back; a literal U+2581 in the input would come back as
# a space, so encode() spells it out as its three UTF-8 bytes (byte fallback pieces).
SPACE_MARK = "\u2581"
MAX_SENTENCE_BYTES = 16384


class UnencodableText(ValueError):
    """Text that is not valid Unicode: it holds a lone UTF-16 surrogate, so it has no UTF-8 form to tokenize."""


def first_surrogate(text: str) -> int | None:
    """Offset of the first code point in U+D800..U+DFFF, or None when `text` is valid Unicode.

    Such a code point is what makes a Python string unencodable as UTF-8: a JSON "\\ud800" escape
    without its pair decodes to one, and so does a non-UTF-8 byte read with surrogateescape
    (terminal input, argv, file names on a non-UTF-8 locale: byte 0xFF becomes U+DCFF).
    """
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return e.start
    return None


def describe_char(text: str, offset: int) -> str:
    """What the bad character at `offset` is, for a person (ASCII only: the text itself is not printable)."""
    code = ord(text[offset])
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape's stand-in for an undecodable byte
        return f"byte 0x{code - 0xDC00:02X}, which is not valid UTF-8, at character {offset}"
    return f"a lone UTF-16 surrogate U+{code:04X} at character {offset}"


def check_encodable(text: str, where: str) -> None:
    """UnencodableText naming `where` and the bad character when `text` cannot be encoded as UTF-8."""
    offset = first_surrogate(text)
    if offset is not None:
        if 0xDC80 <= ord(text[offset]) <= 0xDCFF:
            fix = "send it as UTF-8 (is the terminal or file in another encoding?)"
        else:
            fix = "a JSON \\uD800-\\uDFFF escape must be half of a high-low pair"
        raise UnencodableText(f"{where} holds {describe_char(text, offset)}; only valid Unicode text can be tokenized: {fix}.")


class SpecialTokenInText(ValueError):
    """Training text contains a special-token string (it would be ambiguous with the chat template)."""


def find_special(text: str) -> tuple[str, int] | None:
    """The first special-token string in `text` and its character offset, or None."""
    hits = [(text.find(tok), tok) for tok in SPECIAL_TOKENS if tok in text]
    if not hits:
        return None
    offset, tok = min(hits)
    return tok, offset


def check_training_text(text: str, source: str, doc_ref: str) -> None:
    """Raise SpecialTokenInText naming source, document and offset when `text` holds a special token."""
    hit = find_special(text)
    if hit:
        tok, offset = hit
        context = text[max(0, offset - 30) : offset + len(tok) + 30].replace("\n", "\\n")
        raise SpecialTokenInText(
            f"Source '{source}', document {doc_ref}: training text contains the special token {tok!r} at "
            f"character offset {offset} (…{context}…). Special tokens are reserved for the chat template; "
            "remove or escape that text in the source data, or drop the document."
        )


class Tokenizer:
    """A loaded sentencepiece model plus the ids and facts the rest of ngpt needs."""

    def __init__(self, model_path: str | Path, *, proto: bytes | None = None):
        """Load `model_path`; or, with `proto` (the file's bytes, e.g. from a checkpoint), name it `model_path`."""
        self.path = Path(model_path)
        if proto is None:
            if not self.path.is_file():
                raise FileNotFoundError(
                    f"Tokenizer model {self.path} does not exist. Train one with `ngpt tokenizer train` "
                    "or point tokenizer.model_path (--config / NGPT_TOKENIZER__MODEL_PATH) at an spm.model."
                )
            proto = self.path.read_bytes()
        self.proto = proto
        self.sp = spm.SentencePieceProcessor(model_proto=proto)
        self.sha256 = hashlib.sha256(proto).hexdigest()
        self.vocab_size = self.sp.get_piece_size()
        ids = {tok: self.sp.piece_to_id(tok) for tok in SPECIAL_TOKENS}
        for tok, i in ids.items():
            if i == self.sp.unk_id() or not self.sp.is_control(i):
                raise ValueError(f"Tokenizer {self.path} has no control symbol {tok}; retrain with `ngpt tokenizer train`.")
        self.special_ids = ids
        self.sys_id, self.usr_id, self.asst_id, self.eot_id = (ids[t] for t in SPECIAL_TOKENS)
        self._mark_ids = [self.sp.piece_to_id(f"<0x{b:02X}>") for b in SPACE_MARK.encode()]

    @classmethod
    def load(cls, model_path: str | Path) -> "Tokenizer":
        return cls(model_path)

    def encode(self, text: str) -> list[int]:
        """Ids for untrusted text: never a special id, and decode() gives `text` back exactly.

        UnencodableText when `text` holds a lone surrogate (check_encodable first to name where)."""
        try:
            return self._encode(text)
        except RuntimeError:  # sentencepiece's binding cannot cast a str without a UTF-8 form
            check_encodable(text, "the text")
            raise

    def _encode(self, text: str) -> list[int]:
        if SPACE_MARK not in text:
            return self.sp.encode(text)
        ids: list[int] = []
        for i, part in enumerate(text.split(SPACE_MARK)):
            if i:
                ids.extend(self._mark_ids)
            if part:
                ids.extend(self.sp.encode(part))
        return ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        plain = [t for t in texts if SPACE_MARK not in t]
        if len(plain) == len(texts):
            try:
                return self.sp.encode(texts)
            except (RuntimeError, TypeError):  # the binding's batch path reports a cast failure as TypeError
                for k, t in enumerate(texts):
                    check_encodable(t, f"text {k}")
                raise
        return [self.encode(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; special ids decode to nothing (use piece() to show them)."""
        return self.sp.decode([int(i) for i in ids])

    def piece(self, token_id: int) -> str:
        return self.sp.id_to_piece(int(token_id))

    def is_byte(self, token_id: int) -> bool:
        return self.sp.is_byte(int(token_id))

    def byte_piece_ids(self) -> np.ndarray:
        return np.array([self.sp.is_byte(i) for i in range(self.vocab_size)], dtype=bool)

    def token_byte_lengths(self) -> np.ndarray:
        """UTF-8 bytes each id stands for (specials and <unk> count 0): the denominator of bits/byte."""
        out = np.zeros(self.vocab_size, dtype=np.int32)
        for i in range(self.vocab_size):
            if self.sp.is_control(i) or self.sp.is_unknown(i):
                continue
            if self.sp.is_byte(i):
                out[i] = 1
            else:
                out[i] = len(self.sp.id_to_piece(i).replace(SPACE_MARK, " ").encode("utf-8"))
        return out


def _sentences(text: str) -> Iterator[str]:
    """Lines of a document, cut to sentencepiece's maximum sentence size (it skips longer ones)."""
    for line in text.split("\n"):
        if not line.strip():
            continue
        data = line.encode("utf-8")
        while len(data) > MAX_SENTENCE_BYTES:
            cut = MAX_SENTENCE_BYTES
            while cut > 0 and (data[cut] & 0xC0) == 0x80:  # do not split a UTF-8 character
                cut -= 1
            yield data[:cut].decode("utf-8")
            data = data[cut:]
        if data:
            yield data.decode("utf-8")


@dataclass
class SourceSample:
    """Text taken from one source for tokenizer training (or a report)."""

    source: str
    texts: list[str]
    origin: str

    @property
    def num_bytes(self) -> int:
        return sum(len(t.encode("utf-8")) for t in self.texts)


def take_sample(source: str, texts: Iterable[tuple[str, str]], max_bytes: int, origin: str = "") -> SourceSample:
    """Documents `(ref, text)` in source order until `max_bytes`; each checked for special tokens."""
    taken: list[str] = []
    used = 0
    for ref, text in texts:
        check_encodable(text, f"Source '{source}', document {ref}")
        check_training_text(text, source, ref)
        data = text.encode("utf-8")
        if used + len(data) > max_bytes:
            room = max_bytes - used
            if room > 0:
                taken.append(data[:room].decode("utf-8", errors="ignore"))
            break
        taken.append(text)
        used += len(data)
    return SourceSample(source, taken, origin)


def configured_sources(settings: Settings) -> list[str]:
    """tokenizer.sources, or the sources the mixes use, in canonical order (pretrain first): what the tokenizer covers."""
    used = set(settings.tokenizer.sources or ()) or set(settings.data.mix_pretrain) | set(settings.data.mix_sft)
    return [name for name in PRETRAIN_SOURCES + SFT_SOURCES if name in used]


def sample_sources(
    settings: Settings, max_bytes: int, split: str = "train", on_source: Callable[[str, str], None] | None = None
) -> list[SourceSample]:
    """The tokenizer's sample: the first `max_bytes` of `split` of every source the mixes use.

    Every source is checked before any is read (one error naming each that cannot be). on_source(name,
    origin) is called as each is read, e.g. for a status line.
    """
    from ngpt.sources import iter_texts  # imports `datasets` (slow): only when sampling
    from ngpt.sources.preflight import open_checked

    samples = []
    for source in open_checked(configured_sources(settings), settings):
        if on_source is not None:
            on_source(source.name, source.origin)
        samples.append(take_sample(source.name, iter_texts(source, split), max_bytes, source.origin))
    return samples


def train_tokenizer(
    samples: list[SourceSample], out_dir: str | Path, vocab_size: int, seed: int, threads: int | None = None
) -> dict:
    """Train the unigram model on the samples; write spm.model + tokenizer_meta.json atomically."""
    out = Path(out_dir)
    sentences = [s for sample in samples for text in sample.texts for s in _sentences(text)]
    if not sentences:
        raise ValueError("No training text: every configured source gave an empty sample; check the source paths.")
    random.Random(seed).shuffle(sentences)
    spm.set_random_generator_seed(seed)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        model_type="unigram",
        vocab_size=vocab_size,
        control_symbols=list(SPECIAL_TOKENS),
        user_defined_symbols=["\n"],  # newlines are frequent; one id instead of a byte-fallback id
        byte_fallback=True,
        normalization_rule_name="identity",  # lossless: no NFKC, no whitespace folding
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        allow_whitespace_only_pieces=True,
        split_digits=True,
        max_sentence_length=MAX_SENTENCE_BYTES,
        unk_id=0,
        bos_id=-1,
        eos_id=-1,
        pad_id=-1,
        shuffle_input_sentence=False,
        hard_vocab_limit=False,  # tiny demo corpora cannot always fill the requested vocab
        num_threads=threads or os.cpu_count() or 1,
        minloglevel=2,
    )
    model_path = out / "spm.model"
    atomic_write_bytes(model_path, model.getvalue())
    tok = Tokenizer(model_path)
    meta = {
        "sha256": tok.sha256,
        "vocab_size": tok.vocab_size,
        "requested_vocab_size": vocab_size,
        "special_ids": tok.special_ids,
        "seed": seed,
        "model_type": "unigram",
        "sources": {s.source: {"bytes": s.num_bytes, "documents": len(s.texts), "from": s.origin} for s in samples},
    }
    atomic_write_text(out / "tokenizer_meta.json", json.dumps(meta, indent=2))
    return meta


def report_rows(tok: Tokenizer, samples: list[SourceSample]) -> list[dict]:
    """Per source: bytes, tokens, bytes/token and the share of ids that are byte-fallback pieces."""
    is_byte = tok.byte_piece_ids()
    rows = []
    for sample in samples:
        n_bytes = sample.num_bytes
        n_tokens = n_fallback = 0
        for ids in tok.encode_batch(sample.texts):
            arr = np.asarray(ids, dtype=np.int64)
            n_tokens += arr.size
            n_fallback += int(is_byte[arr].sum()) if arr.size else 0
        rows.append(
            {
                "source": sample.source,
                "bytes": n_bytes,
                "tokens": n_tokens,
                "bytes_per_token": n_bytes / n_tokens if n_tokens else 0.0,
                "byte_fallback_share": n_fallback / n_tokens if n_tokens else 0.0,
            }
        )
    return rows


class TextStream:
    """Incremental detokenizer: the text each new id adds, without splitting multi-byte characters.

    Byte-fallback ids carry one UTF-8 byte each, and an incomplete character decodes to U+FFFD; so
    text is released only when decode(all ids) ends cleanly, as the part not released before.
    `flush` releases the rest at the end, so the pieces always concatenate to decode(all ids).
    """

    def __init__(self, tok: Tokenizer) -> None:
        self.tok = tok
        self.ids: list[int] = []
        self.emitted = ""

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.tok.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        return self._release(text)

    def flush(self) -> str:
        return self._release(self.tok.decode(self.ids))

    def _release(self, text: str) -> str:
        piece = text[len(self.emitted) :]
        self.emitted = text
        return piece
