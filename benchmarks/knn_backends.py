"""Exact nearest-neighbour search for dense mining at corpus scale: FAISS vs usearch vs numpy, and
sentence-transformers' own path.

Usage (repo root, venv active):
    python benchmarks/knn_backends.py [--sizes 100000,1000000,2023481] [--queries 3000] [--k 55] [--dim 384]
        [--work /tmp/ragtune-knn]

For each corpus size it writes seeded, L2-normalised float32 vectors (brute-force cost does not depend on their
values; 2,023,481 is the chunk count of the 1,875,511-document corpus) to a .npy file, and then runs each backend of
:func:`ragtune.knn.exact_top_k` in its own process over that file memory-mapped, in blocks of
``ragtune.knn.BLOCK_ROWS`` rows: the search's time, the process's wall time, CPU seconds and peak RSS (wait4), and
the rows it returns.
k = 55 is what the negatives stage asks for (range_max 50 + positives). It also runs sentence-transformers'
``mine_hard_negatives`` search as that function does it without FAISS (one ``[queries, corpus]`` similarity matrix,
then ``torch.topk``) where that matrix fits in half this machine's memory, and otherwise records the memory it would
need. Agreement: the share of queries whose k rows are identical, in order, to the numpy backend's.

Writes metrics/benchmarks/knn_backends.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "metrics" / "benchmarks" / "knn_backends.json"
SEARCHES = ("faiss", "usearch", "numpy", "st_torch")


def make_vectors(path: Path, rows: int, dim: int, seed: int) -> None:
    """Seeded unit vectors written block by block into a .npy (never all in memory)."""
    if path.exists() and np.load(path, mmap_mode="r").shape == (rows, dim):
        return
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, dim))
    rng = np.random.default_rng(seed)
    for start in range(0, rows, 100_000):
        block = rng.standard_normal((min(100_000, rows - start), dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start : start + len(block)] = block
    out.flush()
    del out


def search_once(search: str, corpus: Path, queries: Path, k: int, rows_out: Path) -> None:
    """One backend in this process (called by the parent in a fresh interpreter, so RSS is this search's own)."""
    from ragtune.knn import array_blocks, exact_top_k

    xb = np.load(corpus, mmap_mode="r")
    xq = np.load(queries)
    start = time.perf_counter()
    if search == "st_torch":  # mine_hard_negatives without use_faiss: model.similarity on the whole corpus, topk
        import torch

        start = time.perf_counter()
        sims = torch.from_numpy(xq) @ torch.from_numpy(np.array(xb)).T
        _, rows = torch.topk(sims, k=k, dim=1)
        rows = rows.numpy()
    else:
        _, rows = exact_top_k(xq, array_blocks(xb), k, backend=search)
    seconds = time.perf_counter() - start
    np.save(rows_out, rows)
    rows_out.with_suffix(".json").write_text(json.dumps({"search_seconds": round(seconds, 2)}), encoding="utf-8")


def run_child(search: str, corpus: Path, queries: Path, k: int, rows_out: Path) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", search, str(corpus), str(queries), str(k), str(rows_out)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{search} failed on {corpus}")
    return {
        **json.loads(rows_out.with_suffix(".json").read_text(encoding="utf-8")),
        "process_seconds": round(wall, 2),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),
        "peak_rss_mib": round(usage.ru_maxrss / 1024),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="100000,1000000,2023481")
    ap.add_argument("--queries", type=int, default=3000)
    ap.add_argument("--k", type=int, default=55)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--work", default="/tmp/ragtune-knn")
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        search, corpus, queries, k, rows_out = args.child
        search_once(search, Path(corpus), Path(queries), int(k), Path(rows_out))
        return

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    queries = work / f"queries-{args.queries}x{args.dim}.npy"
    make_vectors(queries, args.queries, args.dim, seed=1)
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    rows_out = []
    for size in (int(s) for s in args.sizes.split(",")):
        corpus = work / f"corpus-{size}x{args.dim}.npy"
        make_vectors(corpus, size, args.dim, seed=0)
        row: dict[str, object] = {"corpus_rows": size, "queries": args.queries, "k": args.k, "dim": args.dim}
        found: dict[str, np.ndarray] = {}
        for search in SEARCHES:
            need = args.queries * size * 4
            if search == "st_torch" and need > memory / 2:
                row[search] = {"skipped": f"needs a {need / 2**30:.0f} GiB similarity matrix"}
                continue
            out = work / f"rows-{search}-{size}.npy"
            row[search] = run_child(search, corpus, queries, args.k, out)
            found[search] = np.load(out)
            print(f"{size:>9,} rows  {search:<8} {row[search]}", flush=True)
        for search, rows in found.items():
            if search != "numpy":
                row[search]["same_rows_as_numpy"] = round(float(np.mean(np.all(rows == found["numpy"], axis=1))), 4)
        rows_out.append(row)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    import faiss
    import usearch

    OUT.write_text(
        json.dumps(
            {
                "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
                "versions": {"faiss-cpu": faiss.__version__, "usearch": usearch.__version__, "numpy": np.__version__},
                "protocol": (
                    "seeded unit vectors in a memory-mapped .npy; ragtune.knn.exact_top_k per backend, blocks of "
                    "ragtune.knn.BLOCK_ROWS rows, each in its own process (search time inside it; the process's "
                    "wall, CPU and peak RSS from wait4); "
                    "st_torch = mine_hard_negatives' search without FAISS (one similarity matrix + torch.topk)"
                ),
                "rows": rows_out,
                "max_rss_self_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
