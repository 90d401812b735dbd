"""Time the pipeline on the shipped sample and check that data outputs are reproducible byte for byte.

Usage: python benchmarks/repro_timing.py   (repo root, venv active; the base model must already be built/cached)

1. `dvc repro --force`: every stage, timed as a whole and per stage (from each stage's summary line);
2. `dvc repro --force negatives`: the data stages again; their outputs must be byte-identical to step 1's;
3. `dvc repro` with nothing changed, best of 3: the no-op cost (DVC hashing + lock checks).
Writes metrics/benchmarks/repro_timing.json; `python benchmarks/report.py` copies the figures into the README.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

from ragtune.jsonl import write_json

DATA_OUTPUTS = [
    "data/interim/documents.jsonl",
    "data/interim/queries.jsonl",
    "data/interim/quarantine.jsonl",
    "data/chunks/chunks.jsonl",
    "data/pairs/train.jsonl",
    "data/pairs/dev.jsonl",
    "data/pairs/test.jsonl",
    "data/pairs/synthetic.jsonl",
    "data/negatives/train_groups.jsonl",
]
STAGE_LINE = re.compile(r"\[(\w+)\] read .*?\(([\d.]+)s\)", re.S)


def dvc(*args: str) -> tuple[float, str]:
    env = dict(os.environ, RAGTUNE_QUIET="1", COLUMNS="400")
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], env=env, capture_output=True, text=True, check=True)
    return time.perf_counter() - t, proc.stdout + proc.stderr


def digest() -> dict[str, str]:
    return {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in DATA_OUTPUTS}


def main() -> None:
    dvc("repro")  # make sure the model is built and everything is current
    full, out = dvc("repro", "--force")
    per_stage = {name: float(s) for name, s in STAGE_LINE.findall(out)}
    first = digest()
    dvc("repro", "--force", "negatives")
    identical = digest() == first
    noop = min(dvc("repro")[0] for _ in range(3))
    data_stages = ("ingest", "chunk", "pairs", "negatives", "evaluate")
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "full_repro_s": round(full, 1),
        "data_and_evaluate_stages_s": round(sum(per_stage.get(s, 0.0) for s in data_stages), 1),
        "per_stage_s": per_stage,
        "noop_repro_s": round(noop, 2),
        "data_outputs_byte_identical_across_runs": identical,
        "targets": {"data_and_evaluate_stages_s": "< 180", "full_repro_s": "< 720", "noop_repro_s": "< 5"},
    }
    write_json("metrics/benchmarks/repro_timing.json", result)
    print(result)
    if not identical:
        raise SystemExit("data outputs differ between two forced runs")


if __name__ == "__main__":
    main()
