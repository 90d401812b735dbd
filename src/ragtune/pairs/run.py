"""The pairs stage: labeled queries → train/dev/test splits with aligned positive chunks, plus synthetic pairs."""

from __future__ import annotations

from typing import Any

from ragtune.console import warn
from ragtune.io import read_jsonl, read_nonempty_jsonl, write_json, write_jsonl
from ragtune.pairs.align import positive_chunks
from ragtune.pairs.checks import validate
from ragtune.pairs.split import SPLITS, split_queries
from ragtune.pairs.synthetic import training_synthetic
from ragtune.paths import Paths


def run_pairs(
    pairs_params: dict[str, Any], model_params: dict[str, Any], bm25_params: dict[str, Any], paths: Paths
) -> dict[str, str]:
    """Read ingest's queries and documents and the chunks, write the splits, synthetic pairs, quarantine and
    ``metrics/pairs.json``; returns the stage summary (``read``, ``wrote``).

    The stage's previous outputs are removed first and nothing is written until :func:`validate` has passed: after
    a refused (leaked) split no pair file is on disk, neither a new one nor a stale one from an earlier run that a
    training stage run by hand could take for this run's (``dvc repro`` removes a stage's outputs before it runs too).
    """
    outputs = [*(paths.split(name) for name in SPLITS), paths.synthetic, paths.pairs_quarantine, paths.metrics("pairs")]
    for path in outputs:
        path.unlink(missing_ok=True)
    docs = read_nonempty_jsonl(paths.documents, "Run the ingest stage first; it fails when it keeps no document.")
    queries = read_jsonl(paths.queries)  # may be empty: without labeled questions, pairs are synthetic only
    chunks = read_nonempty_jsonl(paths.chunks, "Run the chunk stage first.")

    plan = split_queries(
        queries, float(pairs_params["dev_ratio"]), float(pairs_params["test_ratio"]), int(pairs_params["seed"])
    )
    aligned = positive_chunks(queries, chunks, model_params, bm25_params)
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
    synthetic, syn_counts = training_synthetic(docs, chunks, splits, pairs_params)

    # The leak check raises before anything is written: a leaked split never reaches the training stages.
    report = validate(splits, synthetic, {c["chunk_id"]: c for c in chunks}, {d["doc_id"]: d for d in docs})
    report["synthetic"]["by_kind_and_drops"] = dict(sorted(syn_counts.items()))
    report["split_sources"] = plan.sources
    report["quarantined"] = plan.quarantined
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
    return {
        "read": f"{len(queries)} labeled queries, {len(chunks)} chunks",
        "wrote": f"train {len(splits['train'])} / dev {len(splits['dev'])} / test {len(splits['test'])} "
        f"labeled + {len(synthetic)} synthetic pairs",
    }
