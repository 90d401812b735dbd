"""The evaluate stage's wiring: run_evaluate on the tiny models in a tmp folder, asserting on the files it writes.

Where params meet the library: the served pipeline and its weights come from evaluate.* (chosen on dev, or the
documented fallbacks without dev), pipeline.json is what search reads, and metrics/evaluate.json holds the choice.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import TOPICS, shipped_params

import ragtune.evaluation.run as run_module
from ragtune.evaluation.metrics import dense_ranking, ndcg_per_query
from ragtune.evaluation.run import load_splits, run_evaluate
from ragtune.evaluation.selection import tune_weight
from ragtune.evaluation.systems import RETRIEVERS, Retrievers, hybrid_proxy, rank_splits
from ragtune.io import read_json, read_jsonl, write_jsonl
from ragtune.paths import Paths
from ragtune.rerank import apply_rerank
from ragtune.retrieval import rrf
from ragtune.search import Pipeline

PIPELINE_KEYS = {
    "system",
    "retriever",
    "rerank",
    "rerank_k",
    "fusion_weight",
    "fusion_weights",
    "alpha",
    "candidate_k",
    "rrf_k",
    "rerank_bf16",
    "chosen_on",
    "reason",
}
BASE_SYSTEMS = {"bm25", "base_dense", "hybrid"}
FT_SYSTEMS = {"ft_dense", "ft_hybrid", "ft_convex"}


@pytest.fixture(scope="session")
def tiny_reranker_path(tmp_path_factory: pytest.TempPathFactory, tiny_embedder_path: Path) -> Path:
    """A one-logit cross-encoder on the tiny embedder, its new head seeded (the global RNG untouched)."""
    import torch
    from sentence_transformers import CrossEncoder

    out = tmp_path_factory.mktemp("reranker") / "reranker"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        CrossEncoder(str(tiny_embedder_path), num_labels=1, max_length=64).save_pretrained(str(out))
    return out


def _folder(
    tmp_path: Path, embedder: Path | None, reranker: Path | None = None, *, dev: bool = True, test: bool = True
) -> Paths:
    """What evaluate reads: the TOPICS corpus (one chunk per document) and one train, dev and test question per
    document; ``models/embedder`` and ``models/reranker`` when given."""
    paths = Paths(tmp_path / "repo")
    write_jsonl(paths.documents, [{"doc_id": f"D{i}", "title": t, "text": b} for i, (t, b) in enumerate(TOPICS)])
    write_jsonl(
        paths.chunks,
        [{"chunk_id": f"D{i}#0", "doc_id": f"D{i}", "text": f"{t}\n{b}"} for i, (t, b) in enumerate(TOPICS)],
    )
    templates = {"train": "{t} quy định thế nào?", "dev": "hỏi về {t}", "test": "{b0}?"}
    for split, template in templates.items():
        keep = {"train": True, "dev": dev, "test": test}[split]
        questions = [
            {
                "query_id": f"{split}{i}",
                "query": template.format(t=t, b0=b.split(".")[0].lower()),
                "positive_doc_ids": [f"D{i}"],
                "positive_chunk_ids": [f"D{i}#0"],
            }
            for i, (t, b) in enumerate(TOPICS)
        ]
        write_jsonl(paths.split(split), questions if keep else [])
    if embedder is not None:
        shutil.copytree(embedder, paths.embedder)
    if reranker is not None:
        shutil.copytree(reranker, paths.reranker)
    return paths


def _run(paths: Paths, tiny_embedder_path: Path, monkeypatch: pytest.MonkeyPatch, **evaluate: Any) -> dict[str, str]:
    """run_evaluate with the shipped params, the tiny base embedder and ``evaluate`` overrides. The bake-off's child
    process is replaced by a stub that records what it was asked to measure (tests/test_bakeoff.py measures)."""

    def measure(model: Any, texts: Any, prompt: str, **kw: Any) -> dict[str, Any]:
        return {"model": str(model), "n_passages": len(texts), "prompt": prompt}

    monkeypatch.setattr(run_module, "measure_encoder", measure)
    return run_evaluate(*_sections(paths, tiny_embedder_path, **evaluate), paths)


def _sections(paths: Paths, tiny_embedder_path: Path, **evaluate: Any) -> tuple[dict[str, Any], ...]:
    """model, bm25, chunk, ingest and evaluate: the shipped sections, with the tiny model and small depths."""
    model_p = shipped_params("model", embedder=str(tiny_embedder_path), max_seq_length=64)
    chunk_p = shipped_params("chunk", max_tokens=48, overlap_tokens=8)
    ingest_p = shipped_params("ingest", root=str(paths.root / "corpus"))
    defaults = {"rerank_k": 4, "rerank_bf16": False, "bakeoff_passages": 3, "candidate_k": 6, "out_of_domain": []}
    evaluate_p = shipped_params("evaluate", **{**defaults, **evaluate})
    return model_p, shipped_params("bm25", tokenizer="syllable"), chunk_p, ingest_p, evaluate_p


def _selection_follows_its_steps(selection: dict[str, Any]) -> str:
    """The system the ladder's recorded steps lead to: ft_dense, replaced by an adopted retriever, then reranked."""
    system = "ft_dense"
    for step in selection["steps"]:
        chosen = step["candidate"] in (selection["system"], selection["system"].partition("+")[0])
        assert step["adopted"] == chosen
        if step["adopted"]:
            assert step["ci_low"] > 0 or (step["proxy"]["ci_low"] > 0 and step["gain"] >= 0)
            system = step["candidate"]
    return system


