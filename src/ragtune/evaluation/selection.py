"""Choosing the pipeline that search serves: every added component must earn its place on dev, with evidence.

Why this exists: on an unseen benchmark with 15 dev questions, picking the best dev NDCG@10 among seven systems and
eleven fusion weights chose ``ft_dense+rerank`` at weight 0.7; on that benchmark's own test it scored MRR@10 .569
against .819 for the fine-tuned embedder alone. With a small dev set the best of many noisy scores is mostly noise,
and the weight picked on dev looks better on dev than it is.

The rule here:

* Start from the simplest servable pipeline, the fine-tuned embedder alone (``ft_dense``).
* A candidate replaces it only when its paired-bootstrap 95% interval of per-query dev NDCG@10 gain lies above 0.
  Retriever candidates first (BM25 alone, the RRF hybrid, the convex hybrid), then the reranker on top of the
  retriever kept. Among several candidates that pass, the one with the largest mean gain wins (ties: the simpler).
* When dev is small, a component that involves no training may borrow evidence from more questions. Fusing BM25
  into the ranking is such a component: neither BM25 nor the *base* embedder has seen the training questions, so
  "the base model's RRF hybrid beats the base model" can be measured on train + dev together (on the sample, 230
  questions instead of 46). The candidate is then adopted when that interval lies above 0 *and* its dev gain on the
  fine-tuned model is not negative (fine-tuning makes the dense side stronger, which can only shrink what BM25 adds).
* The same holds for a late-interaction reranker's mechanism: the *base* model's untrained late-interaction start
  (MaxSim over its own token vectors) re-scoring the base model's analogue of the retriever kept, at the fusion
  weight dev chose, measured on train + dev. (When dev ties several weights, as when every dev question is already
  ranked first, the proxy chooses among them on its own questions, cross-validated; a tie would otherwise go to
  weight 0, where re-scoring changes nothing.) The trained reranker is then adopted when that interval lies above 0
  and its own dev gain is not negative (that training did not make it worse than its start is checked on dev when
  it is trained). On the sample, re-scoring alone (weight 1) is +3.7 NDCG@10 points [+1.8, +5.8] over the base
  model and +0.8 [-1.0, +2.6] over its RRF hybrid (230 questions; benchmarks/rerank_proxy.py): the evidence is
  strong where the reranker adds most. The proxy encodes passages token by token, so it is measured only for the
  retriever kept and only when dev alone neither adopts nor vetoes. A cross-encoder's head starts random and an LLM
  reranker's start needs a GPU, so those two kinds are judged on dev alone.
* A candidate with a tuned weight (the convex hybrid's alpha, the reranker's fusion weight) is judged by
  cross-validation *inside* dev: each query is scored with the weight chosen on the other folds, so the weight's
  own selection cannot make the candidate look better than it is. The weight it then ships with is chosen on all of dev.
* No dev questions means no evidence: the simplest pipeline ships, and the report says why.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ragtune.evaluation.metrics import paired_bootstrap

PerQuery = dict[str, float]  # query id → NDCG@10


@dataclass(frozen=True)
class TunedWeight:
    """A weight chosen on dev, with the cross-validated per-query scores that judge the choice."""

    weight: float
    curve: dict[float, float]  # weight → mean dev NDCG@10 (all of dev)
    out_of_fold: PerQuery  # each query scored with the weight chosen on the other folds
    tied: tuple[float, ...] = ()  # every weight with the best mean on all of dev (dev cannot tell them apart)


def tune_weight(
    per_weight: Mapping[float, PerQuery], *, prefer: Callable[[float], float], folds: int = 5, seed: int = 0
) -> TunedWeight:
    """Pick the weight with the best mean score; score the picking procedure by K-fold cross-validation over queries.

    ``per_weight`` maps each candidate weight to its per-query scores (the same queries for every weight).
    ``prefer`` ranks ties: the weight with the larger ``prefer(w)`` wins a tie (e.g. the one that relies less on the
    added component). Folds are a seeded shuffle of the query ids dealt round-robin; with fewer queries than folds,
    every query is its own fold (leave-one-out).
    """
    if not per_weight:
        raise ValueError("tune_weight needs at least one candidate weight")
    weights = sorted(per_weight)
    qids = sorted(next(iter(per_weight.values())))

    def best(on: Sequence[str]) -> float:
        def mean(w: float) -> float:
            return sum(per_weight[w][q] for q in on) / len(on) if on else 0.0

        return max(weights, key=lambda w: (round(mean(w), 10), prefer(w)))

    order = list(qids)
    random.Random(seed).shuffle(order)
    k = max(1, min(folds, len(order)))
    out_of_fold: PerQuery = {}
    for i in range(k):
        held = order[i::k]
        held_set = set(held)
        w = best([q for q in order if q not in held_set])
        out_of_fold.update({q: per_weight[w][q] for q in held})
    means = {w: sum(per_weight[w].values()) / max(len(qids), 1) for w in weights}
    top = max(round(m, 10) for m in means.values())
    tied = tuple(w for w in weights if round(means[w], 10) == top)  # compared as best() compares them
    curve = {w: round(m, 4) for w, m in means.items()}
    return TunedWeight(weight=best(qids), curve=curve, out_of_fold=out_of_fold, tied=tied)


@dataclass
class Step:
    """One decision of the ladder: did ``candidate`` earn its place over ``incumbent`` on dev?"""

    component: str  # "retriever" | "reranker"
    candidate: str
    incumbent: str
    gain: float  # mean per-query dev NDCG@10 gain (out-of-fold for tuned candidates)
    ci_low: float
    ci_high: float
    n_queries: int
    tuned: bool  # judged on cross-validated scores
    adopted: bool = False
    evidence: str = "dev"  # "dev", or "train+dev (base model)" when the proxy decided
    # the base-model gain over train + dev: gain, ci_low, ci_high, n_queries (for the reranker also the fusion
    # weight it was measured at and the weights dev tied)
    proxy: dict[str, Any] | None = None

    def describe(self) -> str:
        verdict = "adopted" if self.adopted else "not adopted"
        how = " (weight cross-validated within dev)" if self.tuned else ""
        text = (
            f"{self.candidate} vs {self.incumbent}{how}: {100 * self.gain:+.1f} pts dev NDCG@10, 95% interval "
            f"[{100 * self.ci_low:+.1f}, {100 * self.ci_high:+.1f}] over {self.n_queries} queries"
        )
        if self.proxy:
            p = self.proxy
            text += (
                f"; with the base model over train + dev {100 * p['gain']:+.1f} pts [{100 * p['ci_low']:+.1f}, "
                f"{100 * p['ci_high']:+.1f}] over {p['n_queries']} queries"
            )
            if "weight" in p:
                text += f" at fusion weight {p['weight']:g}"
                if len(p.get("tied", ())) > 1:
                    text += f" (chosen on these queries among the weights tied on dev: {list(p['tied'])})"
        return f"{text} → {verdict} (evidence: {self.evidence})" if self.adopted else f"{text} → {verdict}"


@dataclass
class Selection:
    """The chosen system, the decisions that led to it, and a sentence on why."""

    system: str
    steps: list[Step] = field(default_factory=list)
    reason: str = ""
    # set when the reranker was adopted on the base-model proxy after dev tied several fusion weights: the one the
    # proxy chose among them, which it ships with (None: dev's own weight)
    fusion_weight: float | None = None

    def to_json(self) -> dict[str, Any]:
        out = {"system": self.system, "reason": self.reason, "steps": [asdict(s) for s in self.steps]}
        return out | ({"fusion_weight": self.fusion_weight} if self.fusion_weight is not None else {})


@dataclass(frozen=True)
class RerankEvidence:
    """The base-model proxy for a reranker (:func:`ragtune.evaluation.systems.rerank_proxy`): per-query NDCG@10 with
    and without re-scoring over train + dev, at ``weight``. When dev ties several fusion weights (``tied``; e.g.
    every dev question already first, so every weight scores 1.0), the proxy chooses among them on its own queries
    and ``rescored`` holds that choice's cross-validated scores, so the pick cannot flatter itself. Without this,
    a tie goes to the smallest weight, 0, where re-scoring changes nothing and the evidence is 0 by construction."""

    rescored: PerQuery
    plain: PerQuery
    weight: float
    tied: tuple[float, ...] = ()


def _gain(candidate: PerQuery, incumbent: PerQuery, n_resamples: int, seed: int) -> dict[str, float]:
    return paired_bootstrap(
        {q: {"ndcg@10": v} for q, v in candidate.items()},
        {q: {"ndcg@10": v} for q, v in incumbent.items()},
        n_resamples=n_resamples,
        seed=seed,
    )


def _climb(
    component: str,
    incumbent: str,
    candidates: Sequence[str],
    scores: Mapping[str, PerQuery],
    tuned: set[str],
    n_resamples: int,
    seed: int,
    proxy: Mapping[str, tuple[PerQuery, PerQuery]] | None = None,
) -> tuple[str, list[Step]]:
    """Compare each candidate with the incumbent; keep the incumbent unless some candidate's evidence holds."""
    steps = []
    for name in candidates:
        if name not in scores or name == incumbent:
            continue
        g = _gain(scores[name], scores[incumbent], n_resamples, seed)
        step = Step(component, name, incumbent, g["gain"], g["ci_low"], g["ci_high"], g["n_queries"], name in tuned)
        if proxy and name in proxy:
            step.proxy = _gain(*proxy[name], n_resamples, seed)
        if step.ci_low > 0:
            step.adopted = True
        elif step.proxy and step.proxy["ci_low"] > 0 and step.gain >= 0:
            step.adopted, step.evidence = True, "train+dev (base model)"
        steps.append(step)
    passing = [s for s in steps if s.adopted]
    if not passing:
        return incumbent, steps
    winner = max(passing, key=lambda s: (s.gain, -candidates.index(s.candidate)))
    for s in passing:  # the others passed too, but one retriever serves
        s.adopted = s is winner
    return winner.candidate, steps


