"""The evaluate stage: rank held-out queries with every system, choose the served pipeline on dev evidence, write
``models/pipeline.json``, the metrics and the report.

Order of work: rank every split with every system (:mod:`~ragtune.evaluation.systems`), choose the pipeline on dev
(:mod:`~ragtune.evaluation.selection`), score every split (:mod:`~ragtune.evaluation.metrics`), then write what a
reader and ``ragtune search`` use (:mod:`~ragtune.evaluation.report`). Test scores are computed last and never take
part in a choice.
"""

from __future__ import annotations

from typing import Any

from ragtune.console import warn
from ragtune.evaluation.bakeoff import measure_encoder
from ragtune.evaluation.metrics import paired_bootstrap, score_systems
from ragtune.evaluation.report import (
    evaluate_metrics,
    evaluation_warnings,
    per_query_records,
    question_sources,
    recall_curve,
    render_report,
    write_curve_csv,
)
from ragtune.evaluation.selection import RerankEvidence, choose_pipeline, pipeline_record
from ragtune.evaluation.systems import (
    RETRIEVERS,
    UNTUNED,
    Retrievers,
    Splits,
    add_reranked_systems,
    hybrid_proxy,
    rank_splits,
    rerank_proxy,
)
from ragtune.io import read_json, read_jsonl, write_json, write_jsonl
from ragtune.models import model_source, resolve_model
from ragtune.paths import Paths

TRAIN_STAGES = ("train_embedder", "train_reranker")  # their metrics' warnings are repeated in the report


def load_splits(paths: Paths) -> Splits:
    """The non-empty held-out splits; no test split is an error (a model is never reported without one)."""
    splits = {s: read_jsonl(paths.split(s)) for s in ("dev", "test")}
    splits = {s: q for s, q in splits.items() if q}
    if "test" not in splits:
        raise SystemExit(
            "evaluate: the test split is empty. Set pairs.test_ratio > 0, or give a test file (ingest.queries "
            "with split: test), and check that ingest kept labeled queries (metrics/ingest.json): a model is "
            "never reported without held-out queries."
        )
    return splits


