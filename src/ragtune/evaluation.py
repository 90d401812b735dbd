"""Held-out evaluation: score every system on the same queries, at document and chunk level, and report.

Systems are chunk rankings (see :mod:`ragtune.retrieval`). Document-level scores are the headline because labels
are per document; chunk-level scores use the aligned positive chunk (see :func:`ragtune.pairs.align_positive_chunks`)
and show what a RAG prompt would actually receive.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ragtune.metrics import evaluate_ranking
from ragtune.retrieval import Ranking, to_doc_ranking

HEADLINE = ("ndcg@10", "mrr@10", "map@10", "recall@1", "recall@5", "recall@10", "hit@1", "hit@10")


def score_systems(
    systems: dict[str, Ranking],
    queries: Sequence[dict[str, Any]],
    chunk_to_doc: dict[str, str],
    ks: Sequence[int],
) -> dict[str, Any]:
    """Mean and per-query metrics per system at both levels: ``{"doc": {...}, "chunk": {...}, "per_query": ...}``."""
    doc_qrels = {q["query_id"]: set(q["positive_doc_ids"]) for q in queries}
    chunk_qrels = {q["query_id"]: set(q["positive_chunk_ids"]) for q in queries if q["positive_chunk_ids"]}
    out: dict[str, Any] = {"doc": {}, "chunk": {}, "per_query": {}, "doc_rankings": {}}
    for name, ranking in systems.items():
        doc_ranking = to_doc_ranking(ranking, chunk_to_doc)
        out["doc"][name], per_q = evaluate_ranking(doc_ranking, doc_qrels, ks)
        out["chunk"][name], _ = evaluate_ranking(ranking, chunk_qrels, ks)
        out["per_query"][name] = per_q
        out["doc_rankings"][name] = doc_ranking
    return out


def paired_bootstrap(
    system: dict[str, dict[str, float]],
    baseline: dict[str, dict[str, float]],
    metric: str = "ndcg@10",
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, float]:
    """Mean per-query gain of ``system`` over ``baseline`` and its 95% paired-bootstrap interval.

    Why: the sample has 77 test queries; one query moving from rank 1 to rank 2 shifts NDCG@10 by ~0.5 point. A
    gain whose interval includes 0 is not evidence of anything, and the report must say so next to the number.
    """
    import numpy as np

    qids = sorted(set(system) & set(baseline))
    if not qids:
        return {"gain": 0.0, "ci_low": 0.0, "ci_high": 0.0, "n_queries": 0}
    diff = np.array([system[q].get(metric, 0.0) - baseline[q].get(metric, 0.0) for q in qids])
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(n_resamples, len(diff)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {
        "gain": round(float(diff.mean()), 4),
        "ci_low": round(float(low), 4),
        "ci_high": round(float(high), 4),
        "n_queries": len(qids),
    }


def recall_curve(
    doc_rankings: dict[str, Ranking], queries: Sequence[dict[str, Any]], ks: Sequence[int]
) -> list[dict[str, Any]]:
    """Rows ``{"k": k, <system>: recall@k, ...}`` for the recall@k plot declared in dvc.yaml."""
    qrels = {q["query_id"]: set(q["positive_doc_ids"]) for q in queries}
    rows = [{"k": k} for k in ks]
    for name, ranking in doc_rankings.items():
        mean, _ = evaluate_ranking(ranking, qrels, ks)
        for row in rows:
            row[name] = mean[f"recall@{row['k']}"]
    return rows


def write_curve_csv(path: str | Path, rows: list[dict[str, Any]]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0].keys()), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def per_query_records(
    scored: dict[str, Any],
    queries: Sequence[dict[str, Any]],
    titles: dict[str, str],
    top_n: int = 5,
) -> list[dict[str, Any]]:
    """One record per query for error analysis: each system's rank of the first relevant document and top hits."""
    out = []
    for q in queries:
        qid = q["query_id"]
        rel = set(q["positive_doc_ids"])
        rec: dict[str, Any] = {
            "query_id": qid,
            "query": q["query"],
            "positive_doc_ids": q["positive_doc_ids"],
            "systems": {},
        }
        for name, ranking in scored["doc_rankings"].items():
            docs = [d for d, _ in ranking.get(qid, [])]
            first = next((i + 1 for i, d in enumerate(docs) if d in rel), None)
            rec["systems"][name] = {
                "first_relevant_rank": first,
                "ndcg@10": round(scored["per_query"][name][qid].get("ndcg@10", 0.0), 4),
                "top": [{"doc_id": d, "title": titles.get(d, "")} for d in docs[:top_n]],
            }
        out.append(rec)
    return out


