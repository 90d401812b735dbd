"""What evaluate tells a reader: the warnings, metrics/evaluate.json, the recall@k curve, the per-query records and
the Markdown report.

Everything here is a pure function of scores already computed (no model is loaded), so the warning rules and the
report can be tested on small dicts.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ragtune.evaluation.metrics import evaluate_ranking
from ragtune.retrieval import Ranking

HEADLINE = ("ndcg@10", "mrr@10", "map@10", "recall@1", "recall@5", "recall@10", "hit@1", "hit@10")


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


SYNTHETIC_TEST = (
    "the test questions were written by an LLM from held-out chunks (questions stage): the scores measure agreement "
    "with the generator, not with real users; add labeled test questions for a real test"
)


def question_sources(queries: Sequence[dict[str, Any]]) -> dict[str, int] | None:
    """Test questions by source (``labeled``, ``llm``) when any was written by an LLM (pairs' synthetic held-out
    split); None when all are labeled, so a labeled run's metrics and report stay as they were."""
    llm = sum(1 for q in queries if q.get("source") == "llm")
    return {"labeled": len(queries) - llm, "llm": llm} if llm else None


def synthetic_test(test_questions: dict[str, int] | None) -> bool:
    return bool(test_questions and test_questions.get("llm"))


def evaluation_warnings(
    results: dict[str, dict[str, Any]],
    *,
    fine_tuned: bool,
    pipeline: str | None,
    gains: dict[str, dict[str, float]],
    reranker: dict[str, Any],
    trained: Sequence[str] = (),
    forgetting: Sequence[str] = (),
    test_questions: dict[str, int] | None = None,
) -> list[str]:
    """The warnings of metrics/evaluate.json and the report, in the order a reader should meet them.

    ``results`` maps each split to ``{"n_queries", "doc", "chunk"}``; ``trained`` are the training stages' own
    warnings (prefixed with the stage), ``forgetting`` the out-of-domain check's. The rules: a served reranker that
    alone makes its retriever worse on test; a reranker that puts one document first for over 20% of test queries;
    no dev split; a fine-tuned embedder that does not beat its base on test, or whose gain's interval contains 0;
    fewer than 30 test queries; LLM-written test questions (``test_questions``: counts by source,
    :func:`question_sources`).
    """
    warnings = list(trained)
    if synthetic_test(test_questions):
        warnings.append(SYNTHETIC_TEST)
    for retr, r in reranker.items():
        t = r["test_ndcg@10"]
        if t["reranker"] < t["retriever"] and pipeline == f"{retr}+rerank":
            warnings.append(
                f"the reranker alone makes {retr} worse on test: ndcg@10 {t['retriever']:.4f} → {t['reranker']:.4f}"
                f" (fusion weight chosen on dev: {r['weight']:.1f}, fused {t['fused']:.4f})"
            )
        if r["top1_share"] > 0.2:
            warnings.append(
                f"the reranker puts {r['top1_doc']} first for {r['top1_share']:.0%} of test queries ({retr}): "
                "it may rank by document popularity"
            )
    if "dev" not in results:
        warnings.append(
            "no dev split: nothing could check an added component, so search serves ft_dense "
            "(label questions for a dev split to let hybrid or reranking earn their place)"
        )
    if fine_tuned:
        gain = results["test"]["doc"]["ft_dense"]["ndcg@10"] - results["test"]["doc"]["base_dense"]["ndcg@10"]
        if gain <= 0:
            warnings.append(f"the fine-tuned embedder does not beat its base model on test ndcg@10 ({gain:+.4f})")
        elif gains["ft_dense"]["ci_low"] <= 0:
            g = gains["ft_dense"]
            warnings.append(
                f"ft_dense's test gain over base_dense ({100 * g['gain']:+.1f} pts) is within noise: 95% interval "
                f"[{100 * g['ci_low']:+.1f}, {100 * g['ci_high']:+.1f}] contains 0"
            )
    warnings += forgetting
    if results["test"]["n_queries"] < 30:
        warnings.append(
            f"only {results['test']['n_queries']} test queries: differences under ~5 points are noise "
            "(raise pairs.test_ratio or label more questions)"
        )
    return warnings


