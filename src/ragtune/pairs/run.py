"""The pairs stage: labeled queries → train/dev/test splits with aligned positive chunks, plus synthetic pairs
(self-supervised and LLM-generated, :mod:`~ragtune.pairs.generated`)."""

from __future__ import annotations

from typing import Any

from ragtune.console import warn
from ragtune.io import iter_jsonl, read_jsonl, require_records, write_json, write_jsonl
from ragtune.pairs.align import positive_chunks
from ragtune.pairs.checks import validate
from ragtune.pairs.corpus import ChunkSlice
from ragtune.pairs.generated import describe_generated, mix_generated, read_generated, split_source
from ragtune.pairs.split import SPLITS, split_queries
from ragtune.pairs.synthetic import training_synthetic, use_synthetic
from ragtune.paths import Paths
from ragtune.retrieval import load_bm25_counts


def run_pairs(
    pairs_params: dict[str, Any],
    model_params: dict[str, Any],
    bm25_params: dict[str, Any],
    paths: Paths,
) -> dict[str, str]:
    """Read ingest's queries and documents, the chunks and the generated questions, write the splits, synthetic
    pairs, quarantine and ``metrics/pairs.json``; returns the stage summary (``read``, ``wrote``).

    ``pairs_params["generated"]`` says how generated questions join (:func:`~ragtune.pairs.generated.mix_generated`).
    A labeled dev or test split that comes out empty is filled with the generated questions of held-out chunks.

    The stage's previous outputs are removed first and nothing is written until :func:`validate` has passed: after
    a refused (leaked) split no pair file is on disk, neither a new one nor a stale one from an earlier run that a
    training stage run by hand could take for this run's (``dvc repro`` removes a stage's outputs before it runs too).
    """
    outputs = [*(paths.split(name) for name in SPLITS), paths.synthetic, paths.pairs_quarantine, paths.metrics("pairs")]
    for path in outputs:
        path.unlink(missing_ok=True)
    require_records(paths.documents, "Run the ingest stage first; it fails when it keeps no document.")
    require_records(paths.chunks, "Run the chunk stage first.")
    queries = read_jsonl(paths.queries)  # may be empty: without labeled questions, pairs are synthetic only
    generated = read_generated(paths.questions)

    plan = split_queries(
        queries, float(pairs_params["dev_ratio"]), float(pairs_params["test_ratio"]), int(pairs_params["seed"])
    )
    syn_p = pairs_params["synthetic"]
    # Self-supervised pairs are drawn from every document; otherwise only the chunks and documents that questions
    # name are held (a corpus of 1.8 million chunks is streamed past, not loaded).
    every_chunk = use_synthetic(syn_p["enabled"], len(plan.splits["train"]), int(syn_p["min_labeled_train"]))
    if every_chunk:
        docs = read_jsonl(paths.documents)
        chunks = ChunkSlice.whole(read_jsonl(paths.chunks))
    else:
        named_docs = {d for q in queries for d in q["positive_doc_ids"]}
        named_chunks = {q["chunk_id"] for q in generated}
        chunks = ChunkSlice.read(paths.chunks, lambda c: c["doc_id"] in named_docs or c["chunk_id"] in named_chunks)
    counts = load_bm25_counts(paths.bm25_counts, paths.chunks, bm25_params, chunks.n_chunks)
    aligned = positive_chunks(queries, chunks, model_params, bm25_params, counts)
    by_qid = {q["query_id"]: a for q, a in zip(queries, aligned, strict=True)}
    splits = {
        name: [
            {
                "query_id": q["query_id"],
                "query": q["query"],
                "positive_doc_ids": q["positive_doc_ids"],
                "positive_chunk_ids": by_qid[q["query_id"]],
                "split": name,
            }
            for q in plan.splits[name]
        ]
        for name in SPLITS
    }
    n_labeled = {name: len(rows) for name, rows in splits.items()}
    chunk_docs = {c["chunk_id"]: c["doc_id"] for c in chunks.records}
    mixed = mix_generated(generated, splits, chunk_docs, pairs_params, paths.questions)
    splits.update(mixed.heldout)
    synthetic: list[dict[str, Any]] = []
    syn_counts: dict[str, int] = {}
    if every_chunk:
        synthetic, syn_counts = training_synthetic(docs, chunks.records, splits, pairs_params, mixed.held_out_chunks)
    mixed.counts["dropped_self_supervised_from_held_out_chunks"] = syn_counts.get("dropped_from_held_out_chunk", 0)
    n_self_supervised = len(synthetic)
    synthetic += mixed.train
    if not every_chunk:  # the documents the checks below look up: every pair's positives
        named = {
            d for pair in [*synthetic, *(q for rows in splits.values() for q in rows)] for d in pair["positive_doc_ids"]
        }
        docs = [doc for _, doc in iter_jsonl(paths.documents) if doc["doc_id"] in named]

    # The leak check raises before anything is written: a leaked split never reaches the training stages.
    report = validate(splits, synthetic, chunks.by_id(), {d["doc_id"]: d for d in docs})
    report["synthetic"]["by_kind_and_drops"] = dict(sorted(syn_counts.items()))
    report["split_sources"] = plan.sources
    report["quarantined"] = plan.quarantined
    report["generated"] = mixed.counts
    for name in ("dev", "test"):
        report[f"{name}_source"] = split_source(n_labeled[name], mixed, name)
    for name in SPLITS:
        write_jsonl(paths.split(name), splits[name])
    write_jsonl(paths.synthetic, synthetic)
    write_jsonl(paths.pairs_quarantine, plan.quarantine)
    write_json(paths.metrics("pairs"), report)

    if plan.quarantine:
        reasons = ", ".join(f"{r} {n}" for r, n in plan.quarantined.items() if n)
        warn(
            f"{len(plan.quarantine)} question(s) share their text with a fixed held-out question and were left out "
            f"of their split ({reasons}); see {paths.pairs_quarantine}"
        )
    carved = plan.sources["dev"]["carved_from_train"]
    if carved:
        warn(f"no question is fixed to dev: {carved} fixed-train question(s) were moved to dev (pairs.dev_ratio)")
    if not splits["dev"] and float(pairs_params["dev_ratio"]) > 0:
        warn("dev is empty: nothing can check the fine-tune; fix some questions to dev or add training questions")
    wrote = (
        f"train {n_labeled['train']} / dev {n_labeled['dev']} / test {n_labeled['test']} "
        f"labeled + {n_self_supervised} synthetic pairs"
    )
    return {
        "read": f"{len(queries)} labeled queries, {chunks.n_chunks} chunks"
        + (f", {len(generated)} generated questions" if generated else ""),
        "wrote": wrote + describe_generated(mixed) if generated else wrote,
    }
