"""negatives: training pairs → FlagEmbedding-style groups {"query", "pos": [...], "neg": [...]}."""

from ragtune.console import stage
from ragtune.io import read_jsonl, write_json, write_jsonl
from ragtune.mining import build_groups, mine_dense
from ragtune.params import load_params, section
from ragtune.retrieval import build_bm25, cache_root, load_dense


def main() -> None:
    params = load_params()
    n, model_p, bm25_p = section(params, "negatives"), section(params, "model"), section(params, "bm25")
    with stage("negatives") as summary:
        chunks = read_jsonl("data/chunks/chunks.jsonl")
        pairs = read_jsonl("data/pairs/train.jsonl") + read_jsonl("data/pairs/synthetic.jsonl")
        pairs = [p for p in pairs if p["positive_chunk_ids"]]
        chunk_text = {c["chunk_id"]: c["text"] for c in chunks}

        bm25 = build_bm25(chunks, bm25_p) if int(n["n_bm25"]) else None
        dense_candidates, dense_stats = {}, {}
        if int(n["n_dense"]) and pairs:
            dense = load_dense(model_p)
            dense_candidates, dense_stats = mine_dense(
                pairs,
                [c["text"] for c in chunks],
                dense.model,
                # over-fetch: same-document chunks are removed afterwards
                num_candidates=int(n["n_dense"]) * 3 + 5,
                range_min=int(n["dense_range_min"]),
                range_max=int(n["dense_range_max"]),
                relative_margin=float(n["dense_relative_margin"]),
                query_prompt=dense.query_prompt,
                passage_prompt=dense.passage_prompt,
                chunk_text=chunk_text,
                batch_size=int(model_p["batch_size"]),
                cache_folder=str(cache_root() / "mining"),
            )
        groups, stats = build_groups(
            pairs,
            chunks,
            bm25,
            dense_candidates,
            n_bm25=int(n["n_bm25"]),
            n_dense=int(n["n_dense"]),
            n_random=int(n["n_random"]),
            bm25_skip_top=int(n["bm25_skip_top"]),
            bm25_max_ratio=float(n["bm25_max_ratio"]),
            seed=int(n["seed"]),
        )
        write_jsonl("data/negatives/train_groups.jsonl", groups)
        n_neg = sum(len(g["neg"]) for g in groups)
        write_json(
            "metrics/negatives.json",
            {
                "groups": len(groups),
                "negatives": n_neg,
                "negatives_per_group_mean": round(n_neg / max(1, len(groups)), 3),
                "by_source": {k: stats.get(k, 0) for k in ("bm25", "dense", "random")},
                "guards": {k: v for k, v in sorted(stats.items()) if k not in ("bm25", "dense", "random")},
                **dense_stats,
            },
        )
        summary["read"] = f"{len(pairs)} training pairs, {len(chunks)} chunks"
        summary["wrote"] = f"{len(groups)} groups with {n_neg} negatives"


if __name__ == "__main__":
    main()
