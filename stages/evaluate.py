"""evaluate: rank held-out queries with every system; choose the served pipeline on dev evidence; write the report."""

from pathlib import Path

from ragtune.bakeoff import MODELS_METRICS, measure_encoder
from ragtune.chunking import build_chunker
from ragtune.console import stage, warn
from ragtune.evaluation import (
    ndcg_per_query,
    paired_bootstrap,
    per_query_records,
    recall_curve,
    render_report,
    score_systems,
    write_curve_csv,
)
from ragtune.forgetting import forgetting_report, load_set
from ragtune.io import read_json, read_jsonl, write_json, write_jsonl
from ragtune.params import load_params, section
from ragtune.rerank import apply_rerank, rerank_scores, top1_concentration
from ragtune.retrieval import DenseIndex, build_bm25, convex_fusion, load_dense, rrf, top_k
from ragtune.search import PIPELINE_FILE
from ragtune.selection import choose_pipeline, tune_weight

FT_MODEL = "models/embedder"
RERANKER = "models/reranker"
TRAIN_METRICS = ("metrics/train_embedder.json", "metrics/train_reranker.json")
# what `ragtune search` can serve, simplest first: the ladder starts at ft_dense and tries the others in this order
RETRIEVERS = ("ft_dense", "bm25", "ft_hybrid", "ft_convex")
UNTUNED = 0.5  # convex alpha and reranker weight reported when there is no dev split to choose them on


