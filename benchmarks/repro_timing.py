"""Time the pipeline: a full forced `dvc repro` (models already cached) and a no-op `dvc repro`.

Usage: python benchmarks/repro_timing.py   (from the repo root, inside the venv)
Writes metrics/benchmarks/repro_timing.json; then run `python benchmarks/report.py` to refresh the README.
Also checks determinism: the data outputs of the two forced runs must be byte-identical.
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from ragtune.jsonl import write_json

OUTPUTS = [
    "data/interim/documents.jsonl",
    "data/interim/queries.jsonl",
    "data/interim/quarantine.jsonl",
    "data/chunks/chunks.jsonl",
    "data/pairs/train.jsonl",
    "data/pairs/dev.jsonl",
    "data/pairs/test.jsonl",
    "data/pairs/synthetic.jsonl",
    "data/negatives/train_groups.jsonl",
    "metrics/evaluate.json",
]


def dvc(*args: str) -> float:
    env = dict(os.environ, RAGTUNE_QUIET="1")
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dvc", *args], check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def digest() -> dict[str, str]:
    return {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in OUTPUTS if Path(p).exists()}


def main() -> None:
    dvc("repro")  # warm: model build / caches
    full = dvc("repro", "--force")
    first = digest()
    full2 = dvc("repro", "--force")
    identical = digest() == first
    noop = min(dvc("repro") for _ in range(3))
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "full_repro_s": round(min(full, full2), 1),
        "noop_repro_s": round(noop, 2),
        "byte_identical_outputs": identical,
        "targets": {"full_repro_s": "< 180", "noop_repro_s": "< 5"},
    }
    write_json("metrics/benchmarks/repro_timing.json", result)
    print(result)
    if not identical:
        raise SystemExit("outputs differ between two forced runs")


if __name__ == "__main__":
    main()
