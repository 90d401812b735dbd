"""What an id used as a title costs retrieval: ALQAC read without `title_format`, chunked three ways.

Usage (repo root, venv active; the ALQAC files in ../shared/datasets/alqac2023):
    python benchmarks/id_titles.py [--params examples/alqac2023.params.yaml] [--out metrics/benchmarks/id_titles.json]

Why: a table with only an id and a text column used to be titled by its id, and the chunker prepends titles, so
every chunk embedded as "<id>\\n<text>". ALQAC is such a corpus for 362 of its 2,249 articles (no short first line
to serve as a title), with ids such as "Luật Đất đai@15" that mean nothing to a reader of the question. The base
model (no training, so every one of the labeled questions counts) and BM25 score three chunkings of the same
documents:

- `title_format`: the worked example's titles ("{law_id}, Điều {article_id}: {title}"), for reference;
- `no title (now)`: no `title_format`; the 362 untitled articles are chunked without a title, as ingest does now;
- `id as title (before)`: the same, but those 362 get their id as the title, as ingest did before.

Writes document-level NDCG@10 / MRR@10 / hit@1 per variant and retriever, and the paired-bootstrap change of
"before" against "now" (then `python benchmarks/report.py` renders it into docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
from pathlib import Path
from typing import Any

import torch
import yaml

from ragtune.chunking import build_chunker, chunk_corpus
from ragtune.evaluation.metrics import evaluate_ranking, paired_bootstrap
from ragtune.ingest import ingest, load_config
from ragtune.io import write_json
from ragtune.retrieval import DenseIndex, build_bm25, load_dense, to_doc_ranking


def read_corpus(params: dict[str, Any], params_path: Path, title_format: bool) -> tuple[list[dict], list[dict]]:
    """The documents and labeled questions of ``params``'s ingest section, with or without its title_format."""
    section = copy.deepcopy(params["ingest"])
    if not title_format:
        for source in section["documents"]:
            source.pop("title_format", None)
    result = ingest(load_config(section, repo=params_path.parent.parent))
    return result.documents, result.queries


def id_titled(documents: list[dict]) -> tuple[list[dict], int]:
    """The documents as ingest titled them before: an untitled document takes its id as its title."""
    out = [{**d, "title": d["title"] or d["doc_id"]} for d in documents]
    return out, sum(1 for d in documents if not d["title"])


def chunk_with_titles(documents: list[dict], chunker: Any) -> list[dict]:
    """Chunks with every title prepended, the id-titles too (the chunker now refuses a title equal to the doc id,
    so such documents are chunked under a stand-in id and given theirs back)."""
    chunks: list[dict] = []
    for d in documents:
        for c in chunker.chunk_document("\x00" + d["doc_id"], d["title"], d["text"]):
            rec = c.to_record()
            chunks.append({**rec, "doc_id": d["doc_id"], "chunk_id": rec["chunk_id"].replace("\x00", "", 1)})
    return chunks


def per_query(chunks: list[dict], queries: list[dict], dense: Any, bm25_params: dict) -> dict[str, dict]:
    """Per-query document-level metrics at 10 for the base dense model and BM25 over ``chunks``."""
    qids = [q["query_id"] for q in queries]
    qrels = {q["query_id"]: set(q["positive_doc_ids"]) for q in queries}
    chunk_to_doc = {c["chunk_id"]: c["doc_id"] for c in chunks}
    index = DenseIndex([c["chunk_id"] for c in chunks], dense.encode_passages([c["text"] for c in chunks]))
    rankings = {
        "dense (base)": index.search_vectors(qids, dense.encode_queries([q["query"] for q in queries]), 100),
        "bm25": build_bm25(chunks, bm25_params).search({q["query_id"]: q["query"] for q in queries}, 100),
    }
    return {name: evaluate_ranking(to_doc_ranking(r, chunk_to_doc), qrels, [1, 10])[1] for name, r in rankings.items()}


def mean(scores: dict[str, dict[str, float]], metric: str) -> float:
    return round(sum(m[metric] for m in scores.values()) / len(scores), 4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="examples/alqac2023.params.yaml")
    ap.add_argument("--out", default="metrics/benchmarks/id_titles.json")
    args = ap.parse_args()
    params_path = Path(args.params)
    params = yaml.safe_load(params_path.read_text(encoding="utf-8"))
    chunker = build_chunker(params["model"], params["chunk"])
    dense = load_dense(params["model"])

    with_format, queries = read_corpus(params, params_path, title_format=True)
    plain, _ = read_corpus(params, params_path, title_format=False)
    before, n_untitled = id_titled(plain)
    variants = {
        "title_format": chunk_corpus(with_format, chunker),
        "no title (now)": chunk_corpus(plain, chunker),
        "id as title (before)": chunk_with_titles(before, chunker),
    }
    scores = {name: per_query(chunks, queries, dense, params["bm25"]) for name, chunks in variants.items()}
    result: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, CPU",
        "corpus": f"{params['ingest']['root']}: {len(plain)} documents, {n_untitled} without a title, "
        f"{len(queries)} labeled questions (all scored: nothing is trained)",
        "model": params["model"]["embedder"],
        "variants": {},
    }
    for name, chunks in variants.items():
        result["variants"][name] = {
            "chunks": len(chunks),
            **{
                retriever: {m: mean(pq, m) for m in ("ndcg@10", "mrr@10", "hit@1")}
                for retriever, pq in scores[name].items()
            },
        }
    result["before_minus_now"] = {
        retriever: paired_bootstrap(scores["id as title (before)"][retriever], scores["no title (now)"][retriever])
        for retriever in scores["no title (now)"]
    }
    write_json(args.out, result)
    for name, row in result["variants"].items():
        cells = "  ".join(f"{r}: ndcg@10 {row[r]['ndcg@10']:.4f} mrr@10 {row[r]['mrr@10']:.4f}" for r in scores[name])
        print(f"{name:22s} {row['chunks']} chunks  {cells}")
    for retriever, g in result["before_minus_now"].items():
        print(
            f"id as title − no title, {retriever}: {100 * g['gain']:+.1f} pts [{100 * g['ci_low']:+.1f}, "
            f"{100 * g['ci_high']:+.1f}]"
        )


if __name__ == "__main__":
    main()
