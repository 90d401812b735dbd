"""BM25 quality and speed of each word tokenizer (bm25.tokenizer: pyvi | syllable | bigram) on real Vietnamese sets.

Usage (repo root, venv active; the sample's data stages already run):
    python benchmarks/bm25_tokenizers.py [--alqac-corpus /work/alqac2023-fixed/corpus.jsonl]
        [--alqac-queries /work/alqac2023-fixed/train.jsonl]

Why: pyvi's word segmentation costs ~5 ms a chunk on this machine, which is hours for a 1.8M-document corpus (issue
20); a cheaper tokenizer is only worth offering with its quality cost measured. Queries are never the test split:
ALQAC's fixed-split train file, and the sample's train + dev pairs over its chunks (a document scores as its best
chunk, as evaluate ranks). BM25 has no training, so these questions measure, not fit. Document-level NDCG@10,
Recall@10 and MRR@10 per tokenizer, with the paired bootstrap of each against pyvi; tokenizing time per text on one
core. Writes metrics/benchmarks/bm25_tokenizers.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path
from typing import Any

from ragtune.evaluation.metrics import mean_metrics, paired_bootstrap, query_metrics
from ragtune.io import read_jsonl, write_json
from ragtune.retrieval import TOKENIZERS, BM25Index, bm25_tokenize, bm25_tokenize_many, top_k

KS = (1, 10)


def measure(name: str, ids: list[str], texts: list[str], owner: list[str], queries: list[dict[str, Any]]) -> dict:
    """``ids``/``texts``: the indexed items; ``owner``: each item's document; queries: ``query`` + ``positives``."""
    out: dict[str, Any] = {"items": len(ids), "queries": len(queries)}
    per_query: dict[str, dict[str, dict[str, float]]] = {}
    owner_of = dict(zip(ids, owner, strict=True))
    for method in TOKENIZERS:
        bm25_tokenize("Khởi động.", method)  # pyvi's model loads on first use (~4 s): not a per-text cost
        start = time.perf_counter()
        tokens = bm25_tokenize_many(texts, method)
        seconds = time.perf_counter() - start
        index = BM25Index(ids, tokenizer=method).fit_tokens(tokens)
        rows = {}
        for q in queries:
            ranked = top_k(ids, index.scores(q["query"]), 200)
            docs = list(dict.fromkeys(owner_of[i] for i, _ in ranked))
            rows[q["id"]] = query_metrics(docs, q["positives"], KS)
        per_query[method] = rows
        out[method] = mean_metrics(list(rows.values())) | {
            "tokenize_ms_per_text": round(1000 * seconds / len(texts), 3),
            "tokens_per_text": round(sum(map(len, tokens)) / len(texts), 1),
        }
        print(name, method, {k: round(v, 4) for k, v in out[method].items()}, flush=True)
    for method in TOKENIZERS[1:]:
        out[f"{method}_minus_pyvi"] = paired_bootstrap(per_query[method], per_query["pyvi"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--alqac-corpus", type=Path, default=Path("/work/alqac2023-fixed/corpus.jsonl"))
    ap.add_argument("--alqac-queries", type=Path, default=Path("/work/alqac2023-fixed/train.jsonl"))
    ap.add_argument("--out", default="metrics/benchmarks/bm25_tokenizers.json")
    args = ap.parse_args()
    result: dict[str, Any] = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, one process"}
    chunks = read_jsonl("data/chunks/chunks.jsonl")
    pairs = read_jsonl("data/pairs/train.jsonl") + read_jsonl("data/pairs/dev.jsonl")
    result["sample (train+dev, chunks)"] = measure(
        "sample",
        [c["chunk_id"] for c in chunks],
        [c["text"] for c in chunks],
        [c["doc_id"] for c in chunks],
        [{"id": p["query_id"], "query": p["query"], "positives": p["positive_doc_ids"]} for p in pairs],
    )
    if args.alqac_corpus.exists():
        docs = read_jsonl(args.alqac_corpus)
        queries = read_jsonl(args.alqac_queries)
        result["alqac (fixed-split train, articles)"] = measure(
            "alqac",
            [str(d["id"]) for d in docs],
            [d["text"] for d in docs],
            [str(d["id"]) for d in docs],
            [{"id": q["id"], "query": q["query"], "positives": q["positive_ids"]} for q in queries],
        )
    write_json(args.out, result)


if __name__ == "__main__":
    main()
