"""evaluate: rank held-out queries with every system; write metrics, the recall@k plot, and the report."""

from pathlib import Path

from ragtune.console import stage, warn
from ragtune.evaluation import (
    choose_pipeline,
    paired_bootstrap,
    per_query_records,
    recall_curve,
    render_report,
    score_systems,
    write_curve_csv,
)
from ragtune.jsonl import read_json, read_jsonl, write_json, write_jsonl
from ragtune.params import load_params, section
from ragtune.reranking import apply_rerank, rerank_ranking, top1_concentration
from ragtune.retrieval import DenseIndex, build_bm25, load_dense, rrf
from ragtune.search import PIPELINE_FILE

FT_MODEL = "models/embedder"
RERANKER = "models/reranker"
TRAIN_METRICS = ("metrics/train_embedder.json", "metrics/train_reranker.json")
SERVABLE = ("ft_dense", "ft_hybrid", "ft_dense+rerank", "ft_hybrid+rerank", "bm25")  # what `ragtune search` runs


def main() -> None:
    params = load_params()
    e, model_p, bm25_p = section(params, "evaluate"), section(params, "model"), section(params, "bm25")
    ks = [int(k) for k in e["ks"]]
    depth = int(e["candidate_k"])
    with stage("evaluate") as summary:
        docs = read_jsonl("data/interim/documents.jsonl")
        chunks = read_jsonl("data/chunks/chunks.jsonl")
        splits = {s: read_jsonl(f"data/pairs/{s}.jsonl") for s in ("dev", "test")}
        splits = {s: q for s, q in splits.items() if q}
        if "test" not in splits:
            raise SystemExit(
                "evaluate: the test split is empty. Set pairs.test_ratio > 0 (and check that ingest kept labeled "
                "queries: see metrics/ingest.json) — a model is never reported without held-out queries."
            )
        chunk_to_doc = {c["chunk_id"]: c["doc_id"] for c in chunks}
        titles = {d["doc_id"]: d.get("title", "") for d in docs}

        bm25 = build_bm25(chunks, bm25_p)
        base = load_dense(model_p)
        chunk_vecs = base.encode_passages([c["text"] for c in chunks])
        base_index = DenseIndex([c["chunk_id"] for c in chunks], chunk_vecs)
        tuned = load_dense(model_p, name=FT_MODEL) if Path(FT_MODEL).exists() else None
        if tuned is not None:
            ft_index = DenseIndex([c["chunk_id"] for c in chunks], tuned.encode_passages([c["text"] for c in chunks]))

        systems_by_split = {}
        for split, queries in splits.items():
            qtext = {q["query_id"]: q["query"] for q in queries}
            qids = list(qtext)
            systems = {"bm25": bm25.search(qtext, depth)}
            systems["base_dense"] = base_index.search_vectors(qids, base.encode_queries(list(qtext.values())), depth)
            systems["hybrid"] = rrf([systems["bm25"], systems["base_dense"]], k=int(e["rrf_k"]), depth=depth)
            if tuned is not None:
                systems["ft_dense"] = ft_index.search_vectors(qids, tuned.encode_queries(list(qtext.values())), depth)
                systems["ft_hybrid"] = rrf([systems["bm25"], systems["ft_dense"]], k=int(e["rrf_k"]), depth=depth)
            systems_by_split[split] = systems

        reranker_report = {}
        if tuned is not None and Path(RERANKER).exists():
            reranker_report = add_reranked_systems(systems_by_split, splits, chunks, chunk_to_doc, e, ks)

        results, records, curves, test_per_query = {}, [], [], {}
        for split, queries in splits.items():
            scored = score_systems(systems_by_split[split], queries, chunk_to_doc, ks)
            results[split] = {"n_queries": len(queries), "doc": scored["doc"], "chunk": scored["chunk"]}
            if split == "test":
                records = per_query_records(scored, queries, titles)
                test_per_query = scored["per_query"]
                plot_ks = [int(k) for k in e["plot_ks"] if int(k) <= depth]
                curves = recall_curve(scored["doc_rankings"], queries, plot_ks)

        gains = {
            name: paired_bootstrap(test_per_query[name], test_per_query["base_dense"])
            for name in test_per_query
            if name not in ("base_dense", "bm25")
        }
        selection = results.get("dev", results["test"])["doc"]
        pipeline = choose_pipeline(selection, SERVABLE) if tuned is not None else None
        overall = choose_pipeline(selection, list(selection))
        if pipeline and overall not in SERVABLE and selection[overall]["ndcg@10"] > selection[pipeline]["ndcg@10"]:
            unservable_note = (
                f"{overall} (not servable by `ragtune search`, which only loads the fine-tuned index) scored higher "
                f"on dev than the chosen pipeline {pipeline}: ndcg@10 {selection[overall]['ndcg@10']:.4f} vs "
                f"{selection[pipeline]['ndcg@10']:.4f}"
            )
        else:
            unservable_note = ""
        if pipeline:
            retriever, _, rr = pipeline.partition("+")
            write_json(
                PIPELINE_FILE,
                {
                    "system": pipeline,
                    "retriever": retriever,
                    "rerank": bool(rr),
                    "rerank_k": int(e["rerank_k"]),
                    "fusion_weight": reranker_report.get(retriever, {}).get("weight", 1.0),
                    "candidate_k": depth,
                    "rrf_k": int(e["rrf_k"]),
                    "rerank_bf16": bool(e["rerank_bf16"]),
                    "chosen_on": "dev" if "dev" in results else "test (no dev split)",
                },
            )

        warnings = []
        for path in TRAIN_METRICS:
            if Path(path).exists():
                warnings += [f"{Path(path).stem}: {w}" for w in read_json(path).get("warnings", [])]
        for retr, r in reranker_report.items():
            t = r["test_ndcg@10"]
            if t["reranker"] < t["retriever"]:
                warnings.append(
                    f"the reranker alone makes {retr} worse on test: ndcg@10 {t['retriever']:.4f} → {t['reranker']:.4f}"
                    f" (fusion weight chosen on dev: {r['weight']:.1f}, fused {t['fused']:.4f})"
                )
            if r["weight"] == 0.0:
                warnings.append(f"fusion weight 0 chosen on dev for {retr}: the reranker adds nothing there")
            if r["top1_share"] > 0.2:
                warnings.append(
                    f"the reranker puts {r['top1_doc']} first for {r['top1_share']:.0%} of test queries ({retr}): "
                    "it may rank by document popularity"
                )
        if unservable_note:
            warnings.append(unservable_note)
        if pipeline and "dev" not in results:
            warnings.append("no dev split: the pipeline was chosen on test, so its test numbers are optimistic")
        if tuned is not None:
            gain = results["test"]["doc"]["ft_dense"]["ndcg@10"] - results["test"]["doc"]["base_dense"]["ndcg@10"]
            if gain <= 0:
                warnings.append(f"the fine-tuned embedder does not beat its base model on test ndcg@10 ({gain:+.4f})")
            elif gains["ft_dense"]["ci_low"] <= 0:
                g = gains["ft_dense"]
                warnings.append(
                    f"ft_dense's test gain over base_dense ({100 * g['gain']:+.1f} pts) is within noise: 95% interval "
                    f"[{100 * g['ci_low']:+.1f}, {100 * g['ci_high']:+.1f}] contains 0"
                )
        if results["test"]["n_queries"] < 30:
            warnings.append(
                f"only {results['test']['n_queries']} test queries: differences under ~5 points are noise "
                "(raise pairs.test_ratio or label more questions)"
            )
        for w in warnings:
            warn(w)
        metrics = {split: res["doc"] for split, res in results.items()}
        metrics.update({f"{split}_chunk": res["chunk"] for split, res in results.items()})
        metrics["n_queries"] = {split: res["n_queries"] for split, res in results.items()}
        metrics["test_gain_vs_base_dense"] = gains
        metrics["warnings"] = warnings
        if pipeline:
            metrics["pipeline"] = {"system": pipeline, "test": results["test"]["doc"][pipeline]}
        if reranker_report:
            metrics["reranker"] = reranker_report
        write_json("metrics/evaluate.json", metrics)
        write_curve_csv("metrics/recall_at_k.csv", curves)
        write_jsonl("reports/per_query_test.jsonl", records)
        best = max(results["test"]["doc"], key=lambda s: results["test"]["doc"][s].get("ndcg@10", 0.0))
        report = render_report(
            results,
            records,
            system_for_errors=best,
            context={"n_documents": len(docs), "n_chunks": len(chunks), "base_model": model_p["embedder"]},
            warnings=warnings,
            pipeline=pipeline,
            reranker=reranker_report,
            gains=gains,
        )
        Path("reports").mkdir(exist_ok=True)
        Path("reports/evaluation.md").write_text(report, encoding="utf-8")
        test = results["test"]["doc"]
        summary["read"] = f"{len(chunks)} chunks, " + ", ".join(f"{len(q)} {s} queries" for s, q in splits.items())
        summary["wrote"] = (
            "metrics/evaluate.json, reports/evaluation.md (test ndcg@10: "
            + ", ".join(f"{s} {m['ndcg@10']:.3f}" for s, m in test.items())
            + ")"
        )


