"""Time the pipeline on the shipped sample and check that data outputs are reproducible byte for byte.

Usage: python benchmarks/repro_timing.py [--cold DIR] [--out FILE]   (repo root, venv active)

1. `dvc repro --force` (or, with --skip-training, every stage but train_embedder, whose time is then read from
   metrics/train_embedder.json of the last run), timed per stage from each stage's summary line;
2. `dvc repro --force negatives`: the data stages again; their outputs must be byte-identical to step 1's;
3. `dvc repro` with nothing changed, best of 3: the no-op cost (DVC hashing + lock checks).
Writes metrics/benchmarks/repro_timing.json (or --out FILE: one file per kind of CPU, since the time is a
property of the CPU's arithmetic, bf16 or fp32); `python benchmarks/report.py` copies the figures into
docs/benchmarks.md.
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

from cpu_bf16 import cpu_facts  # this VM is not always the same CPU (this script's folder)

from ragtune.io import write_json

DEFAULT_OUT = "metrics/benchmarks/repro_timing.json"

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


ENV = dict(os.environ)  # --cold: an empty embedding cache (ragtune.plan.cold_cache_env)


def machine_line() -> str:
    """Architecture, cores, CPU model and its bf16-relevant flags: two "AMD EPYC" can differ by 1.6× here."""
    facts = cpu_facts()
    return f"{platform.machine()}, {os.cpu_count()} cores, {facts['model']} ({', '.join(facts['flags']) or 'no avx2'})"


def dvc(*args: str) -> tuple[float, str]:
    env = dict(ENV, RAGTUNE_QUIET="1", COLUMNS="400")
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], env=env, capture_output=True, text=True, check=True)
    return time.perf_counter() - t, proc.stdout + proc.stderr


def digest() -> dict[str, str]:
    return {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in DATA_OUTPUTS}


def main() -> None:
    import argparse
    import json

    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-training", action="store_true", help="reuse the last train_embedder time")
    ap.add_argument(
        "--cold",
        metavar="DIR",
        help="time a first run: the forced repro starts with an empty embedding cache in DIR (models linked in), "
        "as on a fresh clone, and no warm-up repro runs before it",
    )
    ap.add_argument("--out", default=DEFAULT_OUT, help="where the JSON goes")
    args = ap.parse_args()
    if args.cold:
        from ragtune.plan import cold_cache_env

        ENV.update(cold_cache_env(Path(args.cold)))
    else:
        dvc("repro")  # make sure the model is built and everything is current
    if args.skip_training:
        _, out = dvc("repro", "--force", "negatives")
        _, out_eval = dvc("repro", "--force", "--single-item", "evaluate")
        per_stage = {name: float(s) for name, s in STAGE_LINE.findall(out + out_eval)}
        per_stage["train_embedder"] = json.loads(Path("metrics/train_embedder.json").read_text())["train"]["seconds"]
        full = sum(per_stage.values())
    else:
        full, out = dvc("repro", "--force")
        per_stage = {name: float(s) for name, s in STAGE_LINE.findall(out)}
    first = digest()
    dvc("repro", "--force", "negatives")
    identical = digest() == first
    noop = min(dvc("repro")[0] for _ in range(3))
    data_stages = ("ingest", "chunk", "pairs", "negatives", "evaluate")
    trained_in_bf16 = json.loads(Path("metrics/train_embedder.json").read_text())["effective"]["bf16"]
    result = {
        "machine": machine_line(),
        "script": "benchmarks/repro_timing.py" + (f" --out {args.out}" if args.out != DEFAULT_OUT else ""),
        "precision": "bf16 autocast" if trained_in_bf16 else "fp32",  # what train_embedder ran in, as it recorded
        "embedding_cache": "empty at the start (--cold)" if args.cold else "warm (a repro ran just before)",
        "full_repro_s": round(full, 1),
        "full_repro_measured_as": "sum of stage times (training time from its last run)"
        if args.skip_training
        else "one forced dvc repro, wall clock",
        "data_and_evaluate_stages_s": round(sum(per_stage.get(s, 0.0) for s in data_stages), 1),
        "per_stage_s": per_stage,
        "noop_repro_s": round(noop, 2),
        "data_outputs_byte_identical_across_runs": identical,
        "targets": {
            "data_and_evaluate_stages_s": "< 180",
            "full_repro_s": "<= 900 (issue 18: the full default repro within 15 min on a 2-core machine)",
            "noop_repro_s": "< 5",
        },
    }
    write_json(args.out, result)
    print(result)
    if not identical:
        raise SystemExit("data outputs differ between two forced runs")


if __name__ == "__main__":
    main()
