"""Ranking metrics for retrieval: hit@k, recall@k, precision@k, MRR@k, NDCG@k, MAP@k with binary relevance.

Definitions match sentence-transformers' ``InformationRetrievalEvaluator`` exactly (tests check both against a
hand-computed example and against the evaluator on the same ranking), so numbers reported here are comparable
with the evaluator that runs during training:

- hit@k (``accuracy@k`` there): 1 if any relevant item is in the top k;
- precision@k: relevant items in the top k divided by k;
- recall@k: relevant items in the top k divided by the number of relevant items;
- MRR@k: 1 / rank of the first relevant item within the top k, else 0;
- NDCG@k: DCG with gain 1 and discount 1/log2(rank+1), normalized by the ideal DCG of min(k, #relevant) hits;
- MAP@k: sum of precision@i at each relevant rank i ≤ k, divided by min(k, #relevant).

A cosine *threshold* ("hit if similarity > 0.8") is deliberately not offered: it measures calibration, not
ranking, and it rewards a model that inflates all similarities.

Systems are chunk rankings (see :mod:`ragtune.retrieval`). Document-level scores are the headline because labels
are per document (a document scores as its best chunk); chunk-level scores use the aligned positive chunk (see
:func:`ragtune.pairs.align_positive_chunks`) and show what a RAG prompt would actually receive.

This module is light on purpose (numpy and :mod:`ragtune.retrieval`, nothing else): the embedder trainer's dev
check imports it, and it must score exactly as evaluate scores.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from ragtune.retrieval import Ranking, to_doc_ranking

if TYPE_CHECKING:
    import numpy as np

    from ragtune.retrieval import DenseIndex

METRIC_NAMES = ("hit", "recall", "precision", "mrr", "ndcg", "map")


def query_metrics(ranked: Sequence[str], relevant: Iterable[str], ks: Sequence[int]) -> dict[str, float]:
    """All metrics at every k for one query. ``ranked`` is best-first; duplicates are ignored after the first."""
    rel = set(relevant)
    if not rel:
        raise ValueError("a query without relevant items cannot be scored; ingest quarantines such queries")
    seen: set[str] = set()
    dedup = []
    for item in ranked:
        if item not in seen:
            seen.add(item)
            dedup.append(item)
    hits = [item in rel for item in dedup]
    out: dict[str, float] = {}
    for k in ks:
        top = hits[:k]
        n_hit = sum(top)
        first = next((i for i, h in enumerate(top) if h), None)
        dcg = sum(1.0 / math.log2(i + 2) for i, h in enumerate(top) if h)
        idcg = sum(1.0 / math.log2(i + 2) for i in range(min(k, len(rel))))
        ap_sum, n_seen = 0.0, 0
        for i, h in enumerate(top):
            if h:
                n_seen += 1
                ap_sum += n_seen / (i + 1)
        out[f"hit@{k}"] = 1.0 if n_hit else 0.0
        out[f"recall@{k}"] = n_hit / len(rel)
        out[f"precision@{k}"] = n_hit / k
        out[f"mrr@{k}"] = 0.0 if first is None else 1.0 / (first + 1)
        out[f"ndcg@{k}"] = dcg / idcg
        out[f"map@{k}"] = ap_sum / min(k, len(rel))
    return out


def mean_metrics(per_query: Sequence[dict[str, float]]) -> dict[str, float]:
    """Macro-average over queries, rounded to 4 decimals so `dvc metrics diff` stays readable."""
    if not per_query:
        return {}
    keys = per_query[0].keys()
    return {k: round(sum(q[k] for q in per_query) / len(per_query), 4) for k in keys}


def evaluate_ranking(
    ranking: dict[str, list[tuple[str, float]]],
    qrels: dict[str, set[str]],
    ks: Sequence[int],
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Mean metrics and per-query metrics. Every query in ``qrels`` counts; a query the system returned nothing
    for scores 0 rather than being skipped (skipping would flatter a system that fails on hard queries)."""
    per_query = {
        qid: query_metrics([item for item, _ in ranking.get(qid, [])], rel, ks) for qid, rel in sorted(qrels.items())
    }
    return mean_metrics(list(per_query.values())), per_query


