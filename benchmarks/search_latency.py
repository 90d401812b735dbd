"""Time `ragtune search` after load: per-query latency of each servable pipeline on the trained sample models.

Usage: python benchmarks/search_latency.py   (repo root, after `dvc repro`; CPU only, as a user's laptop would)

Loads the index and models once per pipeline, warms up with 3 queries, then answers the held-out test questions
one at a time (as an interactive user would), at the highest access level (the whole corpus, as before levels
existed), and reports median and p95 latency, split into retrieval and reranking. The target is < 1 s per query
after load. Writes metrics/benchmarks/search_latency.json.
"""

from __future__ import annotations

import os
import platform
import statistics

import torch

from ragtune.io import read_jsonl, write_json
from ragtune.search import Pipeline, Searcher


def main() -> None:
    torch.set_num_threads(os.cpu_count() or 1)
    queries = [q["query"] for q in read_jsonl("data/pairs/test.jsonl")]
    chosen = Pipeline.load()
    out: dict[str, object] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, CPU",
        "queries": len(queries),
        "chosen_pipeline": chosen.name,
    }
    for name in ("bm25", "ft_dense", "ft_hybrid", "ft_dense+rerank", "ft_hybrid+rerank"):
        pipeline = Pipeline.parse(name, chosen)
        searcher = Searcher.load(pipeline=pipeline)
        level = searcher.access.levels[-1]
        searcher.prepare(level)  # BM25 of that level, fitted at load as before levels existed
        for q in queries[:3]:
            searcher.search(q, k=5, access_level=level)
        total, rerank = [], []
        for q in queries:
            searcher.search(q, k=5, access_level=level)
            total.append(searcher.timings["total_s"])
            rerank.append(searcher.timings["rerank_s"])
        total.sort()
        out[name] = {
            "load_s": round(searcher.load_seconds, 2),
            "median_ms": round(1000 * statistics.median(total), 1),
            "p95_ms": round(1000 * total[int(0.95 * (len(total) - 1))], 1),
            "max_ms": round(1000 * total[-1], 1),
            "rerank_median_ms": round(1000 * statistics.median(rerank), 1),
            "rerank_k": pipeline.rerank_k if pipeline.rerank else 0,
        }
        print(name, out[name])
    write_json("metrics/benchmarks/search_latency.json", out)


if __name__ == "__main__":
    main()
