"""Round-trip consistency (Promptagator, GPL): keep a generated question only if its own chunk ranks in the top k.

An LLM sometimes writes a question the chunk does not single out ("Quy định này áp dụng cho ai?" fits every
article of a law) or one about a detail the chunk does not hold. Training on such a pair teaches the embedder that
a vague question belongs to one arbitrary chunk. Asking an independent retriever where the question leads, and
keeping it only when its own chunk comes back near the top, removes most of them at the cost of one retrieval pass.

The retriever is the base embedder (``model:``) by default: the prompt asks for questions that do not copy the
chunk's words, and BM25 ranks exactly those paraphrases low, so it would drop the questions worth most. BM25 is
there for a corpus the base embedder does not read well; ``none`` turns the filter off.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ragtune.retrieval import build_bm25, load_dense

RETRIEVERS = ("embedder", "bm25", "none")
BLOCK = 256  # questions scored at a time: a [BLOCK, n_chunks] float32 matrix stays small at any corpus size


def own_chunk_ranks(
    questions: Sequence[dict[str, Any]],
    chunks: Sequence[dict[str, Any]],
    retriever: str,
    model_p: dict[str, Any],
    bm25_p: dict[str, Any],
) -> list[int]:
    """The 1-based rank of each question's own chunk among all chunks (ties counted in the chunk's favour)."""
    if not questions:
        return []
    position = {c["chunk_id"]: i for i, c in enumerate(chunks)}
    own = np.array([position[q["chunk_id"]] for q in questions])
    texts = [q["query"] for q in questions]
    score_block: Callable[[int, int], np.ndarray]
    if retriever == "embedder":
        dense = load_dense(model_p)
        passages = dense.encode_passages([c["text"] for c in chunks])
        queries = dense.encode_queries(texts)

        def score_block(start: int, end: int) -> np.ndarray:
            return queries[start:end] @ passages.T

    elif retriever == "bm25":
        bm25 = build_bm25(chunks, bm25_p)

        def score_block(start: int, end: int) -> np.ndarray:
            return bm25.score_matrix(texts[start:end])

    else:
        raise ValueError(f"questions.consistency.retriever must be one of {RETRIEVERS}, got {retriever!r}")
    ranks: list[int] = []
    for start in range(0, len(texts), BLOCK):
        end = min(start + BLOCK, len(texts))
        scores = score_block(start, end)
        mine = scores[np.arange(end - start), own[start:end]]
        ranks.extend((1 + (scores > mine[:, None]).sum(axis=1)).tolist())
    return ranks


def round_trip(
    questions: list[dict[str, Any]],
    chunks: Sequence[dict[str, Any]],
    consistency_p: dict[str, Any],
    model_p: dict[str, Any],
    bm25_p: dict[str, Any],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """``(kept, quarantined, counts)``: kept questions carry ``own_chunk_rank``; the rest are quarantined with
    reason ``not_round_trip`` and their rank, so a user can read what the filter removed and tune ``top_k``."""
    retriever, top_k = str(consistency_p["retriever"]), int(consistency_p["top_k"])
    counts: dict[str, Any] = {"retriever": retriever, "top_k": top_k, "checked": 0, "not_round_trip": 0}
    if retriever == "none":
        return questions, [], counts
    ranks = own_chunk_ranks(questions, chunks, retriever, model_p, bm25_p)
    kept, rejected = [], []
    for question, rank in zip(questions, ranks, strict=True):
        if rank <= top_k:
            kept.append({**question, "own_chunk_rank": rank})
        else:
            rejected.append(
                {
                    "stage": "questions",
                    "chunk_id": question["chunk_id"],
                    "kind": "question",
                    "reason": "not_round_trip",
                    "record": {**question, "own_chunk_rank": rank},
                }
            )
    counts.update(checked=len(questions), not_round_trip=len(rejected))
    if ranks:
        counts["own_chunk_rank_median"] = float(np.median(ranks))
    return kept, rejected, counts
