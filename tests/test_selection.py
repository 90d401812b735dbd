"""Pipeline selection: a component ships only with dev evidence, and a tuned weight cannot flatter itself."""

from __future__ import annotations

import random

import numpy as np

from ragtune.evaluation.selection import RerankEvidence, choose_pipeline, tune_weight
from ragtune.retrieval import convex_fusion

RETRIEVERS = ("bm25", "ft_hybrid", "ft_convex")
RERANKED = {r: f"{r}+rerank" for r in ("ft_dense", *RETRIEVERS)}


def scores(values: list[float]) -> dict[str, float]:
    return {f"q{i:02d}": v for i, v in enumerate(values)}


def test_no_dev_means_the_simplest_pipeline_and_says_why():
    for dev in (None, {}, {"ft_dense": {}}):
        s = choose_pipeline(dev, start="ft_dense", retrievers=RETRIEVERS, reranked=RERANKED)
        assert s.system == "ft_dense" and not s.steps
        assert "no dev questions" in s.reason


def test_a_consistent_gain_is_adopted_and_a_noisy_one_is_not():
    rng = random.Random(0)
    base = [rng.uniform(0.3, 0.7) for _ in range(40)]
    dev = {
        "ft_dense": scores(base),
        "ft_hybrid": scores([b + 0.1 for b in base]),  # +10 points on every query
        "bm25": scores([b + (0.6 if i % 2 else -0.55) for i, b in enumerate(base)]),  # +2.5 on average, all noise
    }
    s = choose_pipeline(dev, start="ft_dense", retrievers=RETRIEVERS, reranked={})
    assert s.system == "ft_hybrid"
    by = {st.candidate: st for st in s.steps}
    assert by["ft_hybrid"].adopted and by["ft_hybrid"].ci_low > 0
    assert not by["bm25"].adopted and by["bm25"].gain > 0 and by["bm25"].ci_low < 0
    assert "ft_hybrid vs ft_dense" in s.reason


def test_without_evidence_nothing_is_added_even_with_a_higher_dev_mean():
    # The case: 15 dev questions, and the reranked pipeline is a little higher on dev by chance.
    rng = random.Random(1)
    base = [rng.choice([0.0, 0.5, 1.0]) for _ in range(15)]
    noisy = [min(1.0, max(0.0, b + rng.choice([-0.5, 0.0, 0.0, 0.5, 0.5]))) for b in base]
    assert sum(noisy) > sum(base)
    dev = {"ft_dense": scores(base), "ft_dense+rerank": scores(noisy)}
    s = choose_pipeline(dev, start="ft_dense", retrievers=RETRIEVERS, reranked=RERANKED, tuned=["ft_dense+rerank"])
    assert s.system == "ft_dense"
    assert [st.candidate for st in s.steps] == ["ft_dense+rerank"] and not s.steps[0].adopted
    assert "simplest pipeline ships" in s.reason


def test_the_reranker_is_judged_on_top_of_the_retriever_that_won():
    base = [0.5] * 30
    dev = {
        "ft_dense": scores(base),
        "ft_convex": scores([0.7] * 30),
        "ft_dense+rerank": scores([0.9] * 30),  # better than ft_dense, but ft_dense is no longer the retriever
        "ft_convex+rerank": scores([0.7] * 29 + [0.9]),  # one query better: no evidence
    }
    s = choose_pipeline(dev, start="ft_dense", retrievers=RETRIEVERS, reranked=RERANKED)
    assert s.system == "ft_convex"
    assert [(st.component, st.candidate, st.incumbent) for st in s.steps][-1] == (
        "reranker",
        "ft_convex+rerank",
        "ft_convex",
    )


def test_the_largest_evident_gain_wins_ties_to_the_simpler():
    base = [0.4] * 30
    dev = {"ft_dense": scores(base), "bm25": scores([0.6] * 30), "ft_hybrid": scores([0.6] * 30)}
    assert choose_pipeline(dev, start="ft_dense", retrievers=RETRIEVERS, reranked={}).system == "bm25"
    dev["ft_convex"] = scores([0.65] * 30)
    assert choose_pipeline(dev, start="ft_dense", retrievers=RETRIEVERS, reranked={}).system == "ft_convex"


def test_tune_weight_picks_the_best_and_cross_validates_the_pick():
    qids = [f"q{i:02d}" for i in range(20)]
    # weight 0.3 is best on every query: the choice is stable, so out-of-fold = its own scores
    per_w = {w: {q: 0.5 - abs(w - 0.3) for q in qids} for w in (0.0, 0.3, 0.6, 1.0)}
    tw = tune_weight(per_w, prefer=lambda w: -w, folds=5, seed=0)
    assert tw.weight == 0.3 and tw.out_of_fold == per_w[0.3]
    assert tw.curve[0.3] == 0.5


