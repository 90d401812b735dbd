"""BM25 (Lucene variant) score matrix built from a stream of tokenized texts, in memory bounded by the index.

Why not ``bm25s.BM25.index``: it takes every text's token list at once (a Python string per token: ~20 GB at 1.8
million chunks) and loops over documents in Python with a ``Counter`` each. Here each batch of token lists becomes
int32 term ids and per-document term counts as it arrives, and the matrix is placed column by column from those
counts. The result is bm25s's own matrix, value for value (the same float64 arithmetic rounded to float32; a test
checks it against ``bm25s.BM25.index``), handed to a ``bm25s.BM25`` for scoring, so rankings do not change.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class BM25Matrix:
    """Term-major (CSC) BM25 scores: column ``t`` holds ``data[indptr[t]:indptr[t+1]]`` for the documents
    ``indices[...]`` (ascending) that contain term ``vocab[...] == t``."""

    data: np.ndarray  # float32
    indices: np.ndarray  # int32 document numbers
    indptr: np.ndarray  # int64, len(vocab) + 1
    num_docs: int
    vocab: dict[str, int]


def build_bm25_matrix(token_batches: Iterable[list[list[str]]], k1: float, b: float) -> BM25Matrix:
    """The Lucene-variant BM25 matrix of every document in ``token_batches`` (batches of token lists, in order)."""
    return TermCounts.count(token_batches).matrix(k1, b)


COUNT_FILES = ("per_doc", "terms", "tfs", "lengths")
PLACE_DOCS = 8_192  # documents placed into the matrix at a time (bounds the placement's temporary arrays)


@dataclass
class TermCounts:
    """What BM25 needs of a corpus, whatever k1 and b: each document's distinct term ids with their counts, each
    document's length, and the vocabulary (term ids in order of first appearance).

    The ``bm25`` stage counts the corpus once and saves these arrays (:meth:`save`); pairs and negatives load them
    memory-mapped (:meth:`load`) instead of tokenizing two million chunks each. Every score is computed from them by
    the same arithmetic as before, so the matrix and the subset are the same bytes whoever counted."""

    per_doc: np.ndarray  # int32: each document's number of distinct terms
    terms: np.ndarray  # int32 term ids, document by document, ascending within a document
    tfs: np.ndarray  # their counts (uint16, int64 if a count reaches 65,536)
    lengths: np.ndarray  # int64: each document's number of tokens
    vocab: dict[str, int]

    @classmethod
    def count(cls, token_batches: Iterable[list[list[str]]]) -> TermCounts:
        vocab: dict[str, int] = {}
        parts = [_count_terms(batch, vocab) for batch in token_batches]

        def joined(name: str, dtype: type) -> np.ndarray:
            return np.concatenate([getattr(p, name) for p in parts]) if parts else np.zeros(0, dtype=dtype)

        return cls(
            joined("per_doc", np.int32),
            joined("terms", np.int32),
            joined("tfs", np.uint16),
            joined("lengths", np.int64),
            vocab,
        )

    @property
    def num_docs(self) -> int:
        return len(self.lengths)

    def save(self, folder: Path) -> None:
        """The arrays as .npy files and the vocabulary as ``vocab.json`` (a list in id order)."""
        folder.mkdir(parents=True, exist_ok=True)
        for name in COUNT_FILES:
            np.save(folder / f"{name}.npy", getattr(self, name))
        (folder / "vocab.json").write_text(json.dumps(list(self.vocab), ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> TermCounts:
        """The arrays memory-mapped (read as scoring needs them), the vocabulary in memory."""
        arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in COUNT_FILES}
        terms = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        return cls(**arrays, vocab={t: i for i, t in enumerate(terms)})

    def _stats(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """Document frequencies, idf, the end of each document's pairs and the mean length, as bm25s computes
        them (the mean an ``np.float64``)."""
        df = np.bincount(self.terms, minlength=len(self.vocab)).astype(np.int64)
        ends = np.cumsum(self.per_doc, dtype=np.int64)
        avg_doc_len = self.lengths.mean() if self.num_docs else 0.0
        return df, lucene_idf(df, self.num_docs), ends, avg_doc_len

    def matrix(self, k1: float, b: float) -> BM25Matrix:
        """The term-major BM25 matrix, placed :data:`PLACE_DOCS` documents at a time."""
        df, idf, ends, avg_doc_len = self._stats()
        n_vocab = len(self.vocab)
        indptr = np.zeros(n_vocab + 1, dtype=np.int64)
        np.cumsum(df, out=indptr[1:])
        data = np.empty(int(indptr[-1]), dtype=np.float32)
        indices = np.empty(int(indptr[-1]), dtype=np.int32)
        free = indptr[:-1].copy()  # next free slot of each column
        doc_len = np.asarray(self.lengths)
        for first in range(0, self.num_docs, PLACE_DOCS):
            last = min(first + PLACE_DOCS, self.num_docs)
            lo, hi = int(ends[first - 1]) if first else 0, int(ends[last - 1])
            t = np.asarray(self.terms[lo:hi])
            d = np.repeat(np.arange(first, last, dtype=np.int32), self.per_doc[first:last])
            scores = _term_scores(np.asarray(self.tfs[lo:hi]), doc_len[d], idf[t], avg_doc_len, k1, b)
            order = np.argsort(t, kind="stable")  # by term; documents stay ascending within a term
            t_sorted = t[order]
            uniq, first_of, count = np.unique(t_sorted, return_index=True, return_counts=True)
            pos = free[t_sorted] + (np.arange(len(t_sorted)) - np.repeat(first_of, count))
            data[pos] = scores[order]
            indices[pos] = d[order]
            free[uniq] += count
        return BM25Matrix(data, indices, indptr, self.num_docs, dict(self.vocab))

    def subset(self, keep: Iterable[int], k1: float, b: float) -> BM25Subset:
        """The BM25 rows of documents ``keep`` (positions), in ascending position order, under the statistics of
        every document."""
        wanted = sorted(set(keep))
        if wanted and wanted[-1] >= self.num_docs:
            raise IndexError(f"document {wanted[-1]} asked for, but the corpus holds {self.num_docs} documents")
        _, idf, ends, avg_doc_len = self._stats()
        rows = []
        for doc in wanted:
            span = slice(int(ends[doc] - self.per_doc[doc]), int(ends[doc]))
            terms, tf = np.asarray(self.terms[span]), np.asarray(self.tfs[span])
            length = int(self.lengths[doc])
            scores = _term_scores(tf, np.full(len(tf), length, dtype=np.int64), idf[terms], avg_doc_len, k1, b)
            rows.append(dict(zip(terms.tolist(), scores, strict=True)))
        return BM25Subset(rows, dict(self.vocab))


@dataclass
class BM25Subset:
    """BM25 rows of a few documents (``rows[i]``: term id → score) under the statistics of the whole corpus.

    What :meth:`scores` returns for them is what the full matrix's ``bm25s`` scoring returns, bit for bit: the same
    float32 entries added in the same order (query tokens in order, repeats included). Built for the pairs stage,
    which needs BM25 only within the few documents its questions name, not over 1.8 million chunks.
    """

    rows: list[dict[int, np.float32]]
    vocab: dict[str, int]

    def scores(self, tokens: list[str], rows: Sequence[int] | None = None) -> np.ndarray:
        """The scores of rows ``rows`` (default: every row) for a query of ``tokens``; only those rows are summed,
        so a caller that needs a handful of rows per query does not pay for all of them."""
        ids = [self.vocab[t] for t in tokens if t in self.vocab]
        picked = range(len(self.rows)) if rows is None else rows
        out = np.zeros(len(picked), dtype=np.float32)
        for i, r in enumerate(picked):
            row, acc = self.rows[r], np.float32(0.0)
            for t in ids:
                if t in row:
                    acc = acc + row[t]  # float32 + float32: rounded as bm25s's float32 accumulator rounds
            out[i] = acc
        return out


def build_bm25_subset(token_batches: Iterable[list[list[str]]], keep: Iterable[int], k1: float, b: float) -> BM25Subset:
    """The BM25 rows of documents ``keep`` (positions in the stream), in ascending position order, with the idf and
    mean length of every document in ``token_batches``."""
    return TermCounts.count(token_batches).subset(keep, k1, b)


@dataclass
class _Counted:
    per_doc: np.ndarray  # int32: each document's number of distinct terms
    terms: np.ndarray  # int32 term ids, document by document, ascending within a document
    tfs: np.ndarray  # their counts
    lengths: np.ndarray  # int64: each document's number of tokens


def _count_terms(batch: list[list[str]], vocab: dict[str, int]) -> _Counted:
    """One batch's (document, term, count) triples; new terms join ``vocab`` in order of first appearance."""
    flat = [t for tokens in batch for t in tokens]
    for t in dict.fromkeys(flat):
        if t not in vocab:
            vocab[t] = len(vocab)
    ids = np.fromiter(map(vocab.__getitem__, flat), dtype=np.int64, count=len(flat))
    n_tokens = np.fromiter((len(tokens) for tokens in batch), dtype=np.int64, count=len(batch))
    local = np.repeat(np.arange(len(batch), dtype=np.int64), n_tokens)
    # one (document, term) pair per distinct term of each document, with its count, sorted by document
    keys, counts = np.unique(local * (len(vocab) + 1) + ids, return_counts=True)
    return _Counted(
        per_doc=np.bincount(keys // (len(vocab) + 1), minlength=len(batch)).astype(np.int32),
        terms=(keys % (len(vocab) + 1)).astype(np.int32),
        tfs=counts.astype(np.uint16 if counts.max(initial=0) < 65_536 else np.int64),  # 2 bytes for a chunk
        lengths=n_tokens,
    )


def lucene_idf(df: np.ndarray, num_docs: int) -> np.ndarray:
    """bm25s's Lucene idf, computed with ``math.log`` per term (``scoring._score_idf_lucene``), stored as float32."""
    return np.array([math.log(1 + (num_docs - d + 0.5) / (d + 0.5)) for d in df.tolist()], dtype=np.float32)


def _term_scores(
    tf: np.ndarray, doc_len: np.ndarray, idf: np.ndarray, avg_doc_len: float, k1: float, b: float
) -> np.ndarray:
    """idf · tf / (k1·((1 − b) + b·|d|/avgdl) + tf), in float64 as bm25s's scalar expression promotes it, stored
    as float32."""
    tf64 = tf.astype(np.float64)
    tfc = tf64 / (k1 * ((1 - b) + b * doc_len.astype(np.float64) / avg_doc_len) + tf64)
    return (idf.astype(np.float64) * tfc).astype(np.float32)


def bm25s_retriever(matrix: BM25Matrix, k1: float, b: float):  # -> bm25s.BM25
    """A ``bm25s.BM25`` scoring with ``matrix``: the attributes its ``index`` method sets, set from ours."""
    import bm25s

    engine = bm25s.BM25(k1=k1, b=b, method="lucene")
    engine.scores = {
        "data": matrix.data,
        "indices": matrix.indices,
        "indptr": matrix.indptr,
        "num_docs": matrix.num_docs,
    }
    engine.vocab_dict = dict(matrix.vocab)
    engine.nonoccurrence_array = None
    engine.unique_token_ids_set = set(engine.vocab_dict.values())
    return engine
