"""pairs: labeled queries → train/dev/test split (fixed by ingest, else seeded) with aligned positive chunks; plus
self-supervised pairs. Nothing is written until the leak check has passed."""

from collections import defaultdict

import numpy as np

from ragtune.console import stage, warn
from ragtune.io import read_jsonl, write_json, write_jsonl
from ragtune.pairs import (
    SPLITS,
    align_positive_chunks,
    cap_synthetic,
    query_key,
    split_queries,
    synthetic_pairs,
    use_synthetic,
    validate,
)
from ragtune.params import load_params, section
from ragtune.retrieval import build_bm25, load_dense


def main() -> None:
    params = load_params()
    p, model_p, bm25_p = section(params, "pairs"), section(params, "model"), section(params, "bm25")
    with stage("pairs") as summary:
        docs = read_jsonl("data/interim/documents.jsonl")
        queries = read_jsonl("data/interim/queries.jsonl")
        chunks = read_jsonl("data/chunks/chunks.jsonl")
        chunk_ids = [c["chunk_id"] for c in chunks]
        chunks_by_doc: dict[str, list[int]] = defaultdict(list)
        for i, c in enumerate(chunks):
            chunks_by_doc[c["doc_id"]].append(i)

        plan = split_queries(queries, float(p["dev_ratio"]), float(p["test_ratio"]), int(p["seed"]))
        splits = plan.splits
        # Only relevant documents with several chunks need alignment (and only their chunks need embedding).
        needed = sorted(
            {i for q in queries for d in q["positive_doc_ids"] if len(chunks_by_doc[d]) > 1 for i in chunks_by_doc[d]}
        )
        if needed:
            bm25 = build_bm25(chunks, bm25_p)
            dense = load_dense(model_p)
            q_vecs = dense.encode_queries([q["query"] for q in queries])
            row = {ci: r for r, ci in enumerate(needed)}
            c_vecs = dense.encode_passages([chunks[i]["text"] for i in needed])
            bm25_cache: dict[int, np.ndarray] = {}

            def bm25_scorer(qi: int, idx: list[int]) -> np.ndarray:
                if qi not in bm25_cache:
                    bm25_cache.clear()
                    bm25_cache[qi] = bm25.scores(queries[qi]["query"])
                return bm25_cache[qi][idx]

            def dense_scorer(qi: int, idx: list[int]) -> np.ndarray:
                return c_vecs[[row[i] for i in idx]] @ q_vecs[qi]

            aligned = align_positive_chunks(queries, chunks_by_doc, chunk_ids, [bm25_scorer, dense_scorer])
        else:
            aligned = [[chunk_ids[chunks_by_doc[d][0]] for d in q["positive_doc_ids"]] for q in queries]
        by_qid = {q["query_id"]: a for q, a in zip(queries, aligned, strict=True)}

        out_splits = {}
        for name in SPLITS:
            out_splits[name] = [
                {
                    "query_id": q["query_id"],
                    "query": q["query"],
                    "positive_doc_ids": q["positive_doc_ids"],
                    "positive_chunk_ids": by_qid[q["query_id"]],
                    "split": name,
                }
                for q in splits[name]
            ]

        syn_p = p["synthetic"]
        synthetic, syn_counts = [], {}
        if use_synthetic(syn_p["enabled"], len(out_splits["train"]), int(syn_p["min_labeled_train"])):
            synthetic, syn_counts = synthetic_pairs(
                docs,
                chunks,
                per_doc=dict(syn_p["per_doc"]),
                max_pairs=int(syn_p["max_pairs"]),
                seed=int(p["seed"]),
                ict_keep_sentence=float(syn_p["ict_keep_sentence"]),
            )
            # A held-out question must never be a training anchor, even by coincidence.
            heldout = {query_key(q["query"]) for s in ("dev", "test") for q in out_splits[s]}
            before = len(synthetic)
            synthetic = [s for s in synthetic if query_key(s["query"]) not in heldout]
            syn_counts["dropped_equal_to_heldout_query"] = before - len(synthetic)
            synthetic, capped = cap_synthetic(
                synthetic, len(out_splits["train"]), float(syn_p["max_per_labeled"]), int(p["seed"])
            )
            syn_counts["dropped_over_max_per_labeled"] = capped
            for kind in ("title", "heading", "ict"):  # kept pairs by kind, after every drop
                syn_counts[kind] = sum(1 for s in synthetic if s["kind"] == kind)

        # The leak check raises before anything is written: a leaked split never reaches the training stages.
        report = validate(
            out_splits,
            synthetic,
            {c["chunk_id"]: c for c in chunks},
            {d["doc_id"]: d for d in docs},
        )
        report["synthetic"]["by_kind_and_drops"] = dict(sorted(syn_counts.items()))
        report["split_sources"] = plan.sources
        report["quarantined"] = plan.quarantined
        for name in SPLITS:
            write_jsonl(f"data/pairs/{name}.jsonl", out_splits[name])
        write_jsonl("data/pairs/synthetic.jsonl", synthetic)
        write_jsonl("data/pairs/quarantine.jsonl", plan.quarantine)
        write_json("metrics/pairs.json", report)
        if plan.quarantine:
            reasons = ", ".join(f"{r} {n}" for r, n in plan.quarantined.items() if n)
            warn(
                f"{len(plan.quarantine)} question(s) share their text with a fixed held-out question and were left out "
                f"of their split ({reasons}); see data/pairs/quarantine.jsonl"
            )
        carved = plan.sources["dev"]["carved_from_train"]
        if carved:
            warn(f"no question is fixed to dev: {carved} fixed-train question(s) were moved to dev (pairs.dev_ratio)")
        if not out_splits["dev"] and float(p["dev_ratio"]) > 0:
            warn("dev is empty: nothing can check the fine-tune; fix some questions to dev or add training questions")
        summary["read"] = f"{len(queries)} labeled queries, {len(chunks)} chunks"
        summary["wrote"] = (
            f"train {len(out_splits['train'])} / dev {len(out_splits['dev'])} / test {len(out_splits['test'])} "
            f"labeled + {len(synthetic)} synthetic pairs"
        )


if __name__ == "__main__":
    main()
