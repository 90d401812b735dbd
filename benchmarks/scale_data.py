"""The data stages at corpus scale: ingest → chunk → bm25 → questions → pairs → negatives (BM25 only) on N documents.

Usage (repo root, venv active, after `dvc repro ingest` so the sample's sentences exist):
    python benchmarks/scale_data.py --docs 10000,100000,1000000,1875511 [--work /tmp/ragtune-scale]
        [--sources data/interim/documents.jsonl ../shared/datasets/alqac2023/corpus.jsonl] [--keep]

For each size it writes a corpus with benchmarks/make_corpus.py (seed 0, 3,000 planted questions), makes a DVC
project beside it (this repo's dvc.yaml, stages/, src/ and params.yaml, with `ingest:` pointed at the corpus and
`negatives.dense: off`: dense mining is measured by its own benchmark), and runs each data stage with
`dvc repro --single-item STAGE`, as a user's `dvc repro` would (DVC's hashing and caching of the outputs are part of
the cost). Per stage: wall time, CPU seconds, documents/s and peak RSS (CPU and RSS of the stage's whole process
tree, from wait4). Then the no-op `dvc repro negatives` (best of 3) and the disk taken by the outputs.

The issue's goals at 1,875,511 documents on this 2-core machine: data stages ≤ 15 min in all, peak RSS ≤ 8 GB in any
stage, no-op repro ≤ 5 s. Writes metrics/benchmarks/scale_data.json (one row per size, the curve) and prints each
stage's line as it finishes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from cpu_bf16 import cpu_facts  # this VM is not always the same CPU (this script's folder)

from ragtune.plan import cold_cache_env, run_measured  # wall, peak RSS and CPU of a process tree (wait4)

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("ingest", "chunk", "bm25", "questions", "pairs", "negatives")
GOALS = {"data_stages_s": 900, "peak_rss_mib": 8 * 1024, "noop_repro_s": 5}


def make_corpus(docs: int, sources: list[Path], out: Path) -> dict[str, Any]:
    """The corpus of ``docs`` documents (reused when its manifest says it was made with the same arguments)."""
    manifest = out / "manifest.json"
    if manifest.exists():
        made = json.loads(manifest.read_text(encoding="utf-8"))
        if made.get("docs") == docs and made.get("seed") == 0:
            return made
    cmd = [sys.executable, str(ROOT / "benchmarks/make_corpus.py"), "--docs", str(docs), "--seed", "0"]
    cmd += ["--out", str(out), "--sources", *map(str, sources)]
    subprocess.run(cmd, check=True, cwd=ROOT)
    return json.loads(manifest.read_text(encoding="utf-8"))


def make_project(project: Path, corpus: Path) -> None:
    """A fresh DVC project (no git) running this repo's stages on ``corpus``."""
    if project.exists():
        shutil.rmtree(project)
    project.mkdir(parents=True)
    for name in ("dvc.yaml", "stages", "src"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, project / name)
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["ingest"] |= {
        "root": str(corpus),
        "documents": [{"path": "corpus.jsonl"}],
        "queries": [
            {"path": "questions.jsonl", "columns": {"id": "id", "query": "query", "positives": "positive_ids"}}
        ],
    }
    params["negatives"]["dense"] = "off"  # measured apart (dense encoding throughput); auto would decide by size
    (project / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True, sort_keys=False), encoding="utf-8")
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=project, check=True)


