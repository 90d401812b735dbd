"""How many REAL questions the round-trip filter would keep: the cost side of questions.consistency's default.

Usage (repo root, venv active, after `dvc repro pairs` so data/pairs holds the labeled splits):
    python benchmarks/round_trip.py [--root .] [--out metrics/benchmarks/round_trip.json]

The filter keeps a generated question only if its own chunk ranks in the top k under a retriever. What it removes
that it should keep cannot be measured on generated questions without an LLM, but it can on real ones: a labeled
train or dev question is a question a user really asked, and the share of those whose positive chunk the retriever
ranks in the top k is the share of good generated questions the filter would keep. Only train and dev questions
are read (never test): this chooses a default.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ragtune.io import read_jsonl, write_json
from ragtune.params import load_params, section
from ragtune.paths import Paths
from ragtune.questions.consistency import own_chunk_ranks

KS = (1, 3, 5, 10, 20, 50)


def keep_rates(root: Path) -> dict:
    """Per retriever: the share of labeled train+dev questions whose best positive chunk ranks ≤ k, for each k."""
    paths, params = Paths(root), load_params()
    chunks = read_jsonl(paths.chunks)
    questions = [q for s in ("train", "dev") for q in read_jsonl(paths.split(s)) if q["positive_chunk_ids"]]
    rows = [
        {"query": q["query"], "chunk_id": c, "i": i} for i, q in enumerate(questions) for c in q["positive_chunk_ids"]
    ]
    out: dict = {"questions": len(questions), "chunks": len(chunks), "splits": ["train", "dev"]}
    for retriever in ("embedder", "bm25"):
        ranks = own_chunk_ranks(rows, chunks, retriever, section(params, "model"), section(params, "bm25"))
        best: dict[int, int] = {}
        for row, rank in zip(rows, ranks, strict=True):
            best[row["i"]] = min(best.get(row["i"], rank), rank)
        b = np.array(list(best.values()))
        out[retriever] = {f"keep@{k}": round(float((b <= k).mean()), 3) for k in KS} | {
            "median_rank": float(np.median(b))
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=Path("."), help="pipeline checkout whose chunks/pairs to read")
    parser.add_argument("--out", type=Path, default=Path("metrics/benchmarks/round_trip.json"))
    args = parser.parse_args()
    result = keep_rates(args.root)
    write_json(args.out, result)
    for retriever in ("embedder", "bm25"):
        rates = " ".join(f"{k} {v:.1%}" for k, v in result[retriever].items() if k.startswith("keep"))
        print(f"{retriever}: {rates} ({result['questions']} labeled train+dev questions, {result['chunks']} chunks)")


if __name__ == "__main__":
    main()
