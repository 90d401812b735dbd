"""Does bf16 autocast on CPU cost retrieval quality? Train the embedder twice, bf16 and fp32, and compare.

Usage (repo root, venv active, after `dvc repro negatives`):
    python benchmarks/precision_quality.py [--max-steps 36] [--arms bf16,fp32]

Both arms use the train_embedder params from params.yaml (same seed, data order, learning rate, schedule and
attention dropout); only
the precision differs, and `max_steps` is shortened so the fp32 arm fits a coffee break (on the sample, dev NDCG@10
peaks by step ~36 anyway). Each arm is scored the way the evaluate stage scores it: document-level NDCG@10 and
MRR@10 on the dev and test splits. Wall-clock time per arm is reported too, since speed is the point of bf16.

Writes metrics/benchmarks/precision_quality.json. docs/benchmarks.md quotes it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import tempfile
import time

import torch

from ragtune.experiment import score
from ragtune.io import read_jsonl, write_json
from ragtune.models import load_embedder, resolve_model
from ragtune.params import load_params, section
from ragtune.retrieval import model_prompt
from ragtune.train.batching import group_row_keys
from ragtune.train.common import apply_attention_dropout
from ragtune.train.embedder.config import EmbedderTrainConfig
from ragtune.train.embedder.dev import build_ir_evaluator
from ragtune.train.embedder.trainer import build_trainer, column_prompts, freeze, groups_to_dataset


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-steps", type=int, default=36)
    ap.add_argument("--arms", default="bf16,fp32")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)

    params = load_params()
    model_p = section(params, "model")
    base_cfg = EmbedderTrainConfig.from_params(section(params, "train_embedder"))
    groups = read_jsonl("data/negatives/train_groups.jsonl")
    chunks = read_jsonl("data/chunks/chunks.jsonl")
    chunk_docs = {c["chunk_id"]: c["doc_id"] for c in chunks}
    splits = {s: read_jsonl(f"data/pairs/{s}.jsonl") for s in ("dev", "test")}
    base_path = resolve_model(model_p["embedder"])

    out: dict[str, object] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, CPU",
        "protocol": f"train_embedder params from params.yaml, max_steps={args.max_steps}, no mid-run eval",
        "groups": len(groups),
    }
    for arm in args.arms.split(","):
        cfg = dataclasses.replace(
            base_cfg,
            max_steps=args.max_steps,
            precision="fp32" if arm == "fp32" else "auto",
            cpu_bf16=arm == "bf16",
            load_best_model_at_end=False,
            early_stopping_patience=0,
            save_steps=10**6,
            eval_steps=10**6,
        )
        model = load_embedder(base_path)
        model.max_seq_length = cfg.max_seq_length
        qp = model_prompt(model, "query", model_p.get("query_prompt"))
        pp = model_prompt(model, "passage", model_p.get("passage_prompt"))
        freeze(model, cfg)
        apply_attention_dropout(model, cfg.attention_dropout, cfg.SECTION)
        dataset, _ = groups_to_dataset(groups, cfg.n_hard_negatives, cfg.positives)
        evaluator = build_ir_evaluator(splits["dev"], chunks, qp, pp, level=cfg.dev_level)
        with tempfile.TemporaryDirectory() as tmp:
            trainer = build_trainer(
                model,
                cfg,
                dataset,
                evaluator,
                tmp,
                column_prompts(cfg.n_hard_negatives, qp, pp),
                # the stage's batches
                batch_keys=group_row_keys(groups, cfg.n_hard_negatives, chunk_docs, cfg.positives),
            )
            t0 = time.perf_counter()
            trainer.train()
            seconds = time.perf_counter() - t0
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        out[arm] = {
            "train_seconds": round(seconds, 1),
            "optimizer_steps": trainer.state.global_step,
            "final_loss": round(losses[-1], 4) if losses else None,
            **score(model, qp, pp, chunks, splits),
        }
        print(arm, out[arm], flush=True)
    write_json("metrics/benchmarks/precision_quality.json", out)


if __name__ == "__main__":
    main()
