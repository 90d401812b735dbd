"""Measure rank-bm25 (the named package) against bm25s on a real Vietnamese corpus.

Usage: python benchmarks/bm25_backends.py [--corpus ../shared/datasets/alqac2023/corpus.jsonl]
                                          [--queries ../shared/datasets/alqac2023/queries_train.jsonl]
Writes metrics/benchmarks/bm25_backends.json. Tokenization (pyvi) is timed separately: it is shared by both.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from ragtune.io import read_jsonl, write_json
from ragtune.retrieval import BM25Index, bm25_tokenize_many


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default="../shared/datasets/alqac2023/corpus.jsonl")
    ap.add_argument("--queries", default="../shared/datasets/alqac2023/queries_train.jsonl")
    ap.add_argument("--out", default="metrics/benchmarks/bm25_backends.json")
    args = ap.parse_args()
    docs = read_jsonl(args.corpus)
    queries = [q["query"] for q in read_jsonl(args.queries)]
    ids = [str(d["id"]) for d in docs]
    texts = [d["text"] for d in docs]

    t = time.perf_counter()
    tokens = bm25_tokenize_many(texts)
    tokenize_s = time.perf_counter() - t

    result: dict = {"documents": len(docs), "queries": len(queries), "pyvi_tokenize_corpus_s": round(tokenize_s, 3)}
    tops = {}
    for backend in ("rank_bm25", "bm25s"):
        index = BM25Index(ids, backend=backend)
        t = time.perf_counter()
        index.fit_tokens(tokens)
        fit_s = time.perf_counter() - t
        t = time.perf_counter()
        scores = [index.scores(q) for q in queries]
        query_s = time.perf_counter() - t
        tops[backend] = [set(np.argsort(-s)[:10].tolist()) for s in scores]
        result[backend] = {
            "index_s": round(fit_s, 3),
            "score_all_queries_s": round(query_s, 3),
            "ms_per_query": round(1000 * query_s / len(queries), 2),
        }
    overlap = np.mean([len(a & b) / 10 for a, b in zip(tops["rank_bm25"], tops["bm25s"], strict=True)])
    result["top10_overlap"] = round(float(overlap), 4)
    result["query_speedup_bm25s"] = round(
        result["rank_bm25"]["score_all_queries_s"] / max(1e-9, result["bm25s"]["score_all_queries_s"]), 1
    )
    write_json(args.out, result)
    print(result)


if __name__ == "__main__":
    main()