def main() -> None:
    params = load_params()
    e, model_p, bm25_p = section(params, "evaluate"), section(params, "model"), section(params, "bm25")
    ks = [int(k) for k in e["ks"]]
    depth = int(e["candidate_k"])
    folds, seed = int(e["select_folds"]), int(e["select_seed"])
    with stage("evaluate") as summary:
        docs = read_jsonl("data/interim/documents.jsonl")
        chunks = read_jsonl("data/chunks/chunks.jsonl")
        splits = {s: read_jsonl(f"data/pairs/{s}.jsonl") for s in ("dev", "test")}
        splits = {s: q for s, q in splits.items() if q}
        if "test" not in splits:
            raise SystemExit(
                "evaluate: the test split is empty. Set pairs.test_ratio > 0, or give a test file (ingest.queries "
                "with split: test), and check that ingest kept labeled queries (metrics/ingest.json): a model is "
                "never reported without held-out queries."
            )
        chunk_ids = [c["chunk_id"] for c in chunks]
        chunk_to_doc = {c["chunk_id"]: c["doc_id"] for c in chunks}
        titles = {d["doc_id"]: d.get("title", "") for d in docs}

        bm25 = build_bm25(chunks, bm25_p)
        base = load_dense(model_p)
        base_index = DenseIndex(chunk_ids, base.encode_passages([c["text"] for c in chunks]))
        tuned = load_dense(model_p, name=FT_MODEL) if Path(FT_MODEL).exists() else None
        if tuned is not None:
            ft_index = DenseIndex(chunk_ids, tuned.encode_passages([c["text"] for c in chunks]))

        alphas = [float(a) for a in e["convex_alphas"]]
        systems_by_split, convex_by_split = {}, {}
        for split, queries in splits.items():
            qids, texts = [q["query_id"] for q in queries], [q["query"] for q in queries]
            sparse = bm25.score_matrix(texts)
            systems = {"bm25": {q: top_k(chunk_ids, sparse[i], depth) for i, q in enumerate(qids)}}
            systems["base_dense"] = base_index.search_vectors(qids, base.encode_queries(texts), depth)
            systems["hybrid"] = rrf([systems["bm25"], systems["base_dense"]], k=int(e["rrf_k"]), depth=depth)
            if tuned is not None:
                dense = ft_index.similarities(tuned.encode_queries(texts))
                systems["ft_dense"] = {q: top_k(chunk_ids, dense[i], depth) for i, q in enumerate(qids)}
                systems["ft_hybrid"] = rrf([systems["bm25"], systems["ft_dense"]], k=int(e["rrf_k"]), depth=depth)
                convex_by_split[split] = convex_fusion(qids, chunk_ids, dense, sparse, alphas, depth)
            systems_by_split[split] = systems

        # Weights are chosen on dev, and judged by cross-validation within dev (ragtune.selection).
        dev_scores, weights, curves = {}, {}, {}
        if "dev" in splits:
            dev_scores = {n: ndcg_per_query(r, splits["dev"], chunk_to_doc) for n, r in systems_by_split["dev"].items()}
        if tuned is not None:
            if "dev" in splits:
                per_alpha = {
                    a: ndcg_per_query(r, splits["dev"], chunk_to_doc) for a, r in convex_by_split["dev"].items()
                }
                tw = tune_weight(per_alpha, prefer=lambda a: a, folds=folds, seed=seed)  # ties: lean on dense
                weights["ft_convex"], curves["ft_convex"], dev_scores["ft_convex"] = tw.weight, tw.curve, tw.out_of_fold
            alpha = weights.get("ft_convex", UNTUNED if UNTUNED in alphas else alphas[len(alphas) // 2])
            weights["ft_convex"] = alpha
            for split in splits:
                systems_by_split[split]["ft_convex"] = convex_by_split[split][alpha]

        reranker_report = {}
        if tuned is not None and Path(RERANKER).exists():
            reranker_report = add_reranked_systems(
                systems_by_split, splits, chunks, chunk_to_doc, e, dev_scores, weights, curves
            )

        selection = choose_pipeline(
            dev_scores if tuned is not None else None,
            proxy=hybrid_proxy(splits, bm25, base, base_index, chunk_to_doc, depth, int(e["rrf_k"])),
            start="ft_dense",
            retrievers=RETRIEVERS[1:],
            reranked={r: f"{r}+rerank" for r in RETRIEVERS if reranker_report},
            tuned=[n for n in dev_scores if n == "ft_convex" or n.endswith("+rerank")],
            seed=seed,
        )
        pipeline = selection.system if tuned is not None else None

        results, records, curves_k, test_per_query = {}, [], [], {}
        for split, queries in splits.items():
            scored = score_systems(systems_by_split[split], queries, chunk_to_doc, ks)
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
            retriever, _, rr = pipeline.partition("+")
            write_json(
                PIPELINE_FILE,
                {
                    "system": pipeline,
                    "retriever": retriever,
                    "rerank": bool(rr),
                    "rerank_k": int(e["rerank_k"]),
                    "fusion_weight": reranker_report.get(retriever, {}).get("weight", 1.0),
                    "alpha": weights.get("ft_convex", UNTUNED),
                    "candidate_k": depth,
                    "rrf_k": int(e["rrf_k"]),
                    "rerank_bf16": bool(e["rerank_bf16"]),
                    "chosen_on": "dev" if "dev" in results else "nothing (no dev split): the simplest pipeline",
                    "reason": selection.reason,
                },
            )

        warnings = []
        for path in TRAIN_METRICS:
            if Path(path).exists():
                warnings += [f"{Path(path).stem}: {w}" for w in read_json(path).get("warnings", [])]
        for retr, r in reranker_report.items():
            t = r["test_ndcg@10"]
            if t["reranker"] < t["retriever"] and pipeline == f"{retr}+rerank":
                warnings.append(
                    f"the reranker alone makes {retr} worse on test: ndcg@10 {t['retriever']:.4f} → {t['reranker']:.4f}"
                    f" (fusion weight chosen on dev: {r['weight']:.1f}, fused {t['fused']:.4f})"
                )
            if r["top1_share"] > 0.2:
                warnings.append(
                    f"the reranker puts {r['top1_doc']} first for {r['top1_share']:.0%} of test queries ({retr}): "
                    "it may rank by document popularity"
                )
        if "dev" not in results:
            warnings.append(
                "no dev split: nothing could check an added component, so search serves ft_dense "
                "(label questions for a dev split to let hybrid or reranking earn their place)"
            )
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
        forgetting = {}
        if tuned is not None and e["out_of_domain"]:
            chunker = build_chunker(model_p, section(params, "chunk"))
            ood = [load_set(spec, chunker, section(params, "ingest")["root"]) for spec in e["out_of_domain"]]
            forgetting, ood_warnings = forgetting_report(ood, base, tuned, float(e["forgetting_max_drop"]))
            warnings += ood_warnings
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
            metrics["selection"] = selection.to_json()
        if tuned is not None:
            metrics["convex"] = {
                "alpha": weights["ft_convex"],
                "dev_curve": {f"{a:.2f}": v for a, v in curves.get("ft_convex", {}).items()},
            }
        if reranker_report:
            metrics["reranker"] = reranker_report
        if forgetting:
            metrics["out_of_domain"] = forgetting
        write_json("metrics/evaluate.json", metrics)
        # the bake-off's cost side: the same passages through each dense model, measured in a child process
        sample = [c["text"] for c in chunks[: int(e["bakeoff_passages"])]]
        dense_models = {"base_dense": (model_p["embedder"], base), "ft_dense": (FT_MODEL, tuned)}
        write_json(
            MODELS_METRICS,
            {
                name: measure_encoder(
                    path, sample, emb.passage_prompt, batch_size=int(model_p["batch_size"]),
                    max_seq_length=model_p.get("max_seq_length"),
                )
                for name, (path, emb) in dense_models.items()
                if emb is not None
            },
        )  # fmt: skip
        write_curve_csv("metrics/recall_at_k.csv", curves_k)
        write_jsonl("reports/per_query_test.jsonl", records)
        best = max(results["test"]["doc"], key=lambda s: results["test"]["doc"][s].get("ndcg@10", 0.0))
        report = render_report(
            results,
            records,
            system_for_errors=best,
            context={"n_documents": len(docs), "n_chunks": len(chunks), "base_model": model_p["embedder"]},
            warnings=warnings,
            pipeline=pipeline,
            selection=selection.to_json() if pipeline else None,
            reranker=reranker_report,
            gains=gains,
            out_of_domain=forgetting,
        )
        Path("reports").mkdir(exist_ok=True)
        Path("reports/evaluation.md").write_text(report, encoding="utf-8")
        test = results["test"]["doc"]
        summary["read"] = f"{len(chunks)} chunks, " + ", ".join(f"{len(q)} {s} queries" for s, q in splits.items())
        summary["wrote"] = (
            f"metrics/evaluate.json, reports/evaluation.md (serving {pipeline}; test ndcg@10: "
            + ", ".join(f"{s} {m['ndcg@10']:.3f}" for s, m in test.items())
            + ")"
        )


def hybrid_proxy(splits, bm25, base, base_index, chunk_to_doc, depth, rrf_k) -> dict:
    """Evidence for BM25 fusion from more questions than dev holds (ragtune.selection): the base model's RRF hybrid
    against the base model over train + dev, questions neither BM25 nor the base model has seen. Never test."""
    train = read_jsonl("data/pairs/train.jsonl")
    if "dev" not in splits or not train:
        return {}
    pool = train + splits["dev"]
    qtext = {q["query_id"]: q["query"] for q in pool}
    dense = base_index.search_vectors(list(qtext), base.encode_queries(list(qtext.values())), depth)
    hybrid = rrf([bm25.search(qtext, depth), dense], k=rrf_k, depth=depth)
    return {"ft_hybrid": (ndcg_per_query(hybrid, pool, chunk_to_doc), ndcg_per_query(dense, pool, chunk_to_doc))}


def add_reranked_systems(systems_by_split, splits, chunks, chunk_to_doc, e, dev_scores, weights, curves) -> dict:
    """Add ``<retriever>+rerank`` for every servable retriever, the fusion weight chosen on dev (cross-validated
    per-query dev scores go to ``dev_scores`` for the selection ladder). Reranker scores are computed once per
    (query, chunk): the retrievers' candidate lists overlap."""
    from sentence_transformers import CrossEncoder

    k = int(e["rerank_k"])
    grid = [float(w) for w in e["fusion_weights"]]
    retrievers = [r for r in RETRIEVERS if r in systems_by_split["test"]]
    scores = rerank_scores(
        CrossEncoder(RERANKER), systems_by_split, splits, retrievers, chunks, k, bool(e["rerank_bf16"])
    )

    def reranked(split: str, retr: str, w: float) -> dict:
        ranking = systems_by_split[split][retr]
        s = {qid: [scores[split][qid][cid] for cid, _ in items[:k]] for qid, items in ranking.items()}
        return apply_rerank(ranking, s, w)

    def ndcg(split: str, ranking: dict) -> float:
        return round(sum(ndcg_per_query(ranking, splits[split], chunk_to_doc).values()) / len(splits[split]), 4)

    report = {}
    for retr in retrievers:
        name = f"{retr}+rerank"
        if "dev" in splits:
            per_w = {w: ndcg_per_query(reranked("dev", retr, w), splits["dev"], chunk_to_doc) for w in grid}
            # ties: the smaller weight (less reliance on the reranker)
            tw = tune_weight(per_w, prefer=lambda w: -w, folds=int(e["select_folds"]), seed=int(e["select_seed"]))
            weights[name], curves[name], dev_scores[name] = tw.weight, tw.curve, tw.out_of_fold
        best = weights.get(name, UNTUNED)
        for split in splits:
            systems_by_split[split][name] = reranked(split, retr, best)
        pure_test = reranked("test", retr, 1.0)
        doc, share = top1_concentration(pure_test, chunk_to_doc)
        tune = "dev" if "dev" in splits else "test"
        report[retr] = {
            "rerank_k": k,
            "weight": best,
            "weight_chosen_on": "dev" if "dev" in splits else "none (no dev split)",
            "dev_curve": {f"{w:.2f}": v for w, v in curves.get(name, {}).items()},
            "dev_ndcg@10": {
                "retriever": ndcg(tune, systems_by_split[tune][retr]),
                "reranker": ndcg(tune, reranked(tune, retr, 1.0)),
                "fused": ndcg(tune, systems_by_split[tune][name]),
            },
            "test_ndcg@10": {
                "retriever": ndcg("test", systems_by_split["test"][retr]),
                "reranker": ndcg("test", pure_test),
                "fused": ndcg("test", systems_by_split["test"][name]),
            },
            "top1_doc": doc,
            "top1_share": round(share, 4),
        }
    return report


if __name__ == "__main__":
    main()
