"""The systems evaluate compares: each held-out split ranked by every retriever, the weights chosen on dev.

A system is a chunk ranking per query (:data:`ragtune.retrieval.Ranking`): BM25, the base embedder, their RRF
hybrid, and with a fine-tuned embedder ``ft_dense``, ``ft_hybrid`` and ``ft_convex`` (alpha chosen on dev), then
``<retriever>+rerank`` for each servable retriever when a reranker was trained (fusion weight chosen on dev). Weights
are chosen on dev and judged by cross-validation within dev (:mod:`ragtune.evaluation.selection`); test never takes
part in a choice.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragtune.evaluation.metrics import dense_ranking, ndcg_per_query
from ragtune.evaluation.selection import PerQuery, RerankEvidence, tune_weight
from ragtune.paths import Paths
from ragtune.precision import use_cpu_bf16
from ragtune.rerank import apply_rerank, load_reranker, rerank_scores, top1_concentration
from ragtune.retrieval import (
    BM25Index,
    DenseIndex,
    Embedder,
    Ranking,
    build_bm25,
    convex_fusion,
    load_dense,
    rrf,
    top_k,
)

# what `ragtune search` can serve, simplest first: the ladder starts at ft_dense and tries the others in this order
RETRIEVERS = ("ft_dense", "bm25", "ft_hybrid", "ft_convex")
UNTUNED = 0.5  # convex alpha and reranker weight reported when there is no dev split to choose them on

Splits = dict[str, list[dict[str, Any]]]  # "dev" / "test" → its questions (an empty split is left out)
Systems = dict[str, dict[str, Ranking]]  # split → system name → ranking


@dataclass
class Retrievers:
    """BM25 and the dense models over the corpus's chunks; ``tuned`` is None when no fine-tuned embedder exists."""

    chunk_ids: list[str]
    chunk_to_doc: dict[str, str]
    bm25: BM25Index
    base: Embedder
    base_index: DenseIndex
    tuned: Embedder | None = None
    ft_index: DenseIndex | None = None

    @classmethod
    def load(
        cls, chunks: Sequence[dict[str, Any]], model_p: dict[str, Any], bm25_p: dict[str, Any], paths: Paths
    ) -> Retrievers:
        """Index the chunks with BM25, the base embedder and (when ``paths.embedder`` exists) the fine-tuned one."""
        chunk_ids = [c["chunk_id"] for c in chunks]
        texts = [c["text"] for c in chunks]
        bm25 = build_bm25(chunks, bm25_p)
        base = load_dense(model_p)
        r = cls(
            chunk_ids,
            {c["chunk_id"]: c["doc_id"] for c in chunks},
            bm25,
            base,
            DenseIndex(chunk_ids, base.encode_passages(texts)),
        )
        if paths.embedder.exists():
            r.tuned = load_dense(model_p, name=str(paths.embedder))
            r.ft_index = DenseIndex(chunk_ids, r.tuned.encode_passages(texts))
        return r


@dataclass
class DevChoices:
    """What dev decided: per-query dev NDCG@10 per system (out-of-fold for a tuned weight, so the selection ladder
    judges the choosing procedure, not its luckiest weight), each tuned weight, and its dev curve."""

    scores: dict[str, PerQuery] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    curves: dict[str, dict[float, float]] = field(default_factory=dict)
    ties: dict[str, tuple[float, ...]] = field(default_factory=dict)  # the weights tied at the top on all of dev

    def tune(
        self,
        name: str,
        per_weight: dict[float, PerQuery],
        *,
        prefer: Callable[[float], float],
        evaluate_p: dict[str, Any],
    ) -> None:
        """Choose ``name``'s weight on dev (:func:`~ragtune.evaluation.selection.tune_weight`)."""
        folds, seed = int(evaluate_p["select_folds"]), int(evaluate_p["select_seed"])
        tw = tune_weight(per_weight, prefer=prefer, folds=folds, seed=seed)
        self.weights[name], self.curves[name], self.scores[name] = tw.weight, tw.curve, tw.out_of_fold
        self.ties[name] = tw.tied

    def curve_json(self, name: str) -> dict[str, float]:
        return {f"{w:.2f}": v for w, v in self.curves.get(name, {}).items()}


