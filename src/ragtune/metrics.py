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
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

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
