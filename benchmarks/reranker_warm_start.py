"""How the reranker's dev gain grows with the number of distillation lists (train_reranker.distill), and what it costs.

Usage (repo root, venv active, after `dvc repro train_embedder`):
    python benchmarks/reranker_warm_start.py --lists 0,92,184 [--ict-queries 400] [--set train_reranker.KEY=VALUE ...]

For each number of lists this script runs the train_reranker stage in process (``run_train_reranker``, exactly as
`dvc repro` would) on a scratch copy of the stage's inputs (chunks, pairs, the fine-tuned embedder), with
``train_reranker.distill.lists`` set to it, and records from the stage's metrics:

- dev NDCG@10 of the retriever's own top-10 order (``input``), of the start model, after the warm start, and after
  the label stage (the reranker alone reordering that top-10; chunk-level, a chunk of a labeled document counts);
- the warm start's optimizer steps and seconds, and the whole stage's seconds.

The warm start's queries are the training split's, plus the pairs stage's synthetic ones when it wrote any. A corpus
with enough labels gets no synthetic pairs (``pairs.synthetic.enabled: auto``), so ``--ict-queries N`` adds N
label-free queries made from the chunks by the pairs stage's own self-supervised builder (title, heading and ICT
sentences; none equal to a dev or test question) to the scratch synthetic file, for the warm start only: the label
stage is kept as the default's with ``use_synthetic: false``. Dev is scored, never test.

Writes metrics/benchmarks/reranker_warm_start[_NAME].json and prints one row per run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from ragtune.experiment import copy_inputs
from ragtune.io import read_json, read_jsonl, write_json, write_jsonl
from ragtune.pairs.split import query_key
from ragtune.pairs.synthetic import synthetic_pairs
from ragtune.params import load_params, section, with_overrides
from ragtune.paths import Paths
from ragtune.train.reranker.run import run_train_reranker


def ict_queries(n: int, seed: int) -> list[dict]:
    """Up to ``n`` self-supervised queries from the repository's documents and chunks (no dev/test question)."""
    paths = Paths()
    pairs, _ = synthetic_pairs(
        read_jsonl(paths.documents),
        read_jsonl(paths.chunks),
        per_doc={"title": 1, "heading": 3, "ict": 6},
        max_pairs=n,
        seed=seed,
    )
    held = {query_key(q["query"]) for name in ("dev", "test") for q in read_jsonl(getattr(paths, name))}
    return [p for p in pairs if query_key(p["query"]) not in held][:n]


def run_one(params: dict, lists: int, extra: list[dict], workdir: Path) -> dict:
    """The train_reranker stage in ``workdir`` with ``distill.lists = lists``; the figures of one row."""
    paths = Paths(workdir)
    copy_inputs(Paths(), paths, ("chunks", "train", "dev", "test"))
    write_jsonl(paths.synthetic, read_jsonl(Paths().synthetic) + extra)
    shutil.copytree(Paths().embedder, paths.embedder)
    section_p = dict(section(params, "train_reranker"))
    section_p["distill"] = {**section_p["distill"], "lists": lists}
    if extra:
        section_p["use_synthetic"] = False  # the extra queries feed the warm start only
    t0 = time.perf_counter()
    run_train_reranker(section(params, "model"), section_p, paths)
    seconds = time.perf_counter() - t0
    m = read_json(paths.metrics("train_reranker"))
    warm = m.get("distill", {})
    return {
        "lists": warm.get("lists", 0),
        "available": warm.get("available"),
        "dev_input_ndcg@10": m["dev"]["before"].get("base_ndcg@10"),
        "dev_start_ndcg@10": m["dev"]["before"].get("ndcg@10"),
        "dev_after_warm_start_ndcg@10": warm.get("dev_after", {}).get("ndcg@10"),
        "dev_final_ndcg@10": m["dev"]["after"].get("ndcg@10"),
        "dev_final_mrr@10": m["dev"]["after"].get("mrr@10"),
        "warm_start_steps": warm.get("optimizer_steps", 0),
        "warm_start_seconds": warm.get("seconds", 0.0),
        "warm_start_loss": [warm.get("first_loss"), warm.get("final_loss")],
        "teacher_entropy": warm.get("teacher_entropy"),
        "uniform_guess_loss": warm.get("uniform_guess_loss"),
        "label_steps": m["effective"]["optimizer_steps"],
        "label_seconds": m["train"]["seconds"],
        "stage_seconds": round(seconds, 1),
        "warnings": m["warnings"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lists", default="0,92,184", help="comma-separated numbers of distillation lists")
    ap.add_argument("--ict-queries", type=int, default=0, help="label-free queries from the chunks, for the lists")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="param override")
    ap.add_argument("--name", default="", help="suffix of the output file")
    args = ap.parse_args()
    params = with_overrides(load_params(), args.set)
    extra = ict_queries(args.ict_queries, int(section(params, "pairs")["seed"])) if args.ict_queries else []
    rows = []
    for n in [int(x) for x in args.lists.split(",")]:
        with tempfile.TemporaryDirectory(prefix=f"ragtune-warm{n}-") as tmp:
            row = run_one(params, n, extra, Path(tmp))
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, CPU",
        "protocol": "train_reranker stage per row on a scratch copy of its inputs, distill.lists varied; "
        "dev NDCG@10 of the reranker alone over the fine-tuned embedder's top-10 (chunk level, document labels)",
        "overrides": args.set,
        "ict_queries": len(extra),
        "rows": rows,
    }
    name = f"_{args.name}" if args.name else ""
    write_json(f"metrics/benchmarks/reranker_warm_start{name}.json", out)


if __name__ == "__main__":
    main()