def rank_splits(r: Retrievers, splits: Splits, evaluate_p: dict[str, Any]) -> tuple[Systems, DevChoices]:
    """Every retriever's ranking of every split, ``ft_convex`` with its alpha chosen on dev (ties lean on dense;
    no dev: :data:`UNTUNED`, or the middle of ``evaluate.convex_alphas`` when 0.5 is not among them)."""
    depth, rrf_k = int(evaluate_p["candidate_k"]), int(evaluate_p["rrf_k"])
    alphas = [float(a) for a in evaluate_p["convex_alphas"]]
    systems_by_split: Systems = {}
    convex_by_split: dict[str, dict[float, Ranking]] = {}
    for split, queries in splits.items():
        qids, texts = [q["query_id"] for q in queries], [q["query"] for q in queries]
        sparse = r.bm25.score_matrix(texts)
        systems = {"bm25": {q: top_k(r.chunk_ids, sparse[i], depth) for i, q in enumerate(qids)}}
        systems["base_dense"] = dense_ranking(r.base_index, r.base.encode_queries, queries, depth)
        systems["hybrid"] = rrf([systems["bm25"], systems["base_dense"]], k=rrf_k, depth=depth)
        if r.tuned is not None and r.ft_index is not None:
            dense = r.ft_index.similarities(r.tuned.encode_queries(texts))
            systems["ft_dense"] = {q: top_k(r.chunk_ids, dense[i], depth) for i, q in enumerate(qids)}
            systems["ft_hybrid"] = rrf([systems["bm25"], systems["ft_dense"]], k=rrf_k, depth=depth)
            convex_by_split[split] = convex_fusion(qids, r.chunk_ids, dense, sparse, alphas, depth)
        systems_by_split[split] = systems

    dev = DevChoices()
    if "dev" in splits:
        dev.scores = {n: ndcg_per_query(rk, splits["dev"], r.chunk_to_doc) for n, rk in systems_by_split["dev"].items()}
    if r.tuned is not None:
        if "dev" in splits:
            per_alpha = {
                a: ndcg_per_query(rk, splits["dev"], r.chunk_to_doc) for a, rk in convex_by_split["dev"].items()
            }
            dev.tune("ft_convex", per_alpha, prefer=lambda a: a, evaluate_p=evaluate_p)  # ties: lean on dense
        alpha = dev.weights.get("ft_convex", UNTUNED if UNTUNED in alphas else alphas[len(alphas) // 2])
        dev.weights["ft_convex"] = alpha
        for split in splits:
            systems_by_split[split]["ft_convex"] = convex_by_split[split][alpha]
    return systems_by_split, dev


def hybrid_proxy(
    r: Retrievers, train: list[dict[str, Any]], splits: Splits, systems_by_split: Systems, depth: int, rrf_k: int
) -> dict[str, tuple[PerQuery, PerQuery]]:
    """Evidence for BM25 fusion from more questions than dev holds (:mod:`ragtune.evaluation.selection`): the base
    model's RRF hybrid against the base model over train + dev, questions neither BM25 nor the base model has seen.
    Never test. The dev questions' BM25 and base-model rankings are the ones :func:`rank_splits` already made."""
    if "dev" not in splits or not train:
        return {}
    pool = train + splits["dev"]
    dev = systems_by_split["dev"]
    sparse = {**r.bm25.search({q["query_id"]: q["query"] for q in train}, depth), **dev["bm25"]}
    dense = {**dense_ranking(r.base_index, r.base.encode_queries, train, depth), **dev["base_dense"]}
    hybrid = rrf([sparse, dense], k=rrf_k, depth=depth)
    return {"ft_hybrid": (ndcg_per_query(hybrid, pool, r.chunk_to_doc), ndcg_per_query(dense, pool, r.chunk_to_doc))}


def rerank_proxy(
    r: Retrievers,
    chunks: Sequence[dict[str, Any]],
    train: list[dict[str, Any]],
    splits: Splits,
    reranker: str | Path,
    base_path: str | Path,
    dev: DevChoices,
    evaluate_p: dict[str, Any],
    retriever: str,
) -> RerankEvidence | None:
    """Evidence for the late-interaction reranker on ``retriever`` from more questions than dev holds, as
    :func:`hybrid_proxy` gives BM25 fusion: the *base* model's untrained late-interaction start (its own token
    vectors, MaxSim, nothing trained) re-scores the top ``rerank_k`` of the retriever's base-model analogue
    (ft_dense → the base model, ft_hybrid → its RRF hybrid, ft_convex → its convex hybrid at the alpha chosen on dev,
    bm25 → itself), fused at the weight dev chose for ``<retriever>+rerank``. Over train + dev questions, which
    neither the base model nor its start has seen. Returns the per-query NDCG@10 re-scored and not re-scored. When
    dev tied several weights, the weight is chosen among them on these questions by
    :func:`~ragtune.evaluation.selection.tune_weight` (ties: the smaller), and the re-scored figures are its
    cross-validated ones.

    Only a late-interaction reranker has such an analogue: a cross-encoder's new head starts random, and an LLM
    reranker's start costs a GPU. None without a dev split, train questions, a dev weight for the retriever, or with
    ``evaluate.rerank_proxy_queries: 0``. The train questions are a seeded sample of at most that many: their top
    passages are encoded token by token, the costly part, so :func:`~ragtune.evaluation.selection.choose_pipeline`
    asks only for the retriever it kept, and only when dev alone cannot decide."""
    from ragtune.rerank import reranker_kind
    from ragtune.rerankers import MARKER
    from ragtune.rerankers.late_interaction import LateInteractionReranker

    cap, name = int(evaluate_p["rerank_proxy_queries"]), f"{retriever}+rerank"
    if "dev" not in splits or not train or cap <= 0 or name not in dev.weights:
        return None
    if reranker_kind(reranker) != "late_interaction":
        return None
    sample = sorted(train, key=lambda q: q["query_id"])
    random.Random(int(evaluate_p["select_seed"])).shuffle(sample)
    pool = sample[:cap] + splits["dev"]
    qids, texts = [q["query_id"] for q in pool], [q["query"] for q in pool]
    depth, k = int(evaluate_p["candidate_k"]), int(evaluate_p["rerank_k"])
    sparse = r.bm25.score_matrix(texts) if retriever != "ft_dense" else None
    dense = r.base_index.similarities(r.base.encode_queries(texts)) if retriever != "bm25" else None
    if retriever == "ft_convex":
        alpha = dev.weights["ft_convex"]
        ranking = convex_fusion(qids, r.chunk_ids, dense, sparse, [alpha], depth)[alpha]
    else:
        sides = [m for m in (sparse, dense) if m is not None]
        ranked = [{q: top_k(r.chunk_ids, m[i], depth) for i, q in enumerate(qids)} for m in sides]
        ranking = ranked[0] if len(ranked) == 1 else rrf(ranked, k=int(evaluate_p["rrf_k"]), depth=depth)
    marker = json.loads(Path(reranker, MARKER).read_text(encoding="utf-8"))  # the trained reranker's lengths
    start = LateInteractionReranker.from_embedder(
        base_path, max_query_length=int(marker["max_query_length"]), max_doc_length=int(marker["max_doc_length"])
    )
    bf16 = use_cpu_bf16(evaluate_p["rerank_bf16"])
    scores = rerank_scores(start, {"proxy": {retriever: ranking}}, {"proxy": pool}, [retriever], chunks, k, bf16)
    s = {qid: [scores["proxy"][qid][cid] for cid, _ in items[:k]] for qid, items in ranking.items()}
    tied = dev.ties.get(name, ())
    tied = tied if len(tied) > 1 else ()
    # one weight (dev's) is "chosen" by tune_weight as itself, its out-of-fold scores being its own
    per_w = {w: ndcg_per_query(apply_rerank(ranking, s, w), pool, r.chunk_to_doc) for w in tied or [dev.weights[name]]}
    folds, seed = int(evaluate_p["select_folds"]), int(evaluate_p["select_seed"])
    tw = tune_weight(per_w, prefer=lambda w: -w, folds=folds, seed=seed)  # as dev breaks its ties: less reranker
    return RerankEvidence(tw.out_of_fold, ndcg_per_query(ranking, pool, r.chunk_to_doc), tw.weight, tied)


@dataclass
class RerankedSystems:
    """The reranker's scores over every retriever's top ``k`` on every split, computed once; ``set_weight`` makes
    (or remakes) ``<retriever>+rerank`` in ``systems_by_split`` at a fusion weight and returns its report entry."""

    systems_by_split: Systems
    splits: Splits
    chunk_to_doc: dict[str, str]
    dev: DevChoices
    k: int
    scores: dict[str, dict[str, dict[str, float]]]  # split → query id → chunk id → reranker score

    def ranking(self, split: str, retr: str, w: float) -> Ranking:
        ranking = self.systems_by_split[split][retr]
        s = {qid: [self.scores[split][qid][cid] for cid, _ in items[: self.k]] for qid, items in ranking.items()}
        return apply_rerank(ranking, s, w)

    def ndcg(self, split: str, ranking: Ranking) -> float:
        per_query = ndcg_per_query(ranking, self.splits[split], self.chunk_to_doc)
        return round(sum(per_query.values()) / len(self.splits[split]), 4)

    def set_weight(self, retr: str, weight: float, chosen_on: str) -> dict[str, Any]:
        name = f"{retr}+rerank"
        for split in self.splits:
            self.systems_by_split[split][name] = self.ranking(split, retr, weight)
        pure_test = self.ranking("test", retr, 1.0)
        doc, share = top1_concentration(pure_test, self.chunk_to_doc)
        tune = "dev" if "dev" in self.splits else "test"
        return {
            "rerank_k": self.k,
            "weight": weight,
            "weight_chosen_on": chosen_on,
            "dev_curve": self.dev.curve_json(name),
            "dev_ndcg@10": {
                "retriever": self.ndcg(tune, self.systems_by_split[tune][retr]),
                "reranker": self.ndcg(tune, self.ranking(tune, retr, 1.0)),
                "fused": self.ndcg(tune, self.systems_by_split[tune][name]),
            },
            "test_ndcg@10": {
                "retriever": self.ndcg("test", self.systems_by_split["test"][retr]),
                "reranker": self.ndcg("test", pure_test),
                "fused": self.ndcg("test", self.systems_by_split["test"][name]),
            },
            "top1_doc": doc,
            "top1_share": round(share, 4),
        }


def add_reranked_systems(
    systems_by_split: Systems,
    splits: Splits,
    chunks: Sequence[dict[str, Any]],
    chunk_to_doc: dict[str, str],
    evaluate_p: dict[str, Any],
    dev: DevChoices,
    reranker: str | Path,
) -> tuple[dict[str, Any], dict[str, Any], RerankedSystems]:
    """Add ``<retriever>+rerank`` for every servable retriever, the fusion weight chosen on dev (its cross-validated
    per-query dev scores go to ``dev.scores`` for the selection ladder); return the report per retriever, the
    2×2 table (base vs fine-tuned embedder, each alone and reranked alone at w = 1, per split), and the scores, so
    that selection can re-weight the system it ships. Reranker scores are computed once per (query, chunk): the
    retrievers' candidate lists overlap."""
    e = evaluate_p
    k = int(e["rerank_k"])
    grid = [float(w) for w in e["fusion_weights"]]
    retrievers = [r for r in RETRIEVERS if r in systems_by_split["test"]]
    model, bf16 = load_reranker(reranker, device=None), use_cpu_bf16(e["rerank_bf16"])
    # base_dense's candidates too, for the 2×2 table only (never served: search has no base-model pipeline)
    scored = [*retrievers, "base_dense"]
    scores = rerank_scores(model, systems_by_split, splits, scored, chunks, k, bf16)
    rs = RerankedSystems(systems_by_split, splits, chunk_to_doc, dev, k, scores)
    report = {}
    for retr in retrievers:
        name = f"{retr}+rerank"
        if "dev" in splits:
            per_w = {w: ndcg_per_query(rs.ranking("dev", retr, w), splits["dev"], chunk_to_doc) for w in grid}
            dev.tune(name, per_w, prefer=lambda w: -w, evaluate_p=e)  # ties: the smaller weight (less reranker)
        chosen_on = "dev" if "dev" in splits else "none (no dev split)"
        report[retr] = rs.set_weight(retr, dev.weights.get(name, UNTUNED), chosen_on)

    def cell(split: str, retr: str) -> dict[str, float]:
        alone = rs.ranking(split, retr, 1.0)
        return {"retriever": rs.ndcg(split, systems_by_split[split][retr]), "reranked": rs.ndcg(split, alone)}

    table = {split: {"base": cell(split, "base_dense"), "fine-tuned": cell(split, "ft_dense")} for split in splits}
    return report, {"rerank_k": k, **table}, rs
