"""The reranker's training groups and dev samples, mined from the fine-tuned embedder's own ranking.

* **Negatives come from the fine-tuned embedder's own top-k** (:func:`mine_rerank_groups`), because those are the
  candidates the reranker will be asked to order. Chunks of a labeled document are never negatives, and a
  candidate within ``margin`` of the positive's similarity is dropped as a likely false negative.
* **Positives are capped per document** (``max_pos_per_doc``). A reranker trained on a few hundred questions
  otherwise learns document popularity: one document that answers many training questions ends up first for
  everything (see :func:`ragtune.rerank.top1_concentration`).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ragtune.retrieval import Ranking
from ragtune.train.reranker.config import RerankerTrainConfig


def cap_per_document(
    pairs: Sequence[dict[str, Any]], max_per_doc: int, seed: int
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Keep at most ``max_per_doc`` pairs per (first) positive document, chosen at random with ``seed``.

    Returns the kept pairs in their input order, and the number dropped per document (for the metrics).
    """
    if max_per_doc <= 0:
        return list(pairs), {}
    by_doc: dict[str, list[int]] = {}
    for i, p in enumerate(pairs):
        by_doc.setdefault(p["positive_doc_ids"][0], []).append(i)
    keep: set[int] = set()
    dropped: dict[str, int] = {}
    for doc, idx in sorted(by_doc.items()):
        if len(idx) > max_per_doc:
            idx = sorted(random.Random(f"{seed}:{doc}").sample(idx, max_per_doc))
            dropped[doc] = len(by_doc[doc]) - max_per_doc
        keep.update(idx)
    return [p for i, p in enumerate(pairs) if i in keep], dropped


@dataclass(frozen=True)
class Candidates:
    """What the reranker's data is mined from: the fine-tuned embedder's ranking of the corpus per question (query
    id → ``[(chunk_id, score), ...]``, best first), and each chunk's text and document."""

    ranking: Ranking
    chunk_text: dict[str, str]
    chunk_to_doc: dict[str, str]


def mine_rerank_groups(
    pairs: Sequence[dict[str, Any]], candidates: Candidates, cfg: RerankerTrainConfig
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """FlagEmbedding groups ``{"query", "pos", "neg", ...}`` with negatives from the embedder's ranking.

    Per pair: the positive is its aligned positive chunk (or its ICT text). Hard negatives are the first
    ``n_hard`` candidates in ranks ``[rank_min, rank_max)`` that are not from a positive document and score below
    ``(1 - margin)`` × the positive's similarity; ``n_random`` more are drawn from the rest of the corpus. A group
    short of hard negatives is kept with what it has, and counted.
    """
    ranking, chunk_text, chunk_to_doc = candidates.ranking, candidates.chunk_text, candidates.chunk_to_doc
    all_chunks = sorted(chunk_text)
    groups, counts = [], Counter()
    for p in pairs:
        positive_docs = set(p["positive_doc_ids"])
        pos_ids = list(p.get("positive_chunk_ids") or [])[:1]
        pos_texts = list(p.get("positive_texts") or [chunk_text[c] for c in pos_ids])[:1]
        if not pos_texts:
            counts["skipped_no_positive"] += 1
            continue
        ranked = ranking.get(p["query_id"], [])
        pos_scores = [s for cid, s in ranked if chunk_to_doc[cid] in positive_docs]
        ceiling = (1.0 - cfg.margin) * max(pos_scores) if pos_scores else math.inf
        hard: list[str] = []
        for rank, (cid, score) in enumerate(ranked):
            if len(hard) == cfg.n_hard:
                break
            if rank < cfg.rank_min or rank >= cfg.rank_max or chunk_to_doc[cid] in positive_docs:
                continue
            if score >= ceiling:
                counts["dropped_by_margin"] += 1
                continue
            hard.append(cid)
        if len(hard) < cfg.n_hard:
            counts["groups_short_of_hard_negatives"] += 1
        rng = random.Random(f"{cfg.seed}:{p['query_id']}")
        taken = set(hard)
        rand: list[str] = []
        for cid in rng.sample(all_chunks, min(len(all_chunks), 4 * cfg.n_random + 16)):
            if len(rand) == cfg.n_random:
                break
            if cid not in taken and chunk_to_doc[cid] not in positive_docs:
                rand.append(cid)
                taken.add(cid)
        neg_ids = hard + rand
        groups.append(
            {
                "query": p["query"],
                "pos": pos_texts,
                "neg": [chunk_text[c] for c in neg_ids],
                "query_id": p["query_id"],
                "pos_ids": pos_ids,
                "neg_ids": neg_ids,
                "neg_sources": ["embedder"] * len(hard) + ["random"] * len(rand),
            }
        )
        counts["groups"] += 1
        counts["negatives"] += len(neg_ids)
    return groups, dict(counts)


def groups_to_dataset(groups: Sequence[dict[str, Any]], loss: str) -> Any:
    """Training rows in the shape each loss expects.

    * bce: ``(query, passage, label)`` pointwise rows, label 1.0 / 0.0;
    * lambda: ``(query, docs, labels)`` one listwise row per group;
    * mnrl: ``(query, positive, negative_1..n)`` with n the smallest group's negative count (no padding).
    """
    from datasets import Dataset

    if loss == "bce":
        rows: dict[str, list[Any]] = {"query": [], "passage": [], "label": []}
        for g in groups:
            for text, label in [(t, 1.0) for t in g["pos"]] + [(t, 0.0) for t in g["neg"]]:
                rows["query"].append(g["query"])
                rows["passage"].append(text)
                rows["label"].append(label)
        return Dataset.from_dict(rows)
    if loss == "lambda":
        return Dataset.from_dict(
            {
                "query": [g["query"] for g in groups],
                "docs": [g["pos"] + g["neg"] for g in groups],
                "labels": [[1.0] * len(g["pos"]) + [0.0] * len(g["neg"]) for g in groups],
            }
        )
    n = min((len(g["neg"]) for g in groups), default=0)
    rows = {"query": [g["query"] for g in groups], "positive": [g["pos"][0] for g in groups]}
    for i in range(n):
        rows[f"negative_{i + 1}"] = [g["neg"][i] for g in groups]
    return Dataset.from_dict(rows)


def dev_samples(dev: Sequence[dict[str, Any]], candidates: Candidates, k: int) -> list[dict[str, Any]]:
    """CrossEncoderRerankingEvaluator samples: the embedder's top-k chunks per dev query, in retrieval order.

    Every retrieved chunk of a labeled document counts as positive, as in document-level evaluation. Queries whose
    labeled documents are not retrieved are kept (they score 0 before and after), so the metric is honest about
    first-stage misses.
    """
    ranking, chunk_text, chunk_to_doc = candidates.ranking, candidates.chunk_text, candidates.chunk_to_doc
    out = []
    for q in dev:
        docs = [cid for cid, _ in ranking.get(q["query_id"], [])[:k]]
        rel = set(q["positive_doc_ids"])
        out.append(
            {
                "query": q["query"],
                "positive": [chunk_text[c] for c in docs if chunk_to_doc[c] in rel],
                "documents": [chunk_text[c] for c in docs],
            }
        )
    return out