def add_reranked_systems(systems_by_split, splits, chunks, chunk_to_doc, e, ks) -> dict:
    """Add ``<retriever>+rerank`` systems, with the fusion weight per retriever chosen on dev ndcg@10.

    Reranker scores are computed once per (query, chunk): the dense and hybrid candidate lists overlap.
    """
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(RERANKER)
    k = int(e["rerank_k"])
    weights = [float(w) for w in e["fusion_weights"]]
    chunk_text = {c["chunk_id"]: c["text"] for c in chunks}
    report = {}
    scores = {}
    for split, queries in splits.items():
        qtext = {q["query_id"]: q["query"] for q in queries}
        union = {}
        for retr in ("ft_dense", "ft_hybrid"):
            for qid, items in systems_by_split[split][retr].items():
                for cid, _ in items[:k]:
                    union.setdefault(qid, {})[cid] = 0.0
        flat = {qid: [(cid, 0.0) for cid in cids] for qid, cids in union.items()}
        got = rerank_ranking(model, flat, qtext, chunk_text, k=10**9, bf16=bool(e["rerank_bf16"]))
        scores[split] = {qid: dict(zip(union[qid], got[qid], strict=True)) for qid in union}

    def reranked(split: str, retr: str, w: float) -> dict:
        ranking = systems_by_split[split][retr]
        s = {qid: [scores[split][qid][cid] for cid, _ in items[:k]] for qid, items in ranking.items()}
        return apply_rerank(ranking, s, w)

    def ndcg(split: str, ranking: dict) -> float:
        return score_systems({"x": ranking}, splits[split], chunk_to_doc, ks)["doc"]["x"]["ndcg@10"]

    tune = "dev" if "dev" in splits else "test"
    for retr in ("ft_dense", "ft_hybrid"):
        curve = {w: ndcg(tune, reranked(tune, retr, w)) for w in weights}
        best = max(weights, key=lambda w: (curve[w], -w))  # ties: the smaller weight (less reliance on the reranker)
        for split in splits:
            systems_by_split[split][f"{retr}+rerank"] = reranked(split, retr, best)
        pure_test = reranked("test", retr, 1.0)
        doc, share = top1_concentration(pure_test, chunk_to_doc)
        report[retr] = {
            "rerank_k": k,
            "weight": best,
            "dev_curve": {f"{w:.2f}": round(v, 4) for w, v in curve.items()},
            "dev_ndcg@10": {
                # from the weight curve when the grid holds the ends (dict.get would compute its default anyway)
                "retriever": round(curve[0.0] if 0.0 in curve else ndcg(tune, systems_by_split[tune][retr]), 4),
                "reranker": round(curve[1.0] if 1.0 in curve else ndcg(tune, reranked(tune, retr, 1.0)), 4),
                "fused": round(curve[best], 4),
            },
            "test_ndcg@10": {
                "retriever": round(ndcg("test", systems_by_split["test"][retr]), 4),
                "reranker": round(ndcg("test", pure_test), 4),
                "fused": round(ndcg("test", systems_by_split["test"][f"{retr}+rerank"]), 4),
            },
            "top1_doc": doc,
            "top1_share": round(share, 4),
        }
    return report


if __name__ == "__main__":
    main()