def test_with_dev_and_a_reranker_the_weights_come_from_the_params_grids(
    tmp_path: Path, tiny_embedder_path: Path, tiny_reranker_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = _folder(tmp_path, tiny_embedder_path, tiny_reranker_path)
    # an out-of-domain set in the corpus's own folder (ingest.root) is skipped: the chunk and ingest params reach it
    (paths.root / "ood.yaml").write_text(yaml.safe_dump({"root": "corpus"}), encoding="utf-8")
    ood = [{"name": "mine", "ingest": str(paths.root / "ood.yaml")}]
    # one-value grids: a weight that is not 0.3 / 0.2 came from somewhere other than evaluate.*
    summary = _run(paths, tiny_embedder_path, monkeypatch, fusion_weights=[0.3], convex_alphas=[0.2], out_of_domain=ood)

    metrics = read_json(paths.metrics("evaluate"))
    pipeline = read_json(paths.pipeline)
    assert set(pipeline) == PIPELINE_KEYS
    system = pipeline["system"]
    assert system == metrics["selection"]["system"] == metrics["pipeline"]["system"]
    assert _selection_follows_its_steps(metrics["selection"]) == system
    assert pipeline["reason"] == metrics["selection"]["reason"]
    assert pipeline["retriever"] == system.partition("+")[0] and pipeline["rerank"] == system.endswith("+rerank")
    assert (pipeline["fusion_weight"], pipeline["alpha"]) == (0.3, 0.2)
    # every retriever's dev weight, as the report has it, so that search --pipeline fuses at the right one
    assert pipeline["fusion_weights"] == {r: rep["weight"] for r, rep in metrics["reranker"].items()}
    assert set(pipeline["fusion_weights"]) == {"bm25", "ft_dense", "ft_hybrid", "ft_convex"}
    assert (pipeline["rerank_k"], pipeline["candidate_k"], pipeline["rrf_k"], pipeline["rerank_bf16"]) == (
        4,
        6,
        60,
        False,  # the setting as given (auto would stay "auto", resolved on the machine that serves)
    )
    assert pipeline["chosen_on"] == "dev"
    assert Pipeline.load(paths.pipeline).name == system  # search serves what evaluate chose

    reranked = {f"{r}+rerank" for r in RETRIEVERS}
    assert set(metrics) == {
        "dev",
        "test",
        "dev_chunk",
        "test_chunk",
        "n_queries",
        "test_gain_vs_base_dense",
        "warnings",
        "pipeline",
        "selection",
        "convex",
        "reranker",
        "reranker_2x2",
        "out_of_domain",
        "base_model",  # name, revision, commit, fingerprint of model.embedder
    }
    assert metrics["base_model"]["commit"] == "local"  # the tiny embedder is a local folder
    assert set(metrics["test"]) == set(metrics["dev"]) == BASE_SYSTEMS | FT_SYSTEMS | reranked
    assert metrics["n_queries"] == {"dev": 8, "test": 8}
    assert set(metrics["test_gain_vs_base_dense"]) == (BASE_SYSTEMS | FT_SYSTEMS | reranked) - {"bm25", "base_dense"}
    assert metrics["convex"]["alpha"] == 0.2 and list(metrics["convex"]["dev_curve"]) == ["0.20"]
    assert set(metrics["reranker"]) == set(RETRIEVERS)
    for r in metrics["reranker"].values():
        assert (r["weight"], r["weight_chosen_on"], list(r["dev_curve"]), r["rerank_k"]) == (0.3, "dev", ["0.30"], 4)
    # the 2×2: each embedder's own ranking as scored above, and the reranker alone over its top rerank_k
    grid = metrics["reranker_2x2"]
    assert grid["rerank_k"] == 4 and set(grid) == {"rerank_k", "dev", "test"}
    for split in ("dev", "test"):
        assert grid[split]["base"]["retriever"] == round(metrics[split]["base_dense"]["ndcg@10"], 4)
        assert grid[split]["fine-tuned"]["retriever"] == round(metrics[split]["ft_dense"]["ndcg@10"], 4)
        assert grid[split]["fine-tuned"]["reranked"] == metrics["reranker"]["ft_dense"][f"{split}_ndcg@10"]["reranker"]
        assert 0 <= grid[split]["base"]["reranked"] <= 1
    # the dev scores the ladder compared: tuned systems are judged out of fold
    steps = {s["candidate"]: s for s in metrics["selection"]["steps"]}
    assert {c for c, s in steps.items() if s["tuned"]} <= {"ft_convex"} | reranked
    assert steps["ft_hybrid"]["proxy"]["n_queries"] == 16  # BM25 fusion's evidence: the base model on train + dev
    assert metrics["out_of_domain"] == {
        "mine": {"skipped": "the same folder as ingest.root, so it is in domain, not out of it"}
    }
    assert any(w.startswith("only 8 test queries") for w in metrics["warnings"])

    assert read_json(paths.metrics("models")) == {
        "base_dense": {"model": str(tiny_embedder_path), "n_passages": 3, "prompt": "passage: "},
        "ft_dense": {"model": str(paths.embedder), "n_passages": 3, "prompt": "passage: "},
    }
    with paths.recall_at_k.open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["k"] for r in rows] == ["1", "2", "3", "5"]  # plot_ks up to candidate_k
    assert set(rows[0]) == {"k"} | set(metrics["test"])
    records = read_jsonl(paths.per_query_test)
    assert [r["query_id"] for r in records] == [f"test{i}" for i in range(8)]
    assert set(records[0]["systems"]) == set(metrics["test"])
    report = paths.report.read_text(encoding="utf-8")
    assert (
        f"## Headline: `{system}`" in report and "## Reranker" in report and "## How the pipeline was chosen" in report
    )
    assert "### Embedder × reranker" in report and f"| base | {grid['dev']['base']['retriever']:.4f} |" in report
    assert summary["read"] == "8 chunks, 8 dev queries, 8 test queries"
    assert summary["wrote"].startswith(f"{paths.metrics('evaluate')}, {paths.report} (serving {system}; test ndcg@10: ")