def choose_pipeline(
    dev: Mapping[str, PerQuery] | None,
    *,
    start: str,
    retrievers: Sequence[str],
    reranked: Mapping[str, str],
    tuned: Sequence[str] = (),
    proxy: Mapping[str, tuple[PerQuery, PerQuery]] | None = None,
    rerank_proxy: Callable[[str], RerankEvidence | None] | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
) -> Selection:
    """The evidence ladder (module docstring). ``dev`` maps each system to its per-query dev NDCG@10, with the
    out-of-fold scores for the ``tuned`` systems; ``retrievers`` lists the alternatives to ``start`` from simplest to
    most complex; ``reranked`` maps a retriever to its ``+rerank`` system. ``proxy`` maps a retriever candidate to
    (its base-model analogue's, the base model's) per-query scores over train + dev questions; ``rerank_proxy``
    gives the same for the reranker on a retriever (:class:`RerankEvidence`), or None. It is costly, so it is called
    only for the retriever kept and only when dev alone neither adopts nor vetoes the reranker. When the reranker is
    adopted on it, ``Selection.fusion_weight`` is the weight the proxy was measured at."""
    if not dev or not dev.get(start):
        return Selection(
            start,
            reason=(
                f"no dev questions, so no evidence for any added component: serving the simplest pipeline, {start}. "
                "Label questions for a dev split (ingest.queries with split: dev, or pairs.dev_ratio) to get a check."
            ),
        )
    tuned_set, fusion_weight = set(tuned), None
    retriever, steps = _climb("retriever", start, list(retrievers), dev, tuned_set, n_resamples, seed, proxy)
    system = retriever
    if retriever in reranked:
        candidate = reranked[retriever]
        evidence, p = {}, None
        if rerank_proxy is not None and candidate in dev:  # costly: asked only when dev alone cannot decide
            on_dev = _gain(dev[candidate], dev[retriever], n_resamples, seed)
            if on_dev["ci_low"] <= 0 and on_dev["gain"] >= 0 and (p := rerank_proxy(retriever)) is not None:
                evidence[candidate] = (p.rescored, p.plain)
        system, rerank_steps = _climb("reranker", retriever, [candidate], dev, tuned_set, n_resamples, seed, evidence)
        if p is not None and rerank_steps[0].proxy is not None:
            rerank_steps[0].proxy |= {"weight": p.weight, "tied": list(p.tied)}
            if rerank_steps[0].adopted and rerank_steps[0].evidence != "dev" and len(p.tied) > 1:
                fusion_weight = p.weight
        steps += rerank_steps
    adopted = [s for s in steps if s.adopted]
    if adopted:
        reason = "; ".join(s.describe() for s in adopted)
    elif steps:
        reason = (
            f"no added component beat {start} with evidence (a 95% interval above 0 on dev, or for BM25 fusion and "
            "late-interaction re-scoring on train + dev with the base model), so the simplest pipeline ships"
        )
    else:
        reason = f"{start} is the only candidate"
    return Selection(system, steps, reason, fusion_weight)


