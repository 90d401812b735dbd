import math
import random

import pytest

from ragtune.evaluation.metrics import evaluate_ranking, query_metrics


def test_hand_computed_example():
    # relevant: a, c ; ranking: b a d c e
    m = query_metrics(["b", "a", "d", "c", "e"], {"a", "c"}, ks=[1, 3, 5])
    assert m["hit@1"] == 0 and m["hit@3"] == 1
    assert m["precision@3"] == pytest.approx(1 / 3)
    assert m["recall@3"] == pytest.approx(0.5)
    assert m["recall@5"] == pytest.approx(1.0)
    assert m["mrr@1"] == 0 and m["mrr@3"] == pytest.approx(0.5)
    dcg5 = 1 / math.log2(3) + 1 / math.log2(5)
    idcg = 1 + 1 / math.log2(3)
    assert m["ndcg@5"] == pytest.approx(dcg5 / idcg)
    assert m["ndcg@1"] == 0
    # AP@5 = (1/2 + 2/4) / min(5, 2)
    assert m["map@5"] == pytest.approx((0.5 + 0.5) / 2)
    assert m["map@3"] == pytest.approx(0.5 / 2)


def test_perfect_and_missing():
    assert query_metrics(["x", "y"], {"x"}, [1])["ndcg@1"] == 1.0
    miss = query_metrics([], {"x"}, [10])
    assert all(v == 0 for v in miss.values())
    with pytest.raises(ValueError):
        query_metrics(["x"], set(), [1])


def test_query_with_no_results_counts_as_zero():
    mean, _ = evaluate_ranking({"q1": [("a", 1.0)]}, {"q1": {"a"}, "q2": {"b"}}, [1])
    assert mean["hit@1"] == 0.5


def test_matches_sentence_transformers_information_retrieval_evaluator():
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    rng = random.Random(0)
    corpus = {f"d{i:02d}": f"doc {i}" for i in range(40)}
    queries = {f"q{i}": f"query {i}" for i in range(25)}
    qrels = {q: set(rng.sample(sorted(corpus), rng.randint(1, 4))) for q in queries}
    ranking = {}
    for q in queries:
        ids = sorted(corpus)
        rng.shuffle(ids)
        ranking[q] = [(d, round(1.0 - i / 100, 4)) for i, d in enumerate(ids)]
    ks = [1, 3, 5, 10]
    ours, _ = evaluate_ranking(ranking, qrels, ks)

    ev = InformationRetrievalEvaluator(
        queries, corpus, qrels, accuracy_at_k=ks, precision_recall_at_k=ks, mrr_at_k=ks, ndcg_at_k=ks, map_at_k=ks
    )
    theirs = ev.compute_metrics([[{"corpus_id": d, "score": s} for d, s in ranking[q]] for q in ev.queries_ids])
    names = {"hit": "accuracy@k", "precision": "precision@k", "recall": "recall@k", "mrr": "mrr@k"}
    names |= {"ndcg": "ndcg@k", "map": "map@k"}
    for ours_name, their_name in names.items():
        for k in ks:
            assert ours[f"{ours_name}@{k}"] == pytest.approx(float(theirs[their_name][k]), abs=1e-4), (ours_name, k)


def test_paired_bootstrap_interval_separates_signal_from_noise():
    from ragtune.evaluation.metrics import paired_bootstrap

    base = {f"q{i}": {"ndcg@10": 0.5} for i in range(40)}
    better = {f"q{i}": {"ndcg@10": 0.6} for i in range(40)}  # every query +0.1: the interval is tight around it
    g = paired_bootstrap(better, base)
    assert g == {"gain": 0.1, "ci_low": 0.1, "ci_high": 0.1, "n_queries": 40}
    # one query +1.0, the rest unchanged: a positive mean whose interval reaches 0
    lucky = {**base, "q0": {"ndcg@10": 1.0}}
    g = paired_bootstrap(lucky, base)
    assert g["gain"] > 0 and g["ci_low"] <= 0 < g["ci_high"]
    assert paired_bootstrap(lucky, base) == g  # seeded
    assert paired_bootstrap({}, base)["n_queries"] == 0
