"""How much of the fine-tuning gain is the seed? Run the real train_embedder stage under several seeds.

Usage (repo root, venv active, after `dvc repro negatives`):
    python benchmarks/seed_variance.py [--seeds 42,1,2] [--set train_embedder.batch_sampler=no_duplicates]
        [--out metrics/benchmarks/seed_variance_no_duplicates.json]

A single held-out split of 77 questions moves by a few NDCG points between runs that differ only in data order,
so one run's "+5 points" says little on its own. For each seed this script runs the train_embedder stage in this
process, through `ragtune.train.embedder.run.run_train_embedder` exactly as `dvc repro` would (best checkpoint on
dev, WiSE-FT merge checked on dev, base kept if worse), with params.yaml plus the `--set` overrides and only
`train_embedder.seed` changed. It runs on a scratch folder laid out like the repository (`ragtune.paths.Paths`)
holding copies of the files the stage reads (chunks, training groups, dev and test), and scores the shipped model
the way the evaluate stage does: document-level NDCG@10 / MRR@10 on dev and test, against the base model. The
repository's own outputs are not touched.

Writes metrics/benchmarks/seed_variance.json (per seed, plus mean / sample std / min of the test gain).
docs/benchmarks.md quotes it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
from pathlib import Path

import torch

from ragtune.experiment import TRAIN_EMBEDDER_INPUTS, copy_inputs, score, train_embedder
from ragtune.io import read_jsonl, write_json
from ragtune.models import load_embedder, resolve_model
from ragtune.params import load_params, section, with_overrides
from ragtune.paths import Paths
from ragtune.retrieval import model_prompt


def run_seed(seed: int, params: dict, workdir: Path) -> tuple[Path, dict, float]:
    """The train_embedder stage in ``workdir`` with only the seed changed; returns the model folder, its metrics and
    the stage's seconds."""
    paths = Paths(workdir)
    copy_inputs(Paths(), paths, TRAIN_EMBEDDER_INPUTS)
    return train_embedder({**params, "train_embedder": {**params["train_embedder"], "seed": seed}}, paths)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="42,1,2")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="param override")
    ap.add_argument("--out", default="metrics/benchmarks/seed_variance.json")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]

    params = with_overrides(load_params(), args.set)
    model_p = section(params, "model")
    paths = Paths()
    chunks = read_jsonl(paths.chunks)
    splits = {s: read_jsonl(paths.split(s)) for s in ("dev", "test")}

    def scored(path: str) -> dict[str, dict[str, float]]:
        model = load_embedder(path)
        qp = model_prompt(model, "query", model_p.get("query_prompt"))
        pp = model_prompt(model, "passage", model_p.get("passage_prompt"))
        return score(model, qp, pp, chunks, splits)

    base = scored(resolve_model(model_p["embedder"]))
    out: dict[str, object] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, CPU",
        "protocol": "stages/train_embedder.py with params.yaml plus the overrides, only train_embedder.seed varied; "
        "document level",
        "overrides": args.set,
        "queries": {s: len(q) for s, q in splits.items()},
        "base": base,
        "seeds": {},
    }
    for seed in seeds:
        with tempfile.TemporaryDirectory(prefix=f"ragtune-seed{seed}-") as tmp:
            path, metrics, seconds = run_seed(seed, params, Path(tmp))
            ft = scored(str(path))
        out["seeds"][str(seed)] = {
            **ft,
            "shipped": metrics["shipped"],
            "stage_seconds": round(seconds, 1),
            "test_gain_ndcg@10": round(ft["test"]["ndcg@10"] - base["test"]["ndcg@10"], 4),
            "dev_gain_ndcg@10": round(ft["dev"]["ndcg@10"] - base["dev"]["ndcg@10"], 4),
        }
        print(seed, out["seeds"][str(seed)], flush=True)
    for split in ("dev", "test"):
        gains = [r[f"{split}_gain_ndcg@10"] for r in out["seeds"].values()]
        out[f"{split}_gain_ndcg@10"] = {
            "mean": round(statistics.mean(gains), 4),
            "std": round(statistics.stdev(gains), 4) if len(gains) > 1 else None,
            "min": min(gains),
            "max": max(gains),
        }
    write_json(args.out, out)
    print(json.dumps({k: out[k] for k in ("dev_gain_ndcg@10", "test_gain_ndcg@10")}, indent=2))


if __name__ == "__main__":
    main()
