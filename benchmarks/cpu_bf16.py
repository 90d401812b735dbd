"""Is bf16 autocast faster or slower than fp32 on this CPU? The measurement behind ``cpu_bf16: auto``.

Usage (repo root, venv active):
    python benchmarks/cpu_bf16.py [--steps 3]

Times the training step (forward + backward) of one transformer encoder layer of e5-small's width (384 hidden, 12
heads, 1536 feed-forward) on a batch of 16 × 256 tokens, in fp32 and under CPU bf16 autocast, and records what
:func:`ragtune.precision.cpu_has_fast_bf16` (oneDNN's check) says about this CPU, with the CPU's model name and its
AVX-512 / AMX flags. ``auto`` is right on this machine when bf16 is faster exactly where the check says yes.

Writes metrics/benchmarks/cpu_bf16.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import time
from pathlib import Path

import torch

from ragtune.io import write_json
from ragtune.precision import cpu_has_fast_bf16


def cpu_facts() -> dict[str, object]:
    """Model name and the bf16-relevant instruction-set flags, from /proc/cpuinfo where there is one."""
    info = Path("/proc/cpuinfo").read_text(encoding="utf-8") if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"model name\s*:\s*(.+)", info)
    flags = set(re.search(r"flags\s*:\s*(.+)", info).group(1).split()) if "flags" in info else set()
    wanted = ("avx2", "avx512f", "avx512bw", "avx512_bf16", "amx_bf16", "amx_tile")
    name = model.group(1).strip() if model else platform.processor()
    return {"model": name, "flags": [f for f in wanted if f in flags]}


def step_seconds(bf16: bool, steps: int) -> list[float]:
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(384, 12, 1536, batch_first=True, dropout=0.0)
    x = torch.randn(16, 256, 384)
    out = []
    for _ in range(steps + 1):  # the first is a warm-up
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = layer(x).float().pow(2).mean()
        loss.backward()
        out.append(time.perf_counter() - t0)
    return out[1:]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    fp32 = statistics.median(step_seconds(False, args.steps))
    bf16 = statistics.median(step_seconds(True, args.steps))
    out = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "cpu": cpu_facts(),
        "protocol": "median training step (fwd+bwd) of one 384-wide encoder layer, batch 16 × 256 tokens",
        "fp32_seconds": round(fp32, 3),
        "bf16_autocast_seconds": round(bf16, 3),
        "bf16_speedup": round(fp32 / bf16, 2),
        "onednn_fast_bf16": cpu_has_fast_bf16(),
        "auto_chooses": "bf16" if cpu_has_fast_bf16() else "fp32",
        "auto_is_right_here": (bf16 < fp32) == cpu_has_fast_bf16(),
    }
    write_json("metrics/benchmarks/cpu_bf16.json", out)
    print(out)


if __name__ == "__main__":
    main()