def test_a_weight_fitted_to_noise_scores_worse_out_of_fold_than_on_dev():
    # Each weight is perfect on a few queries of its own and useless elsewhere: the best dev mean is pure luck.
    rng = np.random.default_rng(3)
    qids = [f"q{i:02d}" for i in range(30)]
    per_w = {w / 10: {q: float(rng.random() < 0.3) for q in qids} for w in range(11)}
    tw = tune_weight(per_w, prefer=lambda w: -w, folds=5, seed=0)
    in_sample = tw.curve[tw.weight]
    out_of_fold = sum(tw.out_of_fold.values()) / len(qids)
    assert out_of_fold < in_sample


def test_tune_weight_breaks_ties_by_preference_and_handles_tiny_dev():
    per_w = {0.0: {"a": 1.0}, 0.5: {"a": 1.0}, 1.0: {"a": 0.0}}
    assert tune_weight(per_w, prefer=lambda w: -w).weight == 0.0
    assert tune_weight(per_w, prefer=lambda w: w).weight == 0.5
    assert set(tune_weight(per_w, prefer=lambda w: -w, folds=5).out_of_fold) == {"a"}


def test_convex_fusion_ends_are_each_side_alone_and_scores_are_exact():
    ids = [f"c{i}" for i in range(6)]
    dense = np.array([[0.9, 0.8, 0.7, 0.1, 0.2, 0.0]])
    sparse = np.array([[0.0, 1.0, 0.0, 9.0, 8.0, 0.5]])
    out = convex_fusion(["q"], ids, dense, sparse, [0.0, 0.5, 1.0], depth=2)
    assert [c for c, _ in out[1.0]["q"]] == ["c0", "c1"]  # dense alone
    assert [c for c, _ in out[0.0]["q"]] == ["c3", "c4"]  # BM25 alone
    # candidates = dense top 2 (c0, c1) ∪ BM25 top 2 (c3, c4), each scored exactly on both sides and min-max
    # normalised over the four: c4's true dense score (0.2, normalised 0.125) puts it first at 0.5; with the usual
    # "not retrieved = 0" it would tie c3's dense 0 and fall below c0
    first, score = out[0.5]["q"][0]
    assert first == "c4" and abs(score - (0.5 * 0.125 + 0.5 * 8 / 9)) < 1e-6


def test_bm25_fusion_may_borrow_evidence_from_the_base_model_over_train_and_dev():
    rng = random.Random(2)
    base = [rng.uniform(0.3, 0.7) for _ in range(20)]
    dev = {
        "ft_dense": scores(base),
        "ft_hybrid": scores([b + (0.3 if i % 4 == 0 else -0.05) for i, b in enumerate(base)]),
    }
    many = [rng.uniform(0.3, 0.7) for _ in range(200)]
    helps = (scores([m + 0.05 for m in many]), scores(many))  # the base model's hybrid +5 points on 200 questions
    # dev alone (20 queries, +3.75 mean, noisy) is not evidence
    alone = choose_pipeline(dev, start="ft_dense", retrievers=RETRIEVERS, reranked={})
    assert alone.system == "ft_dense"
    with_proxy = choose_pipeline(dev, start="ft_dense", retrievers=RETRIEVERS, reranked={}, proxy={"ft_hybrid": helps})
    step = next(s for s in with_proxy.steps if s.candidate == "ft_hybrid")
    assert with_proxy.system == "ft_hybrid" and step.evidence == "train+dev (base model)" and step.proxy["ci_low"] > 0
    # the proxy never outvotes a fine-tuned model that loses on dev
    dev["ft_hybrid"] = scores([b - 0.01 for b in base])
    hurt = choose_pipeline(dev, start="ft_dense", retrievers=RETRIEVERS, reranked={}, proxy={"ft_hybrid": helps})
    assert hurt.system == "ft_dense"
    # and a proxy that shows nothing adds nothing, even with a positive dev gain
    dev["ft_hybrid"] = scores([b + (0.3 if i % 4 == 0 else -0.05) for i, b in enumerate(base)])
    flat = (scores([m + rng.uniform(-0.1, 0.1) for m in many]), scores(many))
    assert (
        choose_pipeline(dev, start="ft_dense", retrievers=RETRIEVERS, reranked={}, proxy={"ft_hybrid": flat}).system
        == "ft_dense"
    )


