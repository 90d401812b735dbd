"""The bake-off's cost side for base models on the shipped sample: dimension, passages/s, peak memory, size.

Usage (repo root, after `dvc repro chunk`):
    python benchmarks/bakeoff.py [--model intfloat/multilingual-e5-small ...] [--passages 256] [--repeats 3]

Each model encodes the same sample chunks in a child process (`ragtune.evaluation.bakeoff.measure_encoder`, exactly
what the evaluate stage records in metrics/models.json), `--repeats` times; the median of passages/s and the largest
peak are kept. Writes metrics/benchmarks/bakeoff.json (then `python benchmarks/report.py` renders it into
docs/benchmarks.md). Quality (MRR@10, Hit@1, NDCG@10) comes from the pipeline itself:
`dvc exp run -S model.embedder=<name> -S train_embedder.enabled=false` per model, then `ragtune compare`.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics

import torch

from ragtune.evaluation.bakeoff import measure_encoder
from ragtune.io import read_jsonl, write_json
from ragtune.models import load_embedder, resolve_model
from ragtune.retrieval import model_prompt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", action="append", help="model name or folder (repeatable; default: e5-small)")
    ap.add_argument("--passages", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="metrics/benchmarks/bakeoff.json")
    args = ap.parse_args()
    texts = [c["text"] for c in read_jsonl("data/chunks/chunks.jsonl")][: args.passages]
    result: dict = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, CPU",
        "protocol": f"{len(texts)} sample chunks, batch {args.batch_size}, median of {args.repeats} child processes",
    }
    for name in args.model or ["intfloat/multilingual-e5-small"]:
        prompt = model_prompt(load_embedder(resolve_model(name)), "passage")
        runs = [measure_encoder(name, texts, prompt, batch_size=args.batch_size) for _ in range(args.repeats)]
        result[name] = {
            "dim": runs[0]["dim"],
            "params_m": runs[0]["params_m"],
            "size_mib": runs[0]["size_mib"],
            "passages_per_s": statistics.median(r["passages_per_s"] for r in runs),
            "passages_per_s_runs": [r["passages_per_s"] for r in runs],
            "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
        }
    write_json(args.out, result)
    print(result)


if __name__ == "__main__":
    main()
