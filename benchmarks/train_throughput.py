"""Training throughput of the embedder on this machine, as a fraction of its own matmul peak.

Usage (repo root, venv active, after `dvc repro negatives`):
    python benchmarks/train_throughput.py [--model intfloat/multilingual-e5-small] [--steps 6] [--batch-size 16]

Measures, in one run:
- the machine's matmul peak (fp32 and bf16 GFLOP/s, square 2048 matmuls, best of several);
- MNRL training steps (forward + backward + AdamW) on real training groups from data/negatives/train_groups.jsonl,
  in fp32 and with bf16 autocast, each with the model's own attention dropout and with it off (the params.yaml
  default, `attention_dropout: 0.0`, which lets SDPA use its fused kernel): samples/s, real (unpadded) tokens/s,
  padded tokens/s, peak RSS;
- model FLOP/s (6 × non-embedding params × tokens + attention) as a fraction of the matching matmul peak.

Writes metrics/benchmarks/train_throughput.json (keyed by device, so a GPU run adds its own entry).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import time
from pathlib import Path

import torch

from ragtune.io import read_jsonl


def matmul_peak(dtype: torch.dtype, device: str, n: int = 2048, reps: int = 10) -> float:
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    for _ in range(2):
        a @ b
    best = 0.0
    for _ in range(reps):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = max(best, 2 * n**3 / (time.perf_counter() - t))
    return best / 1e9


def step_flops(model, features: list[dict]) -> tuple[float, int, int]:
    """Approximate training FLOPs of one step: 6·N·tokens for the dense layers, plus attention (QKᵀ and AV)."""
    hf = model[0].auto_model
    cfg = hf.config
    emb = sum(p.numel() for p in hf.embeddings.parameters())
    dense = sum(p.numel() for p in hf.parameters()) - emb
    flops, real, padded = 0.0, 0, 0
    for f in features:
        mask = f["attention_mask"]
        b, s = mask.shape
        tokens = int(mask.sum())
        real += tokens
        padded += b * s
        # compute runs on padded tokens: that is what the hardware does
        flops += 6 * dense * b * s + 6 * 2 * cfg.num_hidden_layers * b * s * s * cfg.hidden_size
    return flops, real, padded


def run(
    model_name: str, steps: int, batch_size: int, n_neg: int, bf16: bool, device: str, attention_dropout: float | None
) -> dict:
    from sentence_transformers.sentence_transformer import losses

    from ragtune.models import load_embedder, resolve_model
    from ragtune.train.common import set_attention_dropout

    model = load_embedder(resolve_model(model_name), device=device)
    model.max_seq_length = 256
    set_attention_dropout(model, attention_dropout)
    for p in model[0].auto_model.embeddings.word_embeddings.parameters():
        p.requires_grad = False  # as in params.yaml (freeze_embeddings: true)
    loss_fn = losses.MultipleNegativesRankingLoss(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-5)
    groups = [g for g in read_jsonl("data/negatives/train_groups.jsonl") if len(g["neg"]) >= n_neg]
    qp, pp = model.prompts.get("query", ""), model.prompts.get("passage", "")

    def batch(i: int) -> list[dict]:
        rows = groups[(i * batch_size) % len(groups) :][:batch_size]
        cols = [[qp + g["query"] for g in rows], [pp + g["pos"][0] for g in rows]]
        cols += [[pp + g["neg"][j] for g in rows] for j in range(n_neg)]
        feats = [model.preprocess(c) for c in cols]
        return [{k: v.to(device) if hasattr(v, "to") else v for k, v in f.items()} for f in feats]

    model.train()
    times, flops, real, padded = [], 0.0, 0, 0
    for i in range(steps + 1):
        feats = batch(i)
        t = time.perf_counter()
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(feats, None)
        loss.backward()
        opt.step()
        opt.zero_grad()
        if device == "cuda":
            torch.cuda.synchronize()
        if i == 0:
            continue  # warm-up step
        times.append(time.perf_counter() - t)
        f, r, p = step_flops(model, feats)
        flops, real, padded = flops + f, real + r, padded + p
    total = sum(times)
    peak_mem = (
        torch.cuda.max_memory_allocated() / 2**20
        if device == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return {
        "samples_per_s": round(steps * batch_size / total, 2),
        "real_tokens_per_s": round(real / total),
        "padded_tokens_per_s": round(padded / total),
        "padding_fraction": round(1 - real / padded, 3),
        "model_gflops_per_s": round(flops / total / 1e9, 1),
        "s_per_step": round(total / steps, 2),
        "peak_memory_mib": round(peak_mem),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="intfloat/multilingual-e5-small")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--n-neg", type=int, default=1)
    ap.add_argument("--out", default="metrics/benchmarks/train_throughput.json")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    hw = torch.cuda.get_device_name() if device == "cuda" else f"{platform.machine()} CPU, {os.cpu_count()} cores"
    peak32 = matmul_peak(torch.float32, device)
    peak16 = matmul_peak(torch.bfloat16, device)
    result = {
        "machine": f"{hw}, torch {torch.__version__}, threads {torch.get_num_threads()}",
        "matmul_peak_gflops": {"fp32": round(peak32, 1), "bf16": round(peak16, 1)},
        "config": {
            "model": args.model,
            "batch_size": args.batch_size,
            "hard_negatives": args.n_neg,
            "steps": args.steps,
        },
    }
    arms = (
        ("fp32", False, peak32, None),
        ("bf16_autocast", True, peak16, None),
        ("fp32_attention_dropout_0", False, peak32, 0.0),
        ("bf16_autocast_attention_dropout_0", True, peak16, 0.0),
    )
    for name, bf16, peak, attention_dropout in arms:
        # a fresh process per arm: peak RSS is a per-process high-water mark, so arms must not share one
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            r = pool.apply(run, (args.model, args.steps, args.batch_size, args.n_neg, bf16, device, attention_dropout))
        r["fraction_of_matmul_peak"] = round(r["model_gflops_per_s"] / peak, 3)
        result[name] = r
        print(name, r)
    out = Path(args.out)
    existing = json.loads(out.read_text()) if out.exists() else {}
    if device == "cuda":
        existing["gpu"] = result
    else:
        existing.update(result)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(existing, indent=2, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