def measure(docs: int, args: argparse.Namespace) -> dict[str, Any]:
    corpus, project = args.work / f"corpus-{docs}", args.work / f"project-{docs}"
    made = make_corpus(docs, args.sources, corpus)
    make_project(project, corpus)
    # an empty embedding cache, as on a user's first run: pairs' alignment encodes its passages (vectors left by an
    # earlier run of the same corpus made pairs look 4× faster at 100k)
    env = cold_cache_env(project / ".cache") | {"COLUMNS": "400", "PYTHONPATH": str(project / "src")}
    dvc = [sys.executable, "-m", "dvc"]
    stages = {}
    for name in STAGES:
        measured, out = run_measured([*dvc, "repro", "--single-item", name], project, env)
        wall, rss, cpu = measured.wall_s, measured.rss_mib, measured.cpu_s
        line = next((ln.strip() for ln in out.splitlines() if ln.lstrip().startswith(f"[{name}]")), "")
        stages[name] = {
            "seconds": round(wall, 1),
            "cpu_seconds": round(cpu, 1),
            "docs_per_s": round(docs / wall, 1),
            "peak_rss_mib": round(rss),
        }
        print(
            f"{docs:>9} docs {name:<10} {wall:8.1f} s {cpu:8.1f} cpu-s {docs / wall:9.1f} docs/s {rss:6.0f} MiB {line}",
            flush=True,
        )
    noop = min(run_measured([*dvc, "repro", "negatives"], project, env)[0].wall_s for _ in range(3))
    outputs = [p for p in (project / "data").rglob("*") if p.is_file()]
    row = {
        "docs": docs,
        "corpus_bytes": (corpus / "corpus.jsonl").stat().st_size,
        "corpus_mean_chars": made["chars"]["mean"],
        "stages": stages,
        "data_stages_s": round(sum(s["seconds"] for s in stages.values()), 1),
        "data_stages_cpu_s": round(sum(s["cpu_seconds"] for s in stages.values()), 1),
        "peak_rss_mib": max(s["peak_rss_mib"] for s in stages.values()),
        "noop_repro_s": round(noop, 2),
        "output_bytes": sum(p.stat().st_size for p in outputs),
        "chunks": _read(project / "metrics" / "chunk.json").get("chunks"),
        "ingest_quarantined": _read(project / "metrics" / "ingest.json").get("documents", {}).get("quarantined"),
    }
    if not args.keep:
        shutil.rmtree(project)
    return row


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", default="10000,100000", help="comma-separated corpus sizes")
    ap.add_argument("--work", type=Path, default=Path("/tmp/ragtune-scale"), help="corpora and projects (not the repo)")
    ap.add_argument("--sources", nargs="+", type=Path, default=[ROOT / "data/interim/documents.jsonl"])
    ap.add_argument("--keep", action="store_true", help="keep each size's DVC project (outputs, cache)")
    ap.add_argument("--out", type=Path, default=ROOT / "metrics/benchmarks/scale_data.json")
    args = ap.parse_args(argv)
    args.sources = [p.resolve() for p in args.sources]  # make_corpus runs from the repo root
    missing = [str(p) for p in args.sources if not p.is_file()]
    if missing:  # before hours of measuring, not after the first size
        raise SystemExit(f"--sources: no such file: {', '.join(missing)} (run the pipeline on the sample first)")
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True)
    for n in args.docs.split(","):  # each size's row is written when it is measured: a later failure keeps it
        rows = save_row(args.out, measure(int(n), args) | {"commit": commit.stdout.strip()})
    print(json.dumps([{k: r[k] for k in ("docs", "data_stages_s", "peak_rss_mib", "noop_repro_s")} for r in rows]))


def save_row(out: Path, row: dict[str, Any]) -> list[dict[str, Any]]:
    """Add ``row`` to ``out``, replacing the row of the same size: a curve is built a size at a time."""
    rows = json.loads(out.read_text(encoding="utf-8"))["rows"] if out.exists() else []
    rows = sorted([r for r in rows if r["docs"] != row["docs"]] + [row], key=lambda r: r["docs"])
    result = {
        "machine": (
            f"{platform.machine()}, {os.cpu_count()} cores, {cpu_facts()['model']}, Python {platform.python_version()}"
        ),
        "protocol": "benchmarks/make_corpus.py --seed 0 corpus per size; dvc repro --single-item per data stage in a "
        "fresh DVC project (negatives.dense off); wall time and peak RSS of each stage's process tree",
        "goals_at_1875511_docs": GOALS,
        "rows": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, ensure_ascii=False, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return rows


if __name__ == "__main__":
    main()
