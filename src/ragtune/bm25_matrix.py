"""BM25 (Lucene variant) score matrix built from a stream of tokenized texts, in memory bounded by the index.

Why not ``bm25s.BM25.index``: it takes every text's token list at once (a Python string per token: ~20 GB at 1.8
million chunks) and loops over documents in Python with a ``Counter`` each. Here each batch of token lists becomes
int32 term ids and per-document term counts as it arrives, and the matrix is placed column by column from those
counts. The result is bm25s's own matrix, value for value (the same float64 arithmetic rounded to float32; a test
checks it against ``bm25s.BM25.index``), handed to a ``bm25s.BM25`` for scoring, so rankings do not change.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
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
    first_doc = 0
    for batch in token_batches:
        flat = [t for tokens in batch for t in tokens]
        for t in dict.fromkeys(flat):  # new terms get ids in order of first appearance
            if t not in vocab:
                vocab[t] = len(vocab)
        ids = np.fromiter(map(vocab.__getitem__, flat), dtype=np.int64, count=len(flat))
        n_tokens = np.fromiter((len(tokens) for tokens in batch), dtype=np.int64, count=len(batch))
        local = np.repeat(np.arange(len(batch), dtype=np.int64), n_tokens)
        # one (document, term) pair per distinct term of each document, with its count, sorted by document
        keys, counts = np.unique(local * (len(vocab) + 1) + ids, return_counts=True)
        per_doc.append(np.bincount(keys // (len(vocab) + 1), minlength=len(batch)).astype(np.int32))
        terms.append((keys % (len(vocab) + 1)).astype(np.int32))
        tfs.append(counts.astype(np.uint16 if counts.max(initial=0) < 65_536 else np.int64))  # 2 bytes for a chunk
        lengths.append(n_tokens)
        first_doc += len(batch)
    n_vocab = len(vocab)
    doc_len = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)
    df = np.zeros(n_vocab, dtype=np.int64)
    for t in terms:
        df += np.bincount(t, minlength=n_vocab)
    avg_doc_len = doc_len.mean() if len(doc_len) else 0.0  # np.float64, as bm25s computes it
    # bm25s computes idf with math.log per term (scoring._score_idf_lucene), stored as float32
    idf = np.array([math.log(1 + (first_doc - d + 0.5) / (d + 0.5)) for d in df.tolist()], dtype=np.float32)
    indptr = np.zeros(n_vocab + 1, dtype=np.int64)
    np.cumsum(df, out=indptr[1:])
    data = np.empty(int(indptr[-1]), dtype=np.float32)
    indices = np.empty(int(indptr[-1]), dtype=np.int32)
    free = indptr[:-1].copy()  # next free slot of each column
    first_doc_of_batch = 0
    for n_terms, t, tf in zip(per_doc, terms, tfs, strict=True):
        d = np.repeat(np.arange(first_doc_of_batch, first_doc_of_batch + len(n_terms), dtype=np.int32), n_terms)
        first_doc_of_batch += len(n_terms)
        # tfc = tf / (k1·((1 − b) + b·|d|/avgdl) + tf), in float64 as bm25s's scalar expression promotes it
        tf64 = tf.astype(np.float64)
        tfc = tf64 / (k1 * ((1 - b) + b * doc_len[d].astype(np.float64) / avg_doc_len) + tf64)
        scores = (idf[t].astype(np.float64) * tfc).astype(np.float32)
        order = np.argsort(t, kind="stable")  # by term; documents stay ascending within a term
        t_sorted = t[order]
        uniq, first, count = np.unique(t_sorted, return_index=True, return_counts=True)
        pos = free[t_sorted] + (np.arange(len(t_sorted)) - np.repeat(first, count))
        data[pos] = scores[order]
        indices[pos] = d[order]
        free[uniq] += count
    return BM25Matrix(data, indices, indptr, first_doc, vocab)


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