def test_a_late_interaction_reranker_may_borrow_evidence_from_the_base_models_start():
    """The reranker step takes a base-model proxy as BM25 fusion does: adopted when the base model's start re-scoring
    helps over train + dev and the trained reranker's dev gain is not negative. The proxy is costly, so it is asked
    for only for the retriever kept, and only when dev alone cannot decide."""
    rng = random.Random(3)
    base = [rng.uniform(0.3, 0.7) for _ in range(20)]
    up = [b + (0.2 if i % 5 == 0 else -0.03) for i, b in enumerate(base)]
    dev = {"ft_dense": scores(base), "ft_dense+rerank": scores(up)}
    many = [rng.uniform(0.3, 0.7) for _ in range(200)]
    helps = RerankEvidence(scores([m + 0.04 for m in many]), scores(many), weight=0.5)
    asked = []

    def proxy(retriever):
        asked.append(retriever)
        return helps if retriever == "ft_dense" else None

    kw = {"start": "ft_dense", "retrievers": RETRIEVERS, "reranked": {"ft_dense": "ft_dense+rerank"}}
    kw["tuned"] = ["ft_dense+rerank"]
    assert choose_pipeline(dev, **kw).system == "ft_dense"  # dev alone (+1.6 mean over 20, noisy): no evidence
    chosen = choose_pipeline(dev, **kw, rerank_proxy=proxy)
    step = chosen.steps[-1]
    assert (
        chosen.system == "ft_dense+rerank" and step.component == "reranker" and step.adopted and asked == ["ft_dense"]
    )
    assert step.evidence == "train+dev (base model)" and step.proxy["n_queries"] == 200
    assert step.proxy["weight"] == 0.5 and chosen.fusion_weight is None  # dev's own weight (no tie): nothing to change
    # no proxy for the retriever kept: dev alone
    assert choose_pipeline(dev, **kw, rerank_proxy=lambda r: None).system == "ft_dense"
    # the trained reranker losing on dev vetoes it, without paying for the proxy
    asked.clear()
    dev["ft_dense+rerank"] = scores([b - 0.005 for b in base])
    assert choose_pipeline(dev, **kw, rerank_proxy=proxy).system == "ft_dense" and asked == []
    # dev alone is evidence enough: adopted on dev, the proxy not asked
    dev["ft_dense+rerank"] = scores([b + 0.05 for b in base])
    chosen = choose_pipeline(dev, **kw, rerank_proxy=proxy)
    assert chosen.system == "ft_dense+rerank" and chosen.steps[-1].evidence == "dev" and asked == []


def test_a_proxy_that_breaks_a_tie_on_dev_sets_the_weight_the_reranker_ships_with():
    """Every dev question already first: every fusion weight ties on dev, and the tie goes to 0 (no re-scoring),
    where the proxy's gain is 0 by construction. When the proxy chose among the tied weights, the weight it was
    measured at is the one the pipeline ships with; when it measured weight 0, nothing is adopted."""
    dev = {"ft_dense": scores([1.0] * 11), "ft_dense+rerank": scores([1.0] * 11)}
    rng = random.Random(5)
    many = [rng.uniform(0.3, 0.7) for _ in range(50)]
    kw = {
        "start": "ft_dense",
        "retrievers": (),
        "reranked": {"ft_dense": "ft_dense+rerank"},
        "tuned": ["ft_dense+rerank"],
    }
    helps = RerankEvidence(scores([m + 0.05 for m in many]), scores(many), weight=0.7, tied=(0.0, 0.3, 0.7, 1.0))
    chosen = choose_pipeline(dev, **kw, rerank_proxy=lambda r: helps)
    assert chosen.system == "ft_dense+rerank" and chosen.fusion_weight == 0.7
    assert chosen.steps[-1].proxy["tied"] == [0.0, 0.3, 0.7, 1.0] and "fusion weight 0.7" in chosen.reason
    assert chosen.to_json()["fusion_weight"] == 0.7
    at_zero = RerankEvidence(scores(many), scores(many), weight=0.0, tied=(0.0, 1.0))
    chosen = choose_pipeline(dev, **kw, rerank_proxy=lambda r: at_zero)
    assert chosen.system == "ft_dense" and chosen.fusion_weight is None and "fusion_weight" not in chosen.to_json()


def test_tune_weight_reports_every_weight_tied_at_the_top():
    per_w = {0.0: {"a": 1.0, "b": 0.5}, 0.5: {"a": 0.5, "b": 1.0}, 1.0: {"a": 0.0, "b": 1.0}}
    assert tune_weight(per_w, prefer=lambda w: -w).tied == (0.0, 0.5)
    assert tune_weight({0.0: {"a": 1.0}, 1.0: {"a": 0.0}}, prefer=lambda w: -w).tied == (0.0,)