def run_evaluate(
    model_p: dict[str, Any],
    bm25_p: dict[str, Any],
    chunk_p: dict[str, Any],
    ingest_p: dict[str, Any],
    evaluate_p: dict[str, Any],
    paths: Paths,
) -> dict[str, str]:
    """Run the evaluate stage under ``paths``; returns the stage summary ``{"read": …, "wrote": …}``.

    ``chunk_p`` and ``ingest_p["root"]`` serve the forgetting check (out-of-domain sets are chunked as the chunk
    stage chunks, and a set in the corpus's own folder is skipped).
    """
    e = evaluate_p
    ks = [int(k) for k in e["ks"]]
    depth = int(e["candidate_k"])
    docs = read_jsonl(paths.documents)
    chunks = read_jsonl(paths.chunks)
    splits = load_splits(paths)
    titles = {d["doc_id"]: d.get("title", "") for d in docs}

    r = Retrievers.load(chunks, model_p, bm25_p, paths)
    systems_by_split, dev = rank_splits(r, splits, e)
    reranker_report: dict[str, Any] = {}
    two_by_two: dict[str, Any] = {}  # base vs fine-tuned embedder × without vs with the reranker
    reranked = None
    if r.tuned is not None and paths.reranker.exists():
        reranker_report, two_by_two, reranked = add_reranked_systems(
            systems_by_split, splits, chunks, r.chunk_to_doc, e, dev, paths.reranker
        )
    train = read_jsonl(paths.train)
    proxy = hybrid_proxy(r, train, splits, systems_by_split, depth, int(e["rrf_k"]))
    base_path = resolve_model(model_p["embedder"], revision=model_p.get("revision"))  # the folder load_dense used

    def reranker_evidence(retriever: str) -> RerankEvidence | None:
        return rerank_proxy(r, chunks, train, splits, paths.reranker, base_path, dev, e, retriever)

    selection = choose_pipeline(
        dev.scores if r.tuned is not None else None,
        proxy=proxy,
        rerank_proxy=reranker_evidence if reranker_report else None,
        start="ft_dense",
        retrievers=RETRIEVERS[1:],
        reranked={retr: f"{retr}+rerank" for retr in RETRIEVERS if reranker_report},
        tuned=[n for n in dev.scores if n == "ft_convex" or n.endswith("+rerank")],
        seed=int(e["select_seed"]),
    )
    pipeline = selection.system if r.tuned is not None else None
    if reranked is not None and selection.fusion_weight is not None:  # the proxy broke a tie among dev's weights
        retr = selection.system.partition("+")[0]
        how = "train + dev with the base model, among the weights tied on dev"
        reranker_report[retr] = reranked.set_weight(retr, selection.fusion_weight, how)

    results, records, curves_k, test_per_query = {}, [], [], {}
    for split, queries in splits.items():
        scored = score_systems(systems_by_split[split], queries, r.chunk_to_doc, ks)
        results[split] = {"n_queries": len(queries), "doc": scored["doc"], "chunk": scored["chunk"]}
        if split == "test":
            records = per_query_records(scored, queries, titles)
            test_per_query = scored["per_query"]
            plot_ks = [int(k) for k in e["plot_ks"] if int(k) <= depth]
            curves_k = recall_curve(scored["doc_rankings"], queries, plot_ks)
    gains = {
        name: paired_bootstrap(test_per_query[name], test_per_query["base_dense"])
        for name in test_per_query
        if name not in ("base_dense", "bm25")
    }
    if pipeline:
        write_json(
            paths.pipeline,
            pipeline_record(
                selection,
                e,
                fusion_weights={retr: float(rep["weight"]) for retr, rep in reranker_report.items()},
                alpha=dev.weights.get("ft_convex", UNTUNED),
                chosen_on_dev="dev" in results,
            ),
        )

    forgetting, ood_warnings = run_forgetting(r, model_p, chunk_p, ingest_p, e)
    trained = [
        f"{name}: {w}"
        for name in TRAIN_STAGES
        if paths.metrics(name).exists()
        for w in read_json(paths.metrics(name)).get("warnings", [])
    ]
    test_sources = question_sources(splits["test"])  # set only when some test questions are LLM-written
    warnings = evaluation_warnings(
        results,
        fine_tuned=r.tuned is not None,
        pipeline=pipeline,
        gains=gains,
        reranker=reranker_report,
        trained=trained,
        forgetting=ood_warnings,
        test_questions=test_sources,
    )
    for w in warnings:
        warn(w)
    convex = (
        {"alpha": dev.weights["ft_convex"], "dev_curve": dev.curve_json("ft_convex")} if r.tuned is not None else None
    )
    # what metrics/evaluate.json and the report both show
    shown = {
        "gains": gains,
        "warnings": warnings,
        "selection": selection.to_json() if pipeline else None,
        "reranker": reranker_report,
        "reranker_2x2": two_by_two,
        "out_of_domain": forgetting,
        "test_questions": test_sources,
    }
    base = model_source(model_p["embedder"], base_path, revision=model_p.get("revision"))  # its Hub commit
    write_json(paths.metrics("evaluate"), evaluate_metrics(results, convex=convex, **shown) | {"base_model": base})
    write_json(paths.metrics("models"), cost_side(r, chunks, model_p, e, paths, base_path))
    write_curve_csv(paths.recall_at_k, curves_k)
    write_jsonl(paths.per_query_test, records)
    best = max(results["test"]["doc"], key=lambda s: results["test"]["doc"][s].get("ndcg@10", 0.0))
    context = {"n_documents": len(docs), "n_chunks": len(chunks), "base_model": model_p["embedder"]}
    report = render_report(results, records, system_for_errors=best, context=context, pipeline=pipeline, **shown)
    paths.report.parent.mkdir(parents=True, exist_ok=True)
    paths.report.write_text(report, encoding="utf-8")
    test = results["test"]["doc"]
    return {
        "read": f"{len(chunks)} chunks, " + ", ".join(f"{len(q)} {s} queries" for s, q in splits.items()),
        "wrote": (
            f"{paths.metrics('evaluate')}, {paths.report} (serving {pipeline}; test ndcg@10: "
            + ", ".join(f"{s} {m['ndcg@10']:.3f}" for s, m in test.items())
            + ")"
        ),
    }


def run_forgetting(
    r: Retrievers, model_p: dict[str, Any], chunk_p: dict[str, Any], ingest_p: dict[str, Any], e: dict[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    """The forgetting check on ``evaluate.out_of_domain`` (:mod:`~ragtune.evaluation.forgetting`), when a fine-tuned
    embedder exists and sets are named; else nothing."""
    if r.tuned is None or not e["out_of_domain"]:
        return {}, []
    from ragtune.chunking import build_chunker
    from ragtune.evaluation.forgetting import forgetting_report, load_set

    chunker = build_chunker(model_p, chunk_p)
    ood = [load_set(spec, chunker, ingest_p["root"]) for spec in e["out_of_domain"]]
    return forgetting_report(ood, r.base, r.tuned, float(e["forgetting_max_drop"]))


def cost_side(
    r: Retrievers, chunks: list[dict[str, Any]], model_p: dict[str, Any], e: dict[str, Any], paths: Paths, base: str
) -> dict[str, Any]:
    """metrics/models.json, the bake-off's cost side: the same passages through each dense model, measured in a
    child process (:func:`~ragtune.evaluation.bakeoff.measure_encoder`). ``base``: model.embedder's resolved folder
    (at model.revision)."""
    sample = [c["text"] for c in chunks[: int(e["bakeoff_passages"])]]
    dense_models = {"base_dense": (base, r.base), "ft_dense": (str(paths.embedder), r.tuned)}
    return {
        name: measure_encoder(
            path, sample, emb.passage_prompt, batch_size=int(model_p["batch_size"]),
            max_seq_length=model_p.get("max_seq_length"),
        )
        for name, (path, emb) in dense_models.items()
        if emb is not None
    }  # fmt: skip