def _table(metrics: dict[str, dict[str, float]], columns: Sequence[str]) -> list[str]:
    cols = [c for c in columns if any(c in m for m in metrics.values())]
    lines = ["| system | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    best = {c: max(m.get(c, 0.0) for m in metrics.values()) for c in cols}
    for name, m in metrics.items():
        cells = []
        for c in cols:
            v = m.get(c)
            cell = "–" if v is None else f"{v:.4f}"
            cells.append(f"**{cell}**" if v is not None and v == best[c] and len(metrics) > 1 else cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def ndcg_per_query(
    ranking: Ranking, queries: Sequence[dict[str, Any]], chunk_to_doc: dict[str, str]
) -> dict[str, float]:
    """Document-level NDCG@10 of one chunk ranking, per query id (what pipeline selection compares)."""
    qrels = {q["query_id"]: set(q["positive_doc_ids"]) for q in queries}
    _, per_query = evaluate_ranking(to_doc_ranking(ranking, chunk_to_doc), qrels, [10])
    return {qid: m["ndcg@10"] for qid, m in per_query.items()}


def render_report(
    results: dict[str, dict[str, Any]],
    records: list[dict[str, Any]],
    *,
    system_for_errors: str,
    context: dict[str, Any],
    warnings: Sequence[str] = (),
    worst_n: int = 15,
    pipeline: str | None = None,
    selection: dict[str, Any] | None = None,
    reranker: dict[str, Any] | None = None,
    gains: dict[str, dict[str, float]] | None = None,
    out_of_domain: dict[str, Any] | None = None,
) -> str:
    """Markdown report: the chosen pipeline first, then tables per split, then the worst test queries."""
    lines = ["# ragtune evaluation report", ""]
    lines.append(
        f"Corpus: {context['n_documents']} documents, {context['n_chunks']} chunks. "
        f"Base embedder: `{context['base_model']}`. Metrics are macro-averages over held-out queries; "
        "a document scores as its best chunk."
    )
    lines.append("")
    if pipeline and "test" in results:
        test = results["test"]["doc"]
        shown = {pipeline: test[pipeline]}
        shown.update({s: test[s] for s in ("bm25", "base_dense", "ft_dense") if s in test and s != pipeline})
        lines += [
            f"## Headline: `{pipeline}`, the pipeline chosen on dev ({results['test']['n_queries']} test queries)",
            "",
            "`ragtune search` uses this pipeline by default. Each component beyond the fine-tuned embedder alone "
            "had to beat the simpler pipeline on dev with a 95% paired-bootstrap interval above 0; the test numbers "
            "below played no part in the choice.",
            "",
            *_table(shown, HEADLINE),
            "",
        ]
    if selection:
        lines += ["## How the pipeline was chosen", "", selection["reason"], ""]
        if selection["steps"]:
            lines += [
                "| step | candidate | vs | dev ndcg@10 gain | 95% interval | queries | base model, train + dev ² | "
                "adopted |",
                "|---|---|---|---:|---|---:|---|---|",
            ]
            for st in selection["steps"]:
                tuned = " ¹" if st["tuned"] else ""
                p = st.get("proxy")
                proxy = (
                    f"{100 * p['gain']:+.1f} [{100 * p['ci_low']:+.1f}, {100 * p['ci_high']:+.1f}], {p['n_queries']} q"
                    if p
                    else "–"
                )
                lines.append(
                    f"| {st['component']} | {st['candidate']}{tuned} | {st['incumbent']} | {100 * st['gain']:+.1f} pts "
                    f"| [{100 * st['ci_low']:+.1f}, {100 * st['ci_high']:+.1f}] | {st['n_queries']} | {proxy} | "
                    f"{'yes (' + st['evidence'] + ')' if st['adopted'] else 'no'} |"
                )
            lines += [
                "",
                "¹ a tuned weight (convex alpha or reranker fusion weight): each dev query is scored with the weight "
                "chosen on the other dev folds, so the choice of weight cannot flatter the candidate.",
                "",
                "² BM25 fusion involves no training, so its evidence may also come from the base model's RRF hybrid "
                "against the base model over train + dev questions (never test); it is then adopted when that "
                "interval is above 0 and its dev gain on the fine-tuned model is not negative.",
                "",
            ]
    if gains:
        lines += [
            "## Gains over base_dense on test, with 95% paired-bootstrap intervals",
            "",
            "An interval that contains 0 means the test set cannot tell the two systems apart.",
            "",
            "| system | ndcg@10 gain | 95% interval | queries |",
            "|---|---:|---|---:|",
        ]
        for name, g in gains.items():
            lines.append(
                f"| {name} | {100 * g['gain']:+.1f} pts | [{100 * g['ci_low']:+.1f}, {100 * g['ci_high']:+.1f}] | "
                f"{g['n_queries']} |"
            )
        lines.append("")
    if warnings:
        lines += ["## Warnings", ""] + [f"- ⚠️ {w}" for w in warnings] + [""]
    if out_of_domain:
        lines += [
            "## Forgetting check: out-of-domain sets (evaluate.out_of_domain)",
            "",
            "The base and the shipped embedder, dense retrieval over each set's own chunks; every question of a set "
            "is held out from training.",
            "",
            "| set | questions | base ndcg@10 | shipped ndcg@10 | change | 95% interval | base mrr@10 | "
            "shipped mrr@10 |",
            "|---|---:|---:|---:|---:|---|---:|---:|",
        ]
        for name, r in out_of_domain.items():
            if "skipped" in r:
                lines.append(f"| {name} | skipped: {r['skipped']} | | | | | | |")
                continue
            lines.append(
                f"| {name} | {r['n_queries']} | {r['base_ndcg@10']:.4f} | {r['shipped_ndcg@10']:.4f} | "
                f"{100 * r['change']:+.1f} pts | [{100 * r['ci_low']:+.1f}, {100 * r['ci_high']:+.1f}] | "
                f"{r['base_mrr@10']:.4f} | {r['shipped_mrr@10']:.4f} |"
            )
        lines.append("")
    if reranker:
        lines += [
            "## Reranker",
            "",
            "The reranker scores each retriever's top candidates; its score is fused with the retriever's "
            "(min-max normalised, `w × reranker + (1 − w) × retriever`), with `w` chosen on dev. `w = 1` is the "
            "reranker alone, `w = 0` the retriever alone.",
            "",
            "| retriever | candidates | w (dev) | dev ndcg@10 retriever → reranker alone → fused | "
            "test ndcg@10 retriever → reranker alone → fused |",
            "|---|---:|---:|---|---|",
        ]
        for retr, r in reranker.items():
            d, t = r["dev_ndcg@10"], r["test_ndcg@10"]
            lines.append(
                f"| {retr} | {r['rerank_k']} | {r['weight']:.1f} | {d['retriever']:.4f} → {d['reranker']:.4f} → "
                f"{d['fused']:.4f} | {t['retriever']:.4f} → {t['reranker']:.4f} → {t['fused']:.4f} |"
            )
        lines.append("")
    for split, res in results.items():
        lines += [f"## {split} split — document level ({res['n_queries']} queries)", ""]
        lines += [*_table(res["doc"], HEADLINE), ""]
        lines += [f"### {split} split — chunk level (aligned positive chunk)", ""]
        lines += [*_table(res["chunk"], HEADLINE), ""]
    if records:
        lines += [f"## Worst test queries for `{system_for_errors}`", ""]
        lines += ["| query | relevant | first relevant rank | top-3 retrieved |", "|---|---|---:|---|"]

        def badness(r: dict[str, Any]) -> tuple[float, str]:
            s = r["systems"][system_for_errors]
            return (-(s["first_relevant_rank"] or 10**6), r["query_id"])

        for r in sorted(records, key=badness)[:worst_n]:
            s = r["systems"][system_for_errors]
            top = "; ".join(f"{t['doc_id']} {t['title'][:40]}" for t in s["top"][:3])
            rank = s["first_relevant_rank"] or "not retrieved"
            query = r["query"].replace("|", "\\|")
            lines.append(f"| {query} | {', '.join(r['positive_doc_ids'])} | {rank} | {top.replace('|', '/')} |")
        lines.append("")
    return "\n".join(lines)
