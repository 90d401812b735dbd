"""evaluate's warning rules and metrics/evaluate.json, on small dicts (no model is loaded)."""

from __future__ import annotations

from typing import Any

from ragtune.evaluation.report import evaluate_metrics, evaluation_warnings
from ragtune.evaluation.selection import Selection, pipeline_record


def _results(*, dev: bool = True, n_test: int = 40, ft: float = 0.8, base: float = 0.7) -> dict[str, Any]:
    test = {"base_dense": {"ndcg@10": base}, "ft_dense": {"ndcg@10": ft}, "bm25": {"ndcg@10": 0.6}}
    out = {"test": {"n_queries": n_test, "doc": test, "chunk": {"ft_dense": {"ndcg@10": 0.5}}}}
    if dev:
        out = {"dev": {"n_queries": 10, "doc": test, "chunk": {}}, **out}
    return out


def _gains(ci_low: float = 0.02) -> dict[str, dict[str, float]]:
    return {"ft_dense": {"gain": 0.1, "ci_low": ci_low, "ci_high": 0.2, "n_queries": 40}}


def _reranker(retriever: float, alone: float, share: float = 0.1) -> dict[str, Any]:
    return {
        "weight": 0.7,
        "test_ndcg@10": {"retriever": retriever, "reranker": alone, "fused": 0.85},
        "top1_doc": "D1",
        "top1_share": share,
    }


def warnings(results: dict[str, Any], **kw: Any) -> list[str]:
    args: dict[str, Any] = {"fine_tuned": True, "pipeline": "ft_dense", "gains": _gains(), "reranker": {}}
    return evaluation_warnings(results, **{**args, **kw})


def test_a_clean_run_passes_on_the_training_and_forgetting_warnings_in_order() -> None:
    assert warnings(_results()) == []
    got = warnings(_results(), trained=["train_embedder: a"], forgetting=["forgetting: b"])
    assert got == ["train_embedder: a", "forgetting: b"]


def test_each_rule_fires_on_its_own_condition() -> None:
    [w] = warnings(_results(dev=False))
    assert w.startswith("no dev split: nothing could check an added component, so search serves ft_dense")
    [w] = warnings(_results(ft=0.7, base=0.75))
    assert w == "the fine-tuned embedder does not beat its base model on test ndcg@10 (-0.0500)"
    [w] = warnings(_results(), gains=_gains(ci_low=-0.01))
    assert (
        w == "ft_dense's test gain over base_dense (+10.0 pts) is within noise: 95% interval [-1.0, +20.0] contains 0"
    )
    assert warnings(_results(ft=0.7, base=0.75), fine_tuned=False) == []  # nothing fine-tuned, nothing to compare
    [w] = warnings(_results(n_test=12))
    assert w.startswith("only 12 test queries: differences under ~5 points are noise")


def test_the_reranker_rules_depend_on_what_is_served() -> None:
    worse = {"ft_hybrid": _reranker(retriever=0.8, alone=0.7)}
    assert warnings(_results(), reranker=worse, pipeline="ft_hybrid") == []  # not served: no warning
    [w] = warnings(_results(), reranker=worse, pipeline="ft_hybrid+rerank")
    assert w == (
        "the reranker alone makes ft_hybrid worse on test: ndcg@10 0.8000 → 0.7000 (fusion weight chosen on dev: 0.7, "
        "fused 0.8500)"
    )
    [w] = warnings(_results(), reranker={"bm25": _reranker(0.7, 0.8, share=0.25)})
    assert w == "the reranker puts D1 first for 25% of test queries (bm25): it may rank by document popularity"
    # the order a reader meets them: training, reranker, no dev, fine-tuning, forgetting, test size
    got = warnings(
        _results(dev=False, n_test=5, ft=0.6),
        reranker={"bm25": _reranker(0.7, 0.8, share=0.5)},
        trained=["train_reranker: t"],
        forgetting=["forgetting: f"],
    )
    assert [w.split()[:2] for w in got] == [
        ["train_reranker:", "t"],
        ["the", "reranker"],
        ["no", "dev"],
        ["the", "fine-tuned"],
        ["forgetting:", "f"],
        ["only", "5"],
    ]


def test_evaluate_json_holds_the_pipeline_only_when_one_was_chosen() -> None:
    results = _results()
    bare = evaluate_metrics(results, gains=_gains(), warnings=["w"])
    assert bare == {
        "dev": results["dev"]["doc"],
        "test": results["test"]["doc"],
        "dev_chunk": {},
        "test_chunk": results["test"]["chunk"],
        "n_queries": {"dev": 10, "test": 40},
        "test_gain_vs_base_dense": _gains(),
        "warnings": ["w"],
    }
    selection = Selection("ft_dense", reason="why").to_json()
    full = evaluate_metrics(
        results, gains=_gains(), warnings=[], selection=selection, convex={"alpha": 0.5}, reranker={"x": {}}
    )
    assert full["pipeline"] == {"system": "ft_dense", "test": results["test"]["doc"]["ft_dense"]}
    assert full["selection"] is selection and full["convex"] == {"alpha": 0.5} and "out_of_domain" not in full


def test_pipeline_record_is_what_search_reads() -> None:
    e = {"rerank_k": "7", "candidate_k": 50, "rrf_k": 60, "rerank_bf16": 1}
    rec = pipeline_record(
        Selection("ft_convex+rerank", reason="r"),
        e,
        fusion_weights={"ft_dense": 0.9, "ft_convex": 0.4},
        alpha=0.6,
        chosen_on_dev=True,
    )
    assert rec == {
        "system": "ft_convex+rerank",
        "retriever": "ft_convex",
        "rerank": True,
        "rerank_k": 7,
        "fusion_weight": 0.4,
        "fusion_weights": {"ft_dense": 0.9, "ft_convex": 0.4},
        "alpha": 0.6,
        "candidate_k": 50,
        "rrf_k": 60,
        "rerank_bf16": True,
        "chosen_on": "dev",
        "reason": "r",
    }
    rec = pipeline_record(Selection("ft_dense"), e, fusion_weights={}, alpha=0.5, chosen_on_dev=False)
    assert rec["chosen_on"] == "nothing (no dev split): the simplest pipeline" and rec["rerank"] is False
    assert rec["fusion_weight"] == 1.0  # no reranker weight chosen: the reranker alone if one is asked for