def doc_metrics_per_query(
    ranking: Ranking, queries: Sequence[dict[str, Any]], chunk_to_doc: dict[str, str]
) -> dict[str, dict[str, float]]:
    """Document-level metrics at 10 (ndcg, mrr, …) of one chunk ranking, per query id."""
    qrels = {q["query_id"]: set(q["positive_doc_ids"]) for q in queries}
    _, per_query = evaluate_ranking(to_doc_ranking(ranking, chunk_to_doc), qrels, [10])
    return per_query


def ndcg_per_query(
    ranking: Ranking, queries: Sequence[dict[str, Any]], chunk_to_doc: dict[str, str]
) -> dict[str, float]:
    """Document-level NDCG@10 of one chunk ranking, per query id (what pipeline selection compares)."""
    return {qid: m["ndcg@10"] for qid, m in doc_metrics_per_query(ranking, queries, chunk_to_doc).items()}


def dense_ranking(
    index: DenseIndex,
    encode_queries: Callable[[list[str]], np.ndarray],
    queries: Sequence[dict[str, Any]],
    depth: int = 100,
) -> Ranking:
    """Each query's top ``depth`` chunks by cosine similarity, ``encode_queries`` giving the query vectors (an
    :class:`~ragtune.retrieval.Embedder`'s ``encode_queries``, or an encoder with its prompt bound)."""
    qids = [q["query_id"] for q in queries]
    return index.search_vectors(qids, encode_queries([q["query"] for q in queries]), depth)


def dense_doc_metrics(
    index: DenseIndex,
    encode_queries: Callable[[list[str]], np.ndarray],
    queries: Sequence[dict[str, Any]],
    chunk_to_doc: dict[str, str],
    depth: int = 100,
) -> dict[str, dict[str, float]]:
    """Dense retrieval of ``queries`` over ``index``, scored per query at document level (metrics at 10).

    The one place that says "rank with an embedder, a document scores as its best chunk": evaluate's forgetting
    check and the embedder trainer's dev check both score this way, so their numbers compare with evaluate's.
    """
    return doc_metrics_per_query(dense_ranking(index, encode_queries, queries, depth), queries, chunk_to_doc)


def score_systems(
    systems: dict[str, Ranking],
    queries: Sequence[dict[str, Any]],
    chunk_to_doc: dict[str, str],
    ks: Sequence[int],
) -> dict[str, Any]:
    """Mean and per-query metrics per system at both levels: ``{"doc": {...}, "chunk": {...}, "per_query": ...}``."""
    doc_qrels = {q["query_id"]: set(q["positive_doc_ids"]) for q in queries}
    chunk_qrels = {q["query_id"]: set(q["positive_chunk_ids"]) for q in queries if q["positive_chunk_ids"]}
    out: dict[str, Any] = {"doc": {}, "chunk": {}, "per_query": {}, "doc_rankings": {}}
    for name, ranking in systems.items():
        doc_ranking = to_doc_ranking(ranking, chunk_to_doc)
        out["doc"][name], per_q = evaluate_ranking(doc_ranking, doc_qrels, ks)
        out["chunk"][name], _ = evaluate_ranking(ranking, chunk_qrels, ks)
        out["per_query"][name] = per_q
        out["doc_rankings"][name] = doc_ranking
    return out


def paired_bootstrap(
    system: dict[str, dict[str, float]],
    baseline: dict[str, dict[str, float]],
    metric: str = "ndcg@10",
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, float]:
    """Mean per-query gain of ``system`` over ``baseline`` and its 95% paired-bootstrap interval.

    Why: the sample has 77 test queries; one query moving from rank 1 to rank 2 shifts NDCG@10 by ~0.5 point. A
    gain whose interval includes 0 is not evidence of anything, and the report must say so next to the number.
    """
    import numpy as np

    qids = sorted(set(system) & set(baseline))
    if not qids:
        return {"gain": 0.0, "ci_low": 0.0, "ci_high": 0.0, "n_queries": 0}
    diff = np.array([system[q].get(metric, 0.0) - baseline[q].get(metric, 0.0) for q in qids])
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(n_resamples, len(diff)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {
        "gain": round(float(diff.mean()), 4),
        "ci_low": round(float(low), 4),
        "ci_high": round(float(high), 4),
        "n_queries": len(qids),
    }
