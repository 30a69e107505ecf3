"""Byte-level text data for benchmarks/transformers.py, from files every CPython (and this Debian image) has.

The corpus is English prose from Python's own help topics (``pydoc_data.topics``, 466 KB, ships with
CPython), optionally followed by Debian's Node.js API docs (``/usr/share/doc/nodejs/api/*.md``, 3.5 MB of
Markdown) when they are installed. Token ids are the raw UTF-8 bytes (vocabulary 256), so no tokenizer
and no download is needed.

The text is cut into non-overlapping windows of ``T + 1`` bytes (inputs are the first ``T``, targets
the last ``T``). Windows are grouped into blocks of ``BLOCK`` consecutive windows, and the blocks are
dealt out in a fixed pattern: in every run of 10 blocks, block 8 goes to validation, block 9 to the
held-out test set, the rest to training. The test text therefore comes from every part of the corpus
but never overlaps training text. Everything is deterministic (no randomness in the split).

>>> d = load(seq_len=128)
>>> d.train.shape[1], d.test.shape[1]
(129, 129)
>>> b = calibration(d, 8, seed=0)
>>> sorted(b), b["token_ids"].dtype.name, b["token_ids"].shape
(['padding_mask', 'token_ids'], 'int32', (8, 128))
"""

from __future__ import annotations

import glob
import hashlib
from dataclasses import dataclass, field

import numpy as np

VOCAB = 256
BLOCK = 16  # windows per block of the train/validation/test pattern
NODEJS_GLOB = "/usr/share/doc/nodejs/api/*.md"
CORPORA = ("pydoc", "pydoc+nodejs")


def pydoc_text() -> str:
    """Python's help topics (``pydoc_data.topics``), in sorted key order."""
    import pydoc_data.topics as t

    return "\n".join(t.topics[k] for k in sorted(t.topics))


def nodejs_text() -> str | None:
    """Debian's Node.js API Markdown docs, or None when they are not installed."""
    files = sorted(glob.glob(NODEJS_GLOB))
    if not files:
        return None
    parts = []
    for f in files:
        with open(f, encoding="utf-8", errors="replace") as fh:
            parts.append(fh.read())
    return "\n".join(parts)


def corpus_bytes(corpus: str = "pydoc") -> tuple[np.ndarray, dict]:
    """The corpus as an int32 array of byte ids, and a description (sources, size, sha256 prefix).

    ``corpus="pydoc+nodejs"`` falls back to pydoc alone (and says so in the description) when the Node.js
    docs are missing."""
    if corpus not in CORPORA:
        raise ValueError(f"corpus must be one of {CORPORA}, got {corpus!r}")
    sources = ["pydoc_data.topics"]
    text = pydoc_text()
    note = None
    if corpus == "pydoc+nodejs":
        extra = nodejs_text()
        if extra is None:
            note = f"no files match {NODEJS_GLOB}; using pydoc_data.topics alone"
        else:
            text = text + "\n" + extra
            sources.append(NODEJS_GLOB)
    raw = text.encode("utf-8")
    info = dict(corpus=corpus, sources=sources, bytes=len(raw), sha256=hashlib.sha256(raw).hexdigest()[:12])
    if note:
        info["note"] = note
    return np.frombuffer(raw, dtype=np.uint8).astype("int32"), info


@dataclass
class LMData:
    """Windows of ``seq_len + 1`` byte ids: ``train``, ``validation`` and ``test`` (int32, (n, seq_len+1))."""

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    seq_len: int
    info: dict = field(default_factory=dict)

    def key(self) -> str:
        """A short id of the corpus and window length (used to name cached models)."""
        return f"{self.info['corpus'].replace('+', '_')}_{self.info['sha256'][:8]}_T{self.seq_len}"


def load(seq_len: int = 128, corpus: str = "pydoc") -> LMData:
    """The fixed train / validation / test split (see the module docstring)."""
    ids, info = corpus_bytes(corpus)
    n = (len(ids) - 1) // seq_len
    idx = np.arange(n)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
    windows = ids[idx]
    part = (np.arange(n) // BLOCK) % 10
    d = LMData(train=windows[part < 8], validation=windows[part == 8], test=windows[part == 9],
               seq_len=seq_len, info=info)
    d.info.update(seq_len=seq_len, windows=dict(train=len(d.train), validation=len(d.validation), test=len(d.test)),
                  split=f"blocks of {BLOCK} windows; in every 10 blocks: 8 train, 1 validation, 1 test")
    return d


def as_inputs(windows: np.ndarray, lengths: np.ndarray | None = None):
    """``(x, y, sample_weight)`` for a causal LM from windows of ``T + 1`` ids.

    ``x`` is ``{"token_ids", "padding_mask"}`` (int32, (n, T)), ``y`` the next ids, ``sample_weight`` the
    padding mask as float32. With ``lengths``, row ``i`` keeps its first ``lengths[i]`` inputs: the rest
    is padding (id 0, mask 0, weight 0)."""
    windows = np.asarray(windows)
    T = windows.shape[1] - 1
    x = windows[:, :-1].astype("int32").copy()
    y = windows[:, 1:].astype("int32").copy()
    mask = np.ones_like(x)
    if lengths is not None:
        mask = (np.arange(T)[None, :] < np.asarray(lengths)[:, None]).astype("int32")
        x = x * mask
        y = y * mask
    return {"token_ids": x, "padding_mask": mask}, y, mask.astype("float32")


def calibration(data: LMData, n: int = 128, seed: int = 0, padded_fraction: float = 0.25,
                min_length: int = 16) -> dict:
    """``n`` calibration sequences from the training windows: ``{"token_ids", "padding_mask"}`` (int32, (n, T)).

    A fixed random choice (``seed``). The last ``round(n * padded_fraction)`` rows are padded: each keeps a
    random prefix of ``min_length .. T-1`` bytes, followed by id 0 with padding_mask 0, so that calibration
    code meets real padding."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(data.train), size=n, replace=False)
    T = data.seq_len
    lengths = np.full(n, T)
    n_pad = int(round(n * padded_fraction))
    if n_pad:
        lengths[n - n_pad:] = rng.integers(min_length, T, size=n_pad)
    x, _, _ = as_inputs(data.train[rows], lengths)
    return x


def decode(ids) -> str:
    """Byte ids back to text (invalid UTF-8 replaced)."""
    return bytes(np.asarray(ids).astype(np.uint8).tolist()).decode("utf-8", "replace")


def encode(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype("int32")


if __name__ == "__main__":
    for c in CORPORA:
        d = load(128, c)
        print(c, d.info, d.key())
    b = calibration(load(128), 8)
    print(b["padding_mask"].sum(1))
