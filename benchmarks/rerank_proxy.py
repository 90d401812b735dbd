"""The late-interaction reranker's base-model evidence for every retriever, not only the one evaluate kept.

Usage (repo root, venv active, after `dvc repro evaluate` with `train_reranker.kind: late_interaction`):
    python benchmarks/rerank_proxy.py [--weights 1.0,0.5]

The evaluate stage asks :func:`ragtune.evaluation.systems.rerank_proxy` only for the retriever its ladder kept, and
only when dev cannot decide (the proxy encodes passages token by token). This script asks for all four retrievers'
base analogues (base model, BM25, their RRF hybrid, their convex hybrid at the alpha chosen on dev) at fixed fusion
weights, so the docs can say where late-interaction re-scoring helps the base model over train + dev questions and
where it does not. Never test questions.

Writes metrics/benchmarks/rerank_proxy.json: per retriever and weight, the paired gain and 95% interval.
"""

from __future__ import annotations

import argparse
import time

from ragtune.evaluation.metrics import paired_bootstrap
from ragtune.evaluation.run import load_splits
from ragtune.evaluation.systems import RETRIEVERS, Retrievers, rank_splits, rerank_proxy
from ragtune.io import read_jsonl, write_json
from ragtune.models import resolve_model
from ragtune.params import load_params, section
from ragtune.paths import Paths


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", default="1.0,0.5", help="reranker fusion weights to measure")
    ap.add_argument("--out", default="metrics/benchmarks/rerank_proxy.json")
    args = ap.parse_args()
    params, paths = load_params(), Paths()
    model_p, e = section(params, "model"), section(params, "evaluate")
    chunks, train, splits = read_jsonl(paths.chunks), read_jsonl(paths.train), load_splits(paths)
    r = Retrievers.load(chunks, model_p, section(params, "bm25"), paths)
    _, dev = rank_splits(r, splits, e)  # the convex alpha chosen on dev
    base_path = resolve_model(model_p["embedder"], revision=model_p.get("revision"))
    out: dict[str, dict[str, dict[str, float]]] = {}
    for w in [float(x) for x in args.weights.split(",")]:
        dev.weights |= {f"{retr}+rerank": w for retr in RETRIEVERS}
        for retr in RETRIEVERS:
            t0 = time.perf_counter()
            got = rerank_proxy(r, chunks, train, splits, paths.reranker, base_path, dev, e, retr)
            if got is None:
                raise SystemExit(f"no proxy for {retr}: needs a late-interaction reranker in {paths.reranker}")
            wrap = [{q: {"ndcg@10": v} for q, v in side.items()} for side in (got.rescored, got.plain)]
            row = paired_bootstrap(*wrap, seed=int(e["select_seed"]))
            row |= {"seconds": round(time.perf_counter() - t0, 1)}
            out.setdefault(retr, {})[f"{w:.2f}"] = row
            print(retr, w, row, flush=True)
    write_json(args.out, {"questions": "train (≤ evaluate.rerank_proxy_queries) + dev", "gain": out})


if __name__ == "__main__":
    main()
