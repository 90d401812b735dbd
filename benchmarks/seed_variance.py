"""How much of the fine-tuning gain is the seed? Run the real train_embedder stage under several seeds.

Usage (repo root, venv active, after `dvc repro negatives`):
    python benchmarks/seed_variance.py [--seeds 42,1,2] [--set train_embedder.batch_sampler=no_duplicates]
        [--out metrics/benchmarks/seed_variance_no_duplicates.json]

A single held-out split of 77 questions moves by a few NDCG points between runs that differ only in data order,
so one run's "+5 points" says little on its own. For each seed this script copies the stage inputs (params.yaml
with the `--set` overrides and `train_embedder.seed` changed, `stages/`, `data/`) into a scratch folder, runs
`stages/train_embedder.py` there exactly as `dvc repro` would (best checkpoint on dev, WiSE-FT merge checked on
dev, base kept if worse), and scores the shipped model the way the evaluate stage does: document-level NDCG@10 /
MRR@10 on dev and test, against the base model. The repository's own outputs are not touched.

Writes metrics/benchmarks/seed_variance.json (per seed, plus mean / sample std / min of the test gain).
docs/benchmarks.md quotes it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from precision_quality import score

from ragtune.io import read_jsonl, write_json
from ragtune.models import load_embedder, resolve_model
from ragtune.params import load_params, section
from ragtune.retrieval import model_prompt


def with_overrides(params: dict, overrides: list[str]) -> dict:
    """``section.key=value`` overrides (value parsed as YAML), as ``dvc exp run -S`` would apply them."""
    params = {k: dict(v) if isinstance(v, dict) else v for k, v in params.items()}
    for item in overrides:
        key, _, value = item.partition("=")
        section_name, _, name = key.partition(".")
        if not name or section_name not in params or name not in params[section_name]:
            raise SystemExit(f"--set {item!r}: expected section.key=value with a key that params.yaml has")
        params[section_name][name] = yaml.safe_load(value)
    return params


def scratch_copy(workdir: Path, params: dict) -> None:
    """The stage inputs (`stages/`, `data/`) and ``params`` as params.yaml in ``workdir``: a repo the stages run in."""
    for name in ("stages", "data"):
        shutil.copytree(name, workdir / name)
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True, sort_keys=False), encoding="utf-8")


def run_embedder_stages(workdir: Path, *scripts: str) -> tuple[Path, dict, float]:
    """Run ``scripts`` in ``workdir`` as `dvc repro` would; returns the embedder folder, its metrics and seconds."""
    t0 = time.perf_counter()
    for script in scripts:
        subprocess.run([sys.executable, script], cwd=workdir, check=True)
    seconds = time.perf_counter() - t0
    metrics = json.loads((workdir / "metrics/train_embedder.json").read_text(encoding="utf-8"))
    return workdir / "models/embedder", metrics, seconds


def run_seed(seed: int, params: dict, workdir: Path) -> tuple[Path, dict, float]:
    """The train_embedder stage in ``workdir`` with only the seed changed; returns the model folder and its metrics."""
    scratch_copy(workdir, {**params, "train_embedder": {**params["train_embedder"], "seed": seed}})
    return run_embedder_stages(workdir, "stages/train_embedder.py")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="42,1,2")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="param override")
    ap.add_argument("--out", default="metrics/benchmarks/seed_variance.json")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]

    params = with_overrides(load_params(), args.set)
    model_p = section(params, "model")
    chunks = read_jsonl("data/chunks/chunks.jsonl")
    splits = {s: read_jsonl(f"data/pairs/{s}.jsonl") for s in ("dev", "test")}

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