def test_a_weight_chosen_by_the_proxy_among_dev_ties_is_the_one_served_and_reported(
    tmp_path: Path, tiny_embedder_path: Path, tiny_reranker_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When selection adopts the reranker at a weight the proxy chose among dev's tied weights, the served pipeline,
    the reranker report and the test figures of that system all use that weight, not dev's tie-break."""
    from ragtune.evaluation.selection import Selection

    paths = _folder(tmp_path, tiny_embedder_path, tiny_reranker_path)
    real = run_module.choose_pipeline

    def adopt_at_one(*args: Any, **kw: Any) -> Selection:
        chosen = real(*args, **kw)
        return Selection("ft_dense+rerank", chosen.steps, "the proxy broke dev's tie", fusion_weight=1.0)

    monkeypatch.setattr(run_module, "choose_pipeline", adopt_at_one)
    _run(paths, tiny_embedder_path, monkeypatch, fusion_weights=[0.0])  # dev can only choose weight 0
    pipeline, metrics = read_json(paths.pipeline), read_json(paths.metrics("evaluate"))
    assert (pipeline["system"], pipeline["fusion_weight"]) == ("ft_dense+rerank", 1.0)
    report = metrics["reranker"]["ft_dense"]
    assert report["weight"] == 1.0 and "tied on dev" in report["weight_chosen_on"]
    # weight 1 is the reranker alone over the top rerank_k: the served system's test figure is that one
    assert report["test_ndcg@10"]["fused"] == report["test_ndcg@10"]["reranker"]
    assert metrics["test"]["ft_dense+rerank"]["ndcg@10"] == pytest.approx(report["test_ndcg@10"]["reranker"], abs=1e-4)
    assert metrics["reranker"]["bm25"]["weight"] == 0.0  # the retrievers not served keep dev's weight


def test_without_dev_the_simplest_pipeline_ships_with_the_untuned_weights(
    tmp_path: Path, tiny_embedder_path: Path, tiny_reranker_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = _folder(tmp_path, tiny_embedder_path, tiny_reranker_path, dev=False)
    # no 0.5 among the alphas: the middle one; the reranker weight is 0.5, whatever the grid holds
    _run(paths, tiny_embedder_path, monkeypatch, fusion_weights=[0.3], convex_alphas=[0.1, 0.3, 0.9])

    metrics = read_json(paths.metrics("evaluate"))
    pipeline = read_json(paths.pipeline)
    assert set(pipeline) == PIPELINE_KEYS
    assert (pipeline["system"], pipeline["retriever"], pipeline["rerank"]) == ("ft_dense", "ft_dense", False)
    assert pipeline["chosen_on"] == "nothing (no dev split): the simplest pipeline"
    assert (pipeline["alpha"], pipeline["fusion_weight"]) == (0.3, 0.5)
    assert metrics["selection"]["steps"] == [] and "no dev questions" in metrics["selection"]["reason"]
    assert "dev" not in metrics and metrics["n_queries"] == {"test": 8}
    assert metrics["convex"] == {"alpha": 0.3, "dev_curve": {}}
    for r in metrics["reranker"].values():
        assert (r["weight"], r["weight_chosen_on"], r["dev_curve"]) == (0.5, "none (no dev split)", {})
    assert any(w.startswith("no dev split: nothing could check an added component") for w in metrics["warnings"])
    assert paths.report.exists() and paths.per_query_test.exists()


def test_without_a_fine_tuned_embedder_nothing_is_chosen(
    tmp_path: Path, tiny_embedder_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = _folder(tmp_path, embedder=None)
    summary = _run(paths, tiny_embedder_path, monkeypatch)

    assert not paths.pipeline.exists()
    metrics = read_json(paths.metrics("evaluate"))
    assert not {"pipeline", "selection", "convex", "reranker", "out_of_domain"} & set(metrics)
    assert set(metrics["test"]) == BASE_SYSTEMS
    assert set(read_json(paths.metrics("models"))) == {"base_dense"}
    assert paths.report.exists()
    assert "(serving None; " in summary["wrote"]


def test_an_empty_test_split_is_refused(tmp_path: Path, tiny_embedder_path: Path, monkeypatch: pytest.MonkeyPatch):
    paths = _folder(tmp_path, embedder=None, test=False)
    with pytest.raises(SystemExit, match="the test split is empty"):
        _run(paths, tiny_embedder_path, monkeypatch)
    assert not paths.metrics("evaluate").exists()


def test_the_proxy_reuses_the_dev_rankings_as_ranking_train_and_dev_afresh_would(
    tmp_path: Path, tiny_embedder_path: Path
) -> None:
    """hybrid_proxy takes dev's BM25 and base-model rankings from rank_splits instead of ranking dev again."""
    paths = _folder(tmp_path, embedder=None)
    model_p, bm25_p, _, _, evaluate_p = _sections(paths, tiny_embedder_path)
    chunks, train = read_jsonl(paths.chunks), read_jsonl(paths.train)
    splits = load_splits(paths)
    r = Retrievers.load(chunks, model_p, bm25_p, paths)
    systems, _ = rank_splits(r, splits, evaluate_p)
    got = hybrid_proxy(r, train, splits, systems, depth=6, rrf_k=60)

    pool = train + splits["dev"]
    dense = dense_ranking(r.base_index, r.base.encode_queries, pool, 6)
    hybrid = rrf([r.bm25.search({q["query_id"]: q["query"] for q in pool}, 6), dense], k=60, depth=6)
    c2d = r.chunk_to_doc
    assert got == {"ft_hybrid": (ndcg_per_query(hybrid, pool, c2d), ndcg_per_query(dense, pool, c2d))}
    assert len(got["ft_hybrid"][0]) == 16
    assert hybrid_proxy(r, [], splits, systems, depth=6, rrf_k=60) == {}  # no train questions: no proxy


def test_rerank_proxy_rescores_the_base_analogues_with_the_base_models_late_interaction_start(
    tmp_path: Path, tiny_embedder_path: Path, tiny_reranker_path: Path
) -> None:
    """rerank_proxy: the base model's untrained late-interaction start re-scores the retriever's base analogue over
    train (capped, seeded) + dev, at dev's fusion weight; only for a late-interaction reranker."""
    from ragtune.evaluation.systems import rerank_proxy
    from ragtune.rerankers.late_interaction import LateInteractionReranker

    li = tmp_path / "li"
    LateInteractionReranker.from_embedder(tiny_embedder_path, max_query_length=16, max_doc_length=48).save(li)
    paths = _folder(tmp_path, embedder=tiny_embedder_path)
    model_p, bm25_p, _, _, evaluate_p = _sections(paths, tiny_embedder_path)
    chunks, train, splits = read_jsonl(paths.chunks), read_jsonl(paths.train), load_splits(paths)
    r = Retrievers.load(chunks, model_p, bm25_p, paths)
    _, dev = rank_splits(r, splits, evaluate_p)
    dev.weights |= {"ft_dense+rerank": 1.0, "bm25+rerank": 0.0, "ft_hybrid+rerank": 0.5}

    def proxy(retriever: str, reranker: Path = li, **e: Any) -> Any:
        return rerank_proxy(r, chunks, train, splits, reranker, tiny_embedder_path, dev, evaluate_p | e, retriever)

    pool, k, c2d = train + splits["dev"], int(evaluate_p["rerank_k"]), r.chunk_to_doc
    dense = dense_ranking(r.base_index, r.base.encode_queries, pool, int(evaluate_p["candidate_k"]))
    start = LateInteractionReranker.from_embedder(tiny_embedder_path, max_query_length=16, max_doc_length=48)
    text, qtext = {c["chunk_id"]: c["text"] for c in chunks}, {q["query_id"]: q["query"] for q in pool}
    by_hand = {}
    for qid, items in dense.items():  # weight 1: the start's MaxSim order over the top k, then the rest
        top = [cid for cid, _ in items[:k]]
        s = start.predict([(qtext[qid], text[cid]) for cid in top])
        order = sorted(range(len(top)), key=lambda i: (-s[i], i))
        by_hand[qid] = [(top[i], 0.0) for i in order] + items[k:]
    got = proxy("ft_dense")
    rescored, plain = got.rescored, got.plain
    assert plain == ndcg_per_query(dense, pool, c2d) and len(plain) == len(train) + len(splits["dev"])
    assert rescored == pytest.approx(ndcg_per_query(by_hand, pool, c2d)) and got.weight == 1.0 and got.tied == ()
    bm25 = proxy("bm25")
    assert bm25.rescored == bm25.plain and bm25.weight == 0.0  # weight 0: BM25's own order
    hybrid = rrf([r.bm25.search({q["query_id"]: q["query"] for q in pool}, 6), dense], k=60, depth=6)
    assert proxy("ft_hybrid").plain == ndcg_per_query(hybrid, pool, c2d)  # the base RRF hybrid, not re-scored
    assert proxy("ft_convex") is None  # no dev weight for ft_convex+rerank

    # dev tied weights 0, 0.5 and 1 (e.g. every dev question already first): the proxy chooses among them on its
    # own questions, cross-validated, instead of measuring weight 0, where re-scoring changes nothing
    dev.weights["ft_dense+rerank"], dev.ties["ft_dense+rerank"] = 0.0, (0.0, 0.5, 1.0)
    tied = proxy("ft_dense")
    start_scores = {
        qid: start.predict([(qtext[qid], text[cid]) for cid, _ in items[:k]]) for qid, items in dense.items()
    }
    per_w = {w: ndcg_per_query(apply_rerank(dense, start_scores, w), pool, c2d) for w in (0.0, 0.5, 1.0)}
    tw = tune_weight(
        per_w, prefer=lambda w: -w, folds=int(evaluate_p["select_folds"]), seed=int(evaluate_p["select_seed"])
    )
    assert tied.tied == (0.0, 0.5, 1.0) and tied.weight == tw.weight and tied.plain == plain
    assert tied.rescored == pytest.approx(tw.out_of_fold)
    assert per_w[1.0] == pytest.approx(rescored)  # weight 1 among the tied is the re-scoring checked by hand above
    dev.ties["ft_dense+rerank"] = (0.0,)  # one best weight: measured there, as before
    assert proxy("ft_dense").rescored == plain

    capped = proxy("ft_dense", rerank_proxy_queries=3).plain
    assert len(capped) == 3 + len(splits["dev"]) and set(capped) >= {q["query_id"] for q in splits["dev"]}
    assert proxy("ft_dense", rerank_proxy_queries=0) is None
    assert proxy("ft_dense", reranker=tiny_reranker_path) is None  # a cross-encoder: no untrained analogue
