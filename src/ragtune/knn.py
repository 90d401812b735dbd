"""Exact top-k inner-product search over vectors read block by block (dense mining at corpus scale).

At 2 million chunks the corpus's e5-small vectors are 3 GB of float32. sentence-transformers' ``mine_hard_negatives``
holds them in memory and, without FAISS, scores a batch of up to 16,384 queries against all of them at once (a
16,384 × 2M float matrix: 131 GB). Here the corpus arrives as blocks (memory-mapped shards of
:class:`ragtune.retrieval.VectorShards`, or slices of one memory-mapped array), each block is searched for every
query's best k, and a running best k per query is kept: memory is one block, the queries and a ``[n_queries, 2k]``
buffer, whatever the corpus size.

The search is exact (brute force): at this size it fits the time budget (``benchmarks/knn_backends.py`` measures
it), and an approximate index would make mined negatives depend on index build parameters. Three backends compute
a block's top k; ``benchmarks/knn_backends.py`` measured them and FAISS is the default (``DEFAULT_BACKEND`` says
why). Results are ordered by score, ties by the lower corpus row, so they do not depend on the backend's own order
among equal scores.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import numpy as np

Backend = Literal["faiss", "usearch", "numpy"]
BACKENDS: tuple[Backend, ...] = ("faiss", "usearch", "numpy")
# benchmarks/knn_backends.py, 3,000 queries × 2,023,481 chunks (384-d) on 2 cores: faiss 36 s, numpy 73 s, usearch's
# exact search 464 s; faiss's rows equal numpy's on every query (usearch's on 99.6%: it reports 1 − q·x, whose
# rounding reorders near-ties)
DEFAULT_BACKEND: Backend = "faiss"
BLOCK_ROWS = 65_536  # corpus rows searched at a time: 96 MiB of 384-d float32
QUERY_ROWS = 1_024  # queries scored at a time by the numpy backend: a 1,024 × 65,536 float32 matrix is 256 MiB


def _block_numpy(queries: np.ndarray, block: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores_out = np.empty((len(queries), k), dtype=np.float32)
    index_out = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), QUERY_ROWS):
        sims = queries[start : start + QUERY_ROWS] @ block.T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        scores_out[start : start + len(sims)] = np.take_along_axis(sims, top, axis=1)
        index_out[start : start + len(sims)] = top
    return scores_out, index_out


def _block_faiss(queries: np.ndarray, block: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    scores, index = faiss.knn(queries, np.ascontiguousarray(block), k, metric=faiss.METRIC_INNER_PRODUCT)
    return scores, index.astype(np.int64, copy=False)


def _block_usearch(queries: np.ndarray, block: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    from usearch.index import MetricKind, search

    found = search(np.ascontiguousarray(block), queries, k, MetricKind.IP, exact=True)
    # usearch reports the inner-product distance 1 − q·x
    return (1.0 - found.distances).astype(np.float32), found.keys.astype(np.int64)


_SEARCH = {"numpy": _block_numpy, "faiss": _block_faiss, "usearch": _block_usearch}


def order_rows(scores: np.ndarray, index: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's best ``k`` by score, ties broken by the lower index: the order does not depend on a backend's own
    order among equal scores, nor on how the corpus was cut into blocks (only an exact tie at a block's k-th place
    can still make backends keep different rows). Padding (index −1, score −inf) sorts last."""
    order = np.lexsort((index, -scores), axis=-1)[:, :k]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(index, order, axis=1)


def exact_top_k(
    queries: np.ndarray, blocks: Iterable[np.ndarray], k: int, backend: Backend = DEFAULT_BACKEND
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` highest inner products of each query over the rows of ``blocks`` taken in order as one corpus:
    ``(scores, rows)``, shape ``[n_queries, k]``, best first; rows count from the first block's first row. A corpus
    of fewer than ``k`` rows pads with row −1 and score −inf."""
    if backend not in _SEARCH:
        raise ValueError(f"knn backend {backend!r} is not one of {', '.join(BACKENDS)}")
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    best_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_rows = np.full((len(queries), k), -1, dtype=np.int64)
    offset = 0
    for block in blocks:
        if not len(block) or not len(queries):
            offset += len(block)
            continue
        kk = min(k, len(block))
        scores, rows = _SEARCH[backend](queries, np.asarray(block, dtype=np.float32), kk)
        best_scores, best_rows = order_rows(
            np.concatenate([best_scores, scores], axis=1), np.concatenate([best_rows, rows + offset], axis=1), k
        )
        offset += len(block)
    return best_scores, best_rows


def array_blocks(vectors: np.ndarray, rows: int = BLOCK_ROWS) -> Iterable[np.ndarray]:
    """Slices of one (possibly memory-mapped) array, ``rows`` at a time: only the block being searched is read."""
    for start in range(0, len(vectors), rows):
        yield vectors[start : start + rows]
