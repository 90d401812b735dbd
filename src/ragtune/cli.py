"""The ``ragtune`` command: search your corpus with the models the pipeline trained.

    ragtune search "Nhân viên được nghỉ phép bao nhiêu ngày?" --k 5
    ragtune search "..." --json            # for scripts
    ragtune search "..." --pipeline ft_dense   # override the pipeline evaluate chose on dev
    ragtune search "..." --access-level internal --filter department=HR --filter tags=vpn
    ragtune compare                            # base-model bake-off: one row per DVC experiment
    ragtune serve --port 8000                  # HTTP API: /v1/embeddings, /v1/rerank, /v1/search (docs/serving.md)
    ragtune reindex --out vectors.parquet      # every chunk with its new vector, for your vector store
    ragtune plan                               # before a long run: each stage's time and memory, from a probe

It works offline from the repository's ``models/`` folder alone (index, embedder, reranker, pipeline.json).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

from ragtune.access import FILTER_FIELDS, AccessError, FilterError
from ragtune.paths import Paths
from ragtune.search import Pipeline, Searcher, SearchSetupError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ragtune", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("search", help="retrieve (and rerank) passages for a question")
    s.add_argument("query", help="the question, in quotes")
    s.add_argument("--k", type=int, default=5, help="how many passages to show (default 5)")
    s.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    s.add_argument(
        "--pipeline",
        help="ft_dense | ft_hybrid | bm25, optionally +rerank (default: the one evaluate chose on dev, "
        f"from {Paths().pipeline})",
    )
    s.add_argument(
        "--access-level",
        help="the caller's access level: passages above it are never searched (default: the lowest level of the "
        "index's scale, params.yaml access.levels)",
    )
    s.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help=f"keep passages whose FIELD ({', '.join(FILTER_FIELDS)}) has VALUE; repeat it: values of one field "
        "are any-of, different fields all apply",
    )
    s.add_argument("--root", default=".", help="repository root holding models/ (default: current folder)")
    c = sub.add_parser("compare", help="one table of quality, speed and memory across DVC experiments (bake-off)")
    c.add_argument("--system", default="ft_dense", help="which dense system to show: ft_dense (default) or base_dense")
    c.add_argument("--json-file", help="read `dvc exp show --json` output from this file instead of running it")
    v = sub.add_parser("serve", help="serve the embedder, reranker and pipeline over HTTP (docs/serving.md)")
    v.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1: this machine only)")
    v.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    v.add_argument("--root", default=".", help="repository root holding models/ and metrics/ (default: current folder)")
    v.add_argument("--pipeline", help="serve this pipeline instead of the one evaluate chose on dev")
    v.add_argument("--log-level", default="info", help="uvicorn's log level (default info)")
    x = sub.add_parser("reindex", help="write every chunk with its vector for a vector store (docs/serving.md)")
    x.add_argument("--out", required=True, help="output file, *.parquet or *.jsonl (a manifest is written beside it)")
    x.add_argument("--format", choices=("parquet", "jsonl"), help="output format (default: from --out's suffix)")
    x.add_argument(
        "--chunks",
        help="embed these chunks instead of the index's (JSONL: chunk_id and text per line; other fields carried)",
    )
    x.add_argument("--root", default=".", help="repository root holding models/ (default: current folder)")
    pl = sub.add_parser("plan", help="price a full `dvc repro` on this machine from a short probe (docs/scale.md)")
    from ragtune.plan import add_arguments

    add_arguments(pl)
    from ragtune.serve.limits import Limits

    for f in fields(Limits):  # one option per limit; the defaults stay in Limits
        v.add_argument(
            "--" + f.name.replace("_", "-"), type=int, default=None, help=f"default {getattr(Limits(), f.name)}"
        )
    return parser


def _serve(args: argparse.Namespace) -> int:
    """Load the models once, then answer HTTP requests until interrupted."""
    os.environ.setdefault("RAGTUNE_QUIET", "1")  # a progress bar per request is noise in a server's log
    import uvicorn

    from ragtune.serve.app import create_app
    from ragtune.serve.limits import Limits
    from ragtune.serve.service import Service

    paths = Paths(Path(args.root))
    try:
        limits = Limits().with_overrides(**{f.name: getattr(args, f.name) for f in fields(Limits)})
        chosen = Pipeline.load(paths.pipeline)
        pipeline = Pipeline.parse(args.pipeline, chosen) if args.pipeline else chosen
        service = Service.load(paths, pipeline)
    except (SearchSetupError, ValueError) as exc:
        print(f"ragtune serve: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(create_app(service, limits), host=args.host, port=args.port, log_level=args.log_level)
    return 0


def _reindex(args: argparse.Namespace) -> int:
    from ragtune.io import JsonlError
    from ragtune.reindex import ReindexError, export_vectors

    paths = Paths(Path(args.root))
    try:
        done = export_vectors(paths.index, args.out, fmt=args.format, chunks_file=args.chunks)
    except (SearchSetupError, ReindexError, JsonlError) as exc:
        print(f"ragtune reindex: {exc}", file=sys.stderr)
        return 2
    print(
        f"[reindex] read {args.chunks or paths.index} → wrote {done.out} ({done.rows} × {done.dim} vectors, "
        f"embedder {done.fingerprint[:12]}) and {done.manifest}"
    )
    return 0


def _compare(args: argparse.Namespace) -> int:
    from ragtune.evaluation.bakeoff import compare_rows, experiments_from_dvc, render_table

    if args.json_file:
        raw = Path(args.json_file).read_text(encoding="utf-8")
    else:
        proc = subprocess.run(["dvc", "exp", "show", "--json"], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            print(f"ragtune compare: `dvc exp show --json` failed:\n{proc.stderr[-1500:]}", file=sys.stderr)
            return 2
        raw = proc.stdout
    rows = compare_rows(experiments_from_dvc(json.loads(raw)), system=args.system)
    if not rows:
        print("ragtune compare: no experiments with metrics yet (run `dvc exp run` first)", file=sys.stderr)
        return 2
    print(render_table(rows))
    return 0


def _print_table(
    query: str, results: list[dict], searcher: Searcher, level: str, filters: dict[str, list[str]] | None
) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    p = searcher.pipeline
    table = Table(title=f"[bold]{query}[/]", show_lines=True)
    table.add_column("#", justify="right")
    table.add_column("document")
    table.add_column("passage", ratio=3)
    table.add_column("scores", justify="right")
    for r in results:
        meta = ", ".join(f"{k}: {v}" for k, v in r["metadata"].items() if v not in ("", None, []))
        doc = f"[bold]{r['title'] or r['doc_id']}[/]\n[dim]{r['doc_id']}[/]" + (f"\n[dim]{meta}[/]" if meta else "")
        text = r["text"] if len(r["text"]) <= 400 else r["text"][:400] + "…"
        scores = "\n".join(f"{k} {v:.3f}" for k, v in r["scores"].items() if v is not None)
        table.add_row(str(r["rank"]), doc, text, scores)
    console.print(table)
    t = searcher.timings
    console.print(
        f"[dim]pipeline {p.name}"
        + (f" (rerank top {p.rerank_k}, fusion weight {p.fusion_weight})" if p.rerank else "")
        + f" · access level {level}"
        + "".join(f" · {k} = {' | '.join(v)}" for k, v in (filters or {}).items())
        + f" · load {searcher.load_seconds:.2f}s · query {t['total_s'] * 1000:.0f} ms[/]"
    )


def _filters(items: list[str]) -> dict[str, list[str]] | None:
    """``["tags=a", "tags=b", "department=HR"]`` → ``{"tags": ["a", "b"], "department": ["HR"]}``."""
    out: dict[str, list[str]] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise FilterError("", f"--filter {item!r} is not FIELD=VALUE, e.g. --filter department=HR")
        out.setdefault(name.strip(), []).append(value.strip())
    return out or None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "compare":
        return _compare(args)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.command == "serve":
        return _serve(args)
    if args.command == "reindex":
        return _reindex(args)
    if args.command == "plan":
        from ragtune.plan import run

        return run(args)
    root = Path(args.root)
    try:
        paths = Paths(root)
        chosen = Pipeline.load(paths.pipeline)
        pipeline = Pipeline.parse(args.pipeline, chosen) if args.pipeline else chosen
        searcher = Searcher.load(paths.index, pipeline, reranker_dir=paths.reranker)
        filters = _filters(args.filter)
        searcher.prepare(args.access_level)  # checks the level; fits its BM25 as part of the load
        results = searcher.search(args.query, k=args.k, access_level=args.access_level, filters=filters)
    except (SearchSetupError, AccessError, FilterError) as exc:
        print(f"ragtune search: {exc}", file=sys.stderr)
        return 2
    level = searcher.access.name(args.access_level)
    if args.json:
        payload = {
            "query": args.query,
            "pipeline": searcher.pipeline.name,
            "access_level": level,
            "filters": filters or {},
            "fusion_weight": searcher.pipeline.fusion_weight if searcher.pipeline.rerank else None,
            "timings": {k: round(v, 4) for k, v in searcher.timings.items()},
            "results": results,
        }
        print(json.dumps(payload, ensure_ascii=False, indent=2))
    else:
        _print_table(args.query, results, searcher, level, filters)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
