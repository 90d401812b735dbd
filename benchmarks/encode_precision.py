"""Does encoding under bf16 autocast on a CPU change retrieval? fp32 vs bf16 vectors, scored on train + dev.

Usage (repo root, venv active, in a project where `dvc repro train_embedder` has run):
    python benchmarks/encode_precision.py [--project .] [--models intfloat/multilingual-e5-small,models/embedder]

benchmarks/encode_throughput.py measured bf16 autocast encoding 2.5× faster than fp32 on this machine. Before any
stage encodes that way, this measures what it does to retrieval: for each model, every chunk and every train + dev
question (never test) is encoded in both precisions with the model's prompts, and each question's chunks are ranked
by cosine and scored at document level (NDCG@10, MRR@10), as evaluate scores dense retrieval. Reported per model:
both means, the paired bootstrap of bf16 − fp32 (95% interval), how many questions' NDCG@10 moved at all, and the
seconds each precision took.

Writes metrics/benchmarks/encode_precision.json (keyed by the project folder's name).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import time
from pathlib import Path

import torch

from ragtune.evaluation.metrics import dense_doc_metrics, mean_metrics, paired_bootstrap
from ragtune.io import iter_jsonl, read_jsonl
from ragtune.models import load_embedder
from ragtune.retrieval import DenseEncoder, DenseIndex, model_prompt

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "metrics" / "benchmarks" / "encode_precision.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--project", default=".")
    ap.add_argument("--models", default="intfloat/multilingual-e5-small,models/embedder")
    args = ap.parse_args()
    project = Path(args.project).resolve()
    chunks = [c for _, c in iter_jsonl(project / "data" / "chunks" / "chunks.jsonl")]
    chunk_to_doc = {c["chunk_id"]: c["doc_id"] for c in chunks}
    queries = [
        q
        for split in ("train", "dev")
        for q in read_jsonl(project / "data" / "pairs" / f"{split}.jsonl")
        if q["positive_doc_ids"]
    ]
    result: dict[str, object] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "chunks": len(chunks),
        "queries": len(queries),
        "splits": "train + dev",
    }
    for name in args.models.split(","):
        path = str(project / name) if (project / name).exists() else name
        model = load_embedder(path, device="cpu")
        qp, pp = model_prompt(model, "query"), model_prompt(model, "passage")
        arms: dict[str, dict] = {}
        per_query: dict[str, dict] = {}
        for arm in ("fp32", "bf16_autocast"):
            autocast = torch.autocast("cpu", dtype=torch.bfloat16) if arm != "fp32" else contextlib.nullcontext()
            enc = DenseEncoder(model, "", batch_size=32, use_cache=False)
            start = time.perf_counter()
            with autocast:
                index = DenseIndex([c["chunk_id"] for c in chunks], enc.encode([c["text"] for c in chunks], pp))
                per_query[arm] = dense_doc_metrics(
                    index, lambda texts, enc=enc, qp=qp: enc.encode(texts, qp), queries, chunk_to_doc
                )
            means = mean_metrics(list(per_query[arm].values()))
            arms[arm] = {
                "ndcg@10": round(means["ndcg@10"], 4),
                "mrr@10": round(means["mrr@10"], 4),
                "seconds": round(time.perf_counter() - start, 1),
            }
            print(f"{name} {arm}: {arms[arm]}", flush=True)
        gain = paired_bootstrap(per_query["bf16_autocast"], per_query["fp32"])
        moved = sum(
            per_query["bf16_autocast"][q]["ndcg@10"] != per_query["fp32"][q]["ndcg@10"] for q in per_query["fp32"]
        )
        result[name] = {
            **arms,
            "bf16_minus_fp32_ndcg@10": {k: round(v, 4) if isinstance(v, float) else v for k, v in gain.items()},
            "queries_whose_ndcg@10_moved": moved,
        }
    data = json.loads(OUT.read_text(encoding="utf-8")) if OUT.exists() else {}
    data[project.name] = result
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
