"""Which chunk of a relevant document is a query's positive: labels name documents, training needs passages."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ragtune.pairs.corpus import ChunkSlice
from ragtune.retrieval import bm25_row_scorer, load_dense

if TYPE_CHECKING:
    from ragtune.bm25_matrix import TermCounts

ScoreFn = Callable[[int, list[int]], np.ndarray]


def align_positive_chunks(
    queries: Sequence[dict[str, Any]],
    chunks_by_doc: dict[str, list[int]],
    chunk_ids: Sequence[str],
    scorers: Sequence[ScoreFn],
) -> list[list[str]]:
    """For each query, the chunk of each relevant document that best matches it.

    Labels name documents; training and chunk-level evaluation need the passage. Within a relevant document the
    chunk is chosen by reciprocal-rank fusion of the ``scorers`` (BM25 and base dense: either alone would bias
    chunk-level evaluation towards that system). A scorer maps ``(query_index, chunk_indices)`` to scores.
    """
    out: list[list[str]] = []
    for qi, q in enumerate(queries):
        picked = []
        for doc_id in q["positive_doc_ids"]:
            idx = chunks_by_doc.get(doc_id, [])
            if not idx:
                continue
            if len(idx) == 1:
                picked.append(chunk_ids[idx[0]])
                continue
            fused = np.zeros(len(idx))
            for scorer in scorers:
                local = np.asarray(scorer(qi, idx))
                ranks = np.empty(len(idx))
                ranks[np.argsort(-local, kind="stable")] = np.arange(1, len(idx) + 1)
                fused += 1.0 / (60 + ranks)
            picked.append(chunk_ids[idx[int(np.argmax(fused))]])
        out.append(picked)
    return out


def positive_chunks(
    queries: Sequence[dict[str, Any]],
    chunks: ChunkSlice,
    model_params: dict[str, Any],
    bm25_params: dict[str, Any],
    counts: TermCounts | None = None,
) -> list[list[str]]:
    """Each query's positive chunk ids, one per relevant document: :func:`align_positive_chunks` with BM25 (over
    the whole corpus's statistics: the bm25 stage's ``counts``, or the chunk texts streamed again) and the base
    dense model (``model:`` params) as the two scorers.

    ``chunks`` must hold every chunk of the queries' relevant documents. Only relevant documents with several chunks
    need a choice, so only their chunks are embedded and given BM25 rows, and neither model is loaded when no
    relevant document has more than one chunk.
    """
    records = chunks.records
    chunk_ids = [c["chunk_id"] for c in records]
    chunks_by_doc: dict[str, list[int]] = defaultdict(list)
    for i, c in enumerate(records):
        chunks_by_doc[c["doc_id"]].append(i)
    needed = sorted(
        {i for q in queries for d in q["positive_doc_ids"] if len(chunks_by_doc[d]) > 1 for i in chunks_by_doc[d]}
    )
    if not needed:
        return [[chunk_ids[chunks_by_doc[d][0]] for d in q["positive_doc_ids"]] for q in queries]
    # records are in corpus order, so ascending ``needed`` is ascending positions: row r is needed[r]'s scores
    bm25 = bm25_row_scorer(chunks.texts(), chunks.n_chunks, [chunks.positions[i] for i in needed], bm25_params, counts)
    dense = load_dense(model_params)
    q_vecs = dense.encode_queries([q["query"] for q in queries])
    row = {ci: r for r, ci in enumerate(needed)}
    c_vecs = dense.encode_passages([records[i]["text"] for i in needed])

    def bm25_scorer(qi: int, idx: list[int]) -> np.ndarray:  # only this document's rows are scored
        return bm25(queries[qi]["query"], [row[i] for i in idx])

    def dense_scorer(qi: int, idx: list[int]) -> np.ndarray:
        return c_vecs[[row[i] for i in idx]] @ q_vecs[qi]

    return align_positive_chunks(queries, chunks_by_doc, chunk_ids, [bm25_scorer, dense_scorer])
