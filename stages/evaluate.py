"""evaluate: rank held-out queries with every system; write metrics, the recall@k plot, and the report."""

from pathlib import Path

from ragtune.console import stage, warn
from ragtune.evaluation import per_query_records, recall_curve, render_report, score_systems, write_curve_csv
from ragtune.jsonl import read_json, read_jsonl, write_json, write_jsonl
from ragtune.params import load_params, section
from ragtune.retrieval import DenseIndex, build_bm25, load_dense, rrf

FT_MODEL = "models/embedder"
TRAIN_METRICS = "metrics/train_embedder.json"


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

        results, records, curves = {}, [], []
        for split, queries in splits.items():
            qtext = {q["query_id"]: q["query"] for q in queries}
            qids = list(qtext)
            systems = {"bm25": bm25.search(qtext, depth)}
            systems["base_dense"] = base_index.search_vectors(qids, base.encode_queries(list(qtext.values())), depth)
            systems["hybrid"] = rrf([systems["bm25"], systems["base_dense"]], k=int(e["rrf_k"]), depth=depth)
            if tuned is not None:
                systems["ft_dense"] = ft_index.search_vectors(qids, tuned.encode_queries(list(qtext.values())), depth)
                systems["ft_hybrid"] = rrf([systems["bm25"], systems["ft_dense"]], k=int(e["rrf_k"]), depth=depth)
            scored = score_systems(systems, queries, chunk_to_doc, ks)
            results[split] = {"n_queries": len(queries), "doc": scored["doc"], "chunk": scored["chunk"]}
            if split == "test":
                records = per_query_records(scored, queries, titles)
                plot_ks = [int(k) for k in e["plot_ks"] if int(k) <= depth]
                curves = recall_curve(scored["doc_rankings"], queries, plot_ks)

        warnings = []
        if Path(TRAIN_METRICS).exists():
            warnings += [f"train_embedder: {w}" for w in read_json(TRAIN_METRICS).get("warnings", [])]
        if tuned is not None:
            gain = results["test"]["doc"]["ft_dense"]["ndcg@10"] - results["test"]["doc"]["base_dense"]["ndcg@10"]
            if gain <= 0:
                warnings.append(f"the fine-tuned embedder does not beat its base model on test ndcg@10 ({gain:+.4f})")
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
        metrics["warnings"] = warnings
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


if __name__ == "__main__":
    main()