def evaluate_metrics(
    results: dict[str, dict[str, Any]],
    *,
    gains: dict[str, dict[str, float]],
    warnings: Sequence[str],
    selection: dict[str, Any] | None = None,
    convex: dict[str, Any] | None = None,
    reranker: dict[str, Any] | None = None,
    reranker_2x2: dict[str, Any] | None = None,
    out_of_domain: dict[str, Any] | None = None,
    test_questions: dict[str, int] | None = None,
) -> dict[str, Any]:
    """metrics/evaluate.json: document-level metrics per split (``<split>_chunk`` at chunk level), query counts,
    test gains over the base model, the warnings, and when present the served pipeline (``selection``, its
    :meth:`~ragtune.evaluation.selection.Selection.to_json`), the convex alpha, the reranker and the forgetting
    check, and ``test_questions`` by source when some were LLM-written."""
    metrics: dict[str, Any] = {split: res["doc"] for split, res in results.items()}
    metrics.update({f"{split}_chunk": res["chunk"] for split, res in results.items()})
    metrics["n_queries"] = {split: res["n_queries"] for split, res in results.items()}
    if test_questions:
        metrics["test_questions"] = dict(test_questions)
    metrics["test_gain_vs_base_dense"] = gains
    metrics["warnings"] = list(warnings)
    if selection:
        system = selection["system"]
        metrics["pipeline"] = {"system": system, "test": results["test"]["doc"][system]}
        metrics["selection"] = selection
    if convex is not None:
        metrics["convex"] = convex
    if reranker:
        metrics["reranker"] = reranker
    if reranker_2x2:
        metrics["reranker_2x2"] = reranker_2x2
    if out_of_domain:
        metrics["out_of_domain"] = out_of_domain
    return metrics


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


def _synthetic_test_line(test_questions: dict[str, int] | None) -> list[str]:
    """The bold line that opens the headline when test questions were LLM-written; none otherwise."""
    if not synthetic_test(test_questions):
        return []
    llm, total = test_questions["llm"], test_questions["llm"] + test_questions.get("labeled", 0)
    which = f"All {total}" if llm == total else f"{llm} of the {total}"
    return [
        f"**{which} test questions were written by an LLM from held-out chunks, not by users: these scores measure "
        "agreement with the question generator, not with real users. Add labeled test questions for a real test.**",
        "",
    ]


def _two_by_two(table: dict[str, Any]) -> list[str]:
    """Base vs fine-tuned embedder × without vs with the reranker (alone, over the embedder's top k), per split:
    the table users ask for first (FlagEmbedding #296), so the embedder's gain and the reranker's can be read apart."""
    splits = [s for s in ("dev", "test") if s in table]
    lines = [
        "### Embedder × reranker",
        "",
        "Document-level NDCG@10; *reranked* is the reranker alone (w = 1) over the embedder's top "
        f"{table['rerank_k']}.",
        "",
        "| embedder | " + " | ".join(f"{s} no reranker | {s} reranked" for s in splits) + " |",
        "|---|" + "---:|---:|" * len(splits),
    ]
    for embedder in ("base", "fine-tuned"):
        cells = [f"{table[s][embedder]['retriever']:.4f} | {table[s][embedder]['reranked']:.4f}" for s in splits]
        lines.append(f"| {embedder} | " + " | ".join(cells) + " |")
    return [*lines, ""]


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
    reranker_2x2: dict[str, Any] | None = None,
    gains: dict[str, dict[str, float]] | None = None,
    out_of_domain: dict[str, Any] | None = None,
    test_questions: dict[str, int] | None = None,
) -> str:
    """Markdown report: the chosen pipeline first, then tables per split, then the worst test queries."""
    lines = ["# ragtune evaluation report", ""]
    lines.append(
        f"Corpus: {context['n_documents']} documents, {context['n_chunks']} chunks. "
        f"Base embedder: `{context['base_model']}`. Metrics are macro-averages over held-out queries; "
        "a document scores as its best chunk."
    )
    lines.append("")
    synthetic = _synthetic_test_line(test_questions)
    if pipeline and "test" in results:
        test = results["test"]["doc"]
        shown = {pipeline: test[pipeline]}
        shown.update({s: test[s] for s in ("bm25", "base_dense", "ft_dense") if s in test and s != pipeline})
        lines += [
            f"## Headline: `{pipeline}`, the pipeline chosen on dev ({results['test']['n_queries']} test queries)",
            "",
            *synthetic,
            "`ragtune search` uses this pipeline by default. Each component beyond the fine-tuned embedder alone "
            "had to beat the simpler pipeline on dev with a 95% paired-bootstrap interval above 0; the test numbers "
            "below played no part in the choice.",
            "",
            *_table(shown, HEADLINE),
            "",
        ]
    else:
        lines += synthetic
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
                    + (f", w = {p['weight']:g}" if "weight" in p else "")
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
                "² BM25 fusion and late-interaction re-scoring work without training, so their evidence may also "
                "come from the base model over train + dev questions (never test): its RRF hybrid against it, and "
                "its own untrained late-interaction start re-scoring its retrievers' top candidates against them. "
                "Such a candidate is adopted when that interval is above 0 and its dev gain with the fine-tuned "
                "models is not negative. For the reranker, w is the fusion weight it was measured at: dev's, or when "
                "dev tied several weights, the one these questions chose among them (cross-validated).",
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
    if reranker_2x2:
        lines += _two_by_two(reranker_2x2)
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
