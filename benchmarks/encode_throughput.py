"""Dense encoding throughput on this machine: passages/s, and model FLOP/s as a fraction of its own matmul peak.

Usage (repo root, venv active, after `dvc repro chunk`):
    python benchmarks/encode_throughput.py [--model intfloat/multilingual-e5-small] [--passages 256]
        [--batch-size 32] [--chunks data/chunks/chunks.jsonl]

Encodes the first ``--passages`` chunks of the chunk file (with the model's passage prompt, as the index and
negatives stages do) once to warm up and then timed, in fp32 (what ragtune encodes with on a CPU today) and under
bf16 autocast (what it trains with on a CPU that has native bf16). For each: passages/s, real tokens/s, model FLOP/s
(2 × non-embedding parameters × padded tokens + attention; what the hardware computes) and that as a fraction of the
matmul peak of the same dtype (benchmarks/train_throughput.py's measure: square 2048 matmuls, best of 10), so the
figure says how much of the machine encoding uses, not only how fast it is. bf16's cost in quality: the mean cosine
between its vectors and fp32's, and the share of each passage's 10 nearest passages that both precisions agree on.

Writes metrics/benchmarks/encode_throughput.json (keyed by device, so a GPU run adds its own entry).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from train_throughput import matmul_peak  # the same peak measure as the training benchmark (this script's folder)

from ragtune.io import iter_jsonl
from ragtune.models import load_embedder
from ragtune.retrieval import model_prompt

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "metrics" / "benchmarks" / "encode_throughput.json"


def forward_flops(model, texts: list[str], prompt: str, batch_size: int) -> tuple[float, int, int]:
    """FLOPs of encoding ``texts`` as sentence-transformers batches them (sorted by length), on padded tokens."""
    hf = model[0].auto_model
    cfg = hf.config
    dense = sum(p.numel() for p in hf.parameters()) - sum(p.numel() for p in hf.embeddings.parameters())
    order = np.argsort([-len(t) for t in texts], kind="stable")
    flops, real, padded = 0.0, 0, 0
    for start in range(0, len(texts), batch_size):
        batch = [prompt + texts[i] for i in order[start : start + batch_size]]
        mask = model.tokenize(batch)["attention_mask"]
        b, s = mask.shape
        real += int(mask.sum())
        padded += b * s
        flops += 2 * dense * b * s + 2 * 2 * cfg.num_hidden_layers * b * s * s * cfg.hidden_size
    return flops, real, padded


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="intfloat/multilingual-e5-small")
    ap.add_argument("--passages", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--chunks", default="data/chunks/chunks.jsonl")
    args = ap.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_embedder(args.model, device=device)
    prompt = model_prompt(model, "passage")
    texts = [c["text"] for _, c in iter_jsonl(Path(args.chunks))][: args.passages]
    flops, real, padded = forward_flops(model, texts, prompt, args.batch_size)
    arms, vectors = {}, {}
    for arm, dtype in (("fp32", torch.float32), ("bf16_autocast", torch.bfloat16)):
        autocast = torch.autocast(device, dtype=torch.bfloat16) if arm != "fp32" else contextlib.nullcontext()
        with autocast:
            model.encode(texts[: args.batch_size], prompt=prompt, batch_size=args.batch_size)  # warm-up
            start = time.perf_counter()
            vecs = model.encode(texts, prompt=prompt, batch_size=args.batch_size, normalize_embeddings=True)
            seconds = time.perf_counter() - start
        vectors[arm] = np.asarray(vecs, dtype=np.float32)
        peak = matmul_peak(dtype, device)
        arms[arm] = {
            "seconds": round(seconds, 2),
            "passages_per_s": round(len(texts) / seconds, 1),
            "real_tokens_per_s": round(real / seconds),
            "model_gflops_per_s": round(flops / seconds / 1e9, 1),
            "matmul_peak_gflops_per_s": round(peak, 1),
            "fraction_of_peak": round(flops / seconds / 1e9 / peak, 3),
        }
        print(f"{arm}: {arms[arm]}", flush=True)
    a, b = vectors["fp32"], vectors["bf16_autocast"]
    top_a = np.argsort(-(a @ a.T), axis=1)[:, 1:11]
    top_b = np.argsort(-(b @ b.T), axis=1)[:, 1:11]
    arms["bf16_autocast"]["mean_cosine_to_fp32"] = round(float(np.mean(np.sum(a * b, axis=1))), 5)
    arms["bf16_autocast"]["top10_neighbour_overlap_with_fp32"] = round(
        float(np.mean([len(set(x) & set(y)) / 10 for x, y in zip(top_a, top_b, strict=True)])), 4
    )
    key = torch.cuda.get_device_name() if device == "cuda" else f"cpu ({os.cpu_count()} cores)"
    data = json.loads(OUT.read_text(encoding="utf-8")) if OUT.exists() else {}
    data[key] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "model": args.model,
        "passages": len(texts),
        "batch_size": args.batch_size,
        "padding_share": round(1 - real / padded, 3),
        **arms,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
