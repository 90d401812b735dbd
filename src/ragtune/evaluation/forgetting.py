"""The forgetting check: does the shipped embedder still retrieve well *outside* the corpus it was tuned on?

Fine-tuning on a few hundred questions teaches the task and can cost quality elsewhere: a probe tuned on one
Vietnamese FAQ corpus lost 3.3 MRR@10 points on a medical QA set. A RAG team that later adds documents of another
kind inherits that loss silently. So evaluate scores the base and the shipped embedder on each labeled set named
in ``evaluate.out_of_domain`` (a corpus plus questions, in any format ingest reads), reports the change with a
paired-bootstrap interval, and warns when NDCG@10 drops by more than ``max_drop`` (1 point by default).

Each set is an ingest config file (the ``ingest:`` section of params.yaml, ``root`` relative to the file), read
and chunked exactly as the pipeline reads and chunks its own corpus. Every question of the set is held out from
training by construction, so all of them count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragtune.evaluation.metrics import dense_doc_metrics, paired_bootstrap
from ragtune.retrieval import DenseIndex, Embedder

MAX_DROP = 0.01  # NDCG@10 (1 point): a larger drop is a warning in metrics and the report


@dataclass
class OutOfDomainSet:
    name: str
    chunks: list[dict[str, Any]]
    queries: list[dict[str, Any]]


def load_set(spec: dict[str, Any], chunker: Any, in_domain_root: str | Path) -> OutOfDomainSet | str:
    """Read and chunk one ``{"name", "ingest": <file>}`` set; a string says why the set was skipped instead."""
    from ragtune.chunking import chunk_corpus
    from ragtune.ingest import ingest, load_config
    from ragtune.params import ParamsError, read_yaml

    name, path = str(spec["name"]), Path(spec["ingest"])
    if not path.is_file():
        raise ParamsError(
            f"params.yaml evaluate.out_of_domain[{name}]: ingest file {path} not found. It holds an `ingest:`-style "
            "section (root, documents, queries) with root relative to the file's folder."
        )
    section = read_yaml(path)  # a YAML mistake in the set's file names its line, as in params.yaml
    section = section.get("ingest", section)
    root = (path.parent / str(section.get("root", "."))).resolve()
    if root == Path(in_domain_root).resolve():
        return f"{name}: the same folder as ingest.root, so it is in domain, not out of it"
    result = ingest(load_config(section, repo=path.parent))
    if not result.queries:
        return f"{name}: no labeled questions were kept from {path}"
    return OutOfDomainSet(name, chunk_corpus(result.documents, chunker), result.queries)


def score_set(data: OutOfDomainSet, embedder: Embedder, depth: int = 100) -> dict[str, dict[str, float]]:
    """Per-query document-level metrics at 10 (ndcg, mrr, …) of dense retrieval over one set's chunks."""
    index = DenseIndex([c["chunk_id"] for c in data.chunks], embedder.encode_passages([c["text"] for c in data.chunks]))
    chunk_to_doc = {c["chunk_id"]: c["doc_id"] for c in data.chunks}
    return dense_doc_metrics(index, embedder.encode_queries, data.queries, chunk_to_doc, depth)


def forgetting_report(
    sets: Sequence[OutOfDomainSet | str], base: Embedder, shipped: Embedder, max_drop: float = MAX_DROP
) -> tuple[dict[str, Any], list[str]]:
    """``({set: {"base", "shipped", "change", "ci_low", "ci_high", "n_queries", "mrr@10": {...}} | {"skipped"}},
    warnings)``: the shipped embedder against its base on each out-of-domain set."""
    report: dict[str, Any] = {}
    warnings: list[str] = []
    for data in sets:
        if isinstance(data, str):
            name, _, why = data.partition(": ")
            report[name] = {"skipped": why}
            continue
        before, after = score_set(data, base), score_set(data, shipped)
        g = paired_bootstrap(after, before)  # ndcg@10

        def mean(per_query: dict[str, dict[str, float]], metric: str) -> float:
            return round(sum(m[metric] for m in per_query.values()) / len(per_query), 4)

        entry = {
            "base_ndcg@10": mean(before, "ndcg@10"),
            "shipped_ndcg@10": mean(after, "ndcg@10"),
            "change": g["gain"],
            "ci_low": g["ci_low"],
            "ci_high": g["ci_high"],
            "base_mrr@10": mean(before, "mrr@10"),
            "shipped_mrr@10": mean(after, "mrr@10"),
            "n_queries": len(before),
            "n_chunks": len(data.chunks),
        }
        report[data.name] = entry
        if -entry["change"] > max_drop:
            warnings.append(
                f"forgetting: on the out-of-domain set {data.name!r} the shipped embedder scores NDCG@10 "
                f"{entry['shipped_ndcg@10']:.4f} against its base model's {entry['base_ndcg@10']:.4f} "
                f"({100 * entry['change']:+.1f} pts, 95% interval [{100 * g['ci_low']:+.1f}, {100 * g['ci_high']:+.1f}]"
                f"): fine-tuning cost quality outside your corpus (try train_embedder.merge_alpha lower, e.g. 0.3)"
            )
    return report, warnings