def pipeline_record(
    selection: Selection,
    evaluate_p: dict[str, Any],
    *,
    fusion_weights: dict[str, float],
    alpha: float,
    chosen_on_dev: bool,
) -> dict[str, Any]:
    """What ``models/pipeline.json`` holds (:class:`ragtune.search.Pipeline` reads it): the chosen system, its
    retriever, whether it reranks, the weights chosen on dev, the candidate depths, and why it was chosen.
    ``fusion_weights`` is dev's reranker weight per retriever; ``fusion_weight`` is the served retriever's (1.0, the
    reranker alone, where none was chosen), and the others let ``search --pipeline`` run another system at dev's
    weight."""
    retriever, _, rr = selection.system.partition("+")
    return {
        "system": selection.system,
        "retriever": retriever,
        "rerank": bool(rr),
        "rerank_k": int(evaluate_p["rerank_k"]),
        "fusion_weight": fusion_weights.get(retriever, 1.0),
        "fusion_weights": dict(fusion_weights),
        "alpha": alpha,
        "candidate_k": int(evaluate_p["candidate_k"]),
        "rrf_k": int(evaluate_p["rrf_k"]),
        "rerank_bf16": evaluate_p["rerank_bf16"],  # the setting (auto resolves on the machine that serves)
        "chosen_on": "dev" if chosen_on_dev else "nothing (no dev split): the simplest pipeline",
        "reason": selection.reason,
    }
