"""BM25 (Lucene variant) score matrix built from a stream of tokenized texts, in memory bounded by the index.

Why not ``bm25s.BM25.index``: it takes every text's token list at once (a Python string per token: ~20 GB at 1.8
million chunks) and loops over documents in Python with a ``Counter`` each. Here each batch of token lists becomes
int32 term ids and per-document term counts as it arrives, and the matrix is placed column by column from those
counts. The result is bm25s's own matrix, value for value (the same float64 arithmetic rounded to float32; a test
checks it against ``bm25s.BM25.index``), handed to a ``bm25s.BM25`` for scoring, so rankings do not change.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

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
    vocab: dict[str, int] = {}
    # per batch: each document's number of distinct terms, then (term, count) pairs in document order: 6 bytes a
    # pair (the documents are rebuilt from the first array when the matrix is placed)
    per_doc, terms, tfs, lengths = [], [], [], []
    for batch in token_batches:
        counted = _count_terms(batch, vocab)
        per_doc.append(counted.per_doc)
        terms.append(counted.terms)
        tfs.append(counted.tfs)
        lengths.append(counted.lengths)
    n_vocab = len(vocab)
    doc_len = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)
    df = np.zeros(n_vocab, dtype=np.int64)
    for t in terms:
        df += np.bincount(t, minlength=n_vocab)
    avg_doc_len = doc_len.mean() if len(doc_len) else 0.0  # np.float64, as bm25s computes it
    idf = lucene_idf(df, len(doc_len))
    indptr = np.zeros(n_vocab + 1, dtype=np.int64)
    np.cumsum(df, out=indptr[1:])
    data = np.empty(int(indptr[-1]), dtype=np.float32)
    indices = np.empty(int(indptr[-1]), dtype=np.int32)
    free = indptr[:-1].copy()  # next free slot of each column
    first_doc_of_batch = 0
    for n_terms, t, tf in zip(per_doc, terms, tfs, strict=True):
        d = np.repeat(np.arange(first_doc_of_batch, first_doc_of_batch + len(n_terms), dtype=np.int32), n_terms)
        first_doc_of_batch += len(n_terms)
        scores = _term_scores(tf, doc_len[d], idf[t], avg_doc_len, k1, b)
        order = np.argsort(t, kind="stable")  # by term; documents stay ascending within a term
        t_sorted = t[order]
        uniq, first, count = np.unique(t_sorted, return_index=True, return_counts=True)
        pos = free[t_sorted] + (np.arange(len(t_sorted)) - np.repeat(first, count))
        data[pos] = scores[order]
        indices[pos] = d[order]
        free[uniq] += count
    return BM25Matrix(data, indices, indptr, len(doc_len), vocab)


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
    mean length of every document in ``token_batches``. Memory: the vocabulary and one batch, whatever the size of
    the corpus."""
    wanted = sorted(set(keep))
    vocab: dict[str, int] = {}
    df = np.zeros(0, dtype=np.int64)
    lengths = []
    kept: list[tuple[np.ndarray, np.ndarray, int]] = []  # (terms, tfs, length) of each kept document
    next_wanted, first_doc = 0, 0
    for batch in token_batches:
        counted = _count_terms(batch, vocab)
        if len(df) < len(vocab):
            df = np.concatenate([df, np.zeros(len(vocab) - len(df), dtype=np.int64)])
        df += np.bincount(counted.terms, minlength=len(vocab))
        lengths.append(counted.lengths)
        ends = np.cumsum(counted.per_doc)
        while next_wanted < len(wanted) and wanted[next_wanted] < first_doc + len(batch):
            local = wanted[next_wanted] - first_doc
            span = slice(int(ends[local] - counted.per_doc[local]), int(ends[local]))
            kept.append((counted.terms[span], counted.tfs[span], int(counted.lengths[local])))
            next_wanted += 1
        first_doc += len(batch)
    if next_wanted < len(wanted):
        raise IndexError(f"document {wanted[next_wanted]} asked for, but the stream holds {first_doc} documents")
    doc_len = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)
    avg_doc_len = doc_len.mean() if len(doc_len) else 0.0
    idf = lucene_idf(df, first_doc)
    rows = []
    for terms, tf, length in kept:
        scores = _term_scores(tf, np.full(len(tf), length, dtype=np.int64), idf[terms], avg_doc_len, k1, b)
        rows.append(dict(zip(terms.tolist(), scores, strict=True)))
    return BM25Subset(rows, vocab)


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
