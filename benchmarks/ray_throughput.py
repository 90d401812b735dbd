"""Dense encoding through Ray (``model.encode_on: ray``) on a local cluster, against encoding in this process.

Usage (repo root, venv active, after `dvc repro chunk`):
    python benchmarks/ray_throughput.py [--passages 357] [--actors 1,2] [--batch-size 32]

Starts a Ray cluster on loopback with this machine's CPUs (``ray.init``, no dashboard; shut down at the end) and
encodes the first ``--passages`` chunks of the chunk file with the base embedder's passage prompt, the embedding cache
off, the way a stage encodes them (``ragtune.retrieval.DenseEncoder``):

- in this process (``encode_on: local``), after a one-batch warm-up;
- through Ray Data actor pools of each ``--actors`` size, timed end to end: one encode call, as a stage makes it,
  including each actor's start (importing torch, loading the model), since a stage pays that too;
- one block (``batch_size`` × 8 passages) through a fresh pool, to show what of that is the start.

Reports passages/s, the ratio to this process, and whether the vectors are byte-identical to this process's (they
must be: the engine is not allowed to change outputs). On one machine Ray cannot be faster than the process it
replaces (the same cores, plus scheduling and serialization); the figure says what the engine costs, so a user can
tell when adding machines pays. Writes metrics/benchmarks/ray_throughput.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from itertools import islice
from pathlib import Path

from cpu_bf16 import cpu_facts  # this VM is not always the same CPU (this script's folder)

from ragtune.io import iter_jsonl, write_json

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "metrics" / "benchmarks" / "ray_throughput.json"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="intfloat/multilingual-e5-small")
    ap.add_argument("--passages", type=int, default=357, help="the sample has 357 chunks")
    ap.add_argument("--actors", default="1,2", help="comma-separated actor-pool sizes")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-seq-length", type=int, default=512, help="model.max_seq_length")
    ap.add_argument("--chunks", type=Path, default=ROOT / "data/chunks/chunks.jsonl")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)

    import ray

    from ragtune.models import load_embedder, resolve_model
    from ragtune.ray_encode import RaySettings
    from ragtune.retrieval import DenseEncoder, RayEncoding, model_prompt

    texts = [c["text"] for _, c in islice(iter_jsonl(args.chunks), args.passages)]
    path = resolve_model(args.model)
    model = load_embedder(path, max_seq_length=args.max_seq_length)
    prompt = model_prompt(model, "passage")
    bs = args.batch_size

    def timed(encoder: DenseEncoder, items: list[str]) -> tuple[float, bytes]:
        t = time.perf_counter()
        vectors = encoder.encode(items, prompt)
        return time.perf_counter() - t, vectors.tobytes()

    DenseEncoder(model, "", batch_size=bs, use_cache=False).encode(texts[:bs], prompt)  # warm-up
    local_s, local = timed(DenseEncoder(model, "", batch_size=bs, use_cache=False), texts)
    result: dict = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {cpu_facts()['model']}",
        "model": args.model,
        "passages": len(texts),
        "batch_size": bs,
        "max_seq_length": args.max_seq_length,
        "local": {"seconds": round(local_s, 2), "passages_per_s": round(len(texts) / local_s, 2)},
        "protocol": (
            "base embedder, passage prompt, cache off; local after a one-batch warm-up; each Ray row is one encode "
            "call timed end to end (actor start and model load included), on a cluster started by ray.init on "
            "loopback with this machine's CPUs"
        ),
    }
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        for n in (int(a) for a in args.actors.split(",") if a.strip()):
            ray_encoder = RayEncoding(str(path), RaySettings(address="auto", actors=n, gpus_per_actor=0))

            def encoder() -> DenseEncoder:
                return DenseEncoder(model, "", batch_size=bs, use_cache=False, ray=ray_encoder)  # noqa: B023

            block_s, _ = timed(encoder(), texts[: bs * 8])
            seconds, vectors = timed(encoder(), texts)
            result[f"ray_{n}_actors"] = {
                "seconds": round(seconds, 2),
                "passages_per_s": round(len(texts) / seconds, 2),
                "vs_local": round(local_s / seconds, 3),
                "one_block_end_to_end_s": round(block_s, 2),
                "identical_to_local": vectors == local,
            }
            print(n, result[f"ray_{n}_actors"], flush=True)
    finally:
        ray.shutdown()
    write_json(args.out, result)
    print(result)


if __name__ == "__main__":
    main()
