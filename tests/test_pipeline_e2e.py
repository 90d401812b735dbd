"""End-to-end: `dvc repro` of the whole DAG on a tiny corpus with the tiny embedder, in a temporary repo copy."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import write_params

from ragtune.io import read_json, read_jsonl

STAGES = {
    "ingest",
    "chunk",
    "bm25",
    "questions",
    "pairs",
    "negatives",
    "train_embedder",
    "index",
    "train_reranker",
    "evaluate",
}


def tree_hash(root: Path, rels: list[str]) -> dict[str, str]:
    return {r: hashlib.sha256((root / r).read_bytes()).hexdigest() for r in rels}


def reproduced(out: str) -> set[str]:
    """The stages a `dvc repro` ran, or restored from its run cache, as DVC itself reports them.

    Why not the stages' own log lines: DVC prints "didn't change" for every skipped stage, so a check on that text
    passes even when another stage re-ran.
    """
    ran = re.findall(r"^Running stage '(\w+)':", out, re.M)
    restored = re.findall(r"^Stage '(\w+)' is cached - skipping run", out, re.M)
    return set(ran) | set(restored)


def downstream(stage: str, edges: set[tuple[str, str]]) -> set[str]:
    """``stage`` and every stage that depends on it, directly or not, in `dvc dag`'s edges."""
    found = {stage}
    while more := {b for a, b in edges if a in found} - found:
        found |= more
    return found


def out_mtimes(work: Path) -> dict[str, int]:
    """mtime of every file of every out in dvc.lock: a stage that re-ran (or was checked out again) rewrites them."""
    lock = yaml.safe_load((work / "dvc.lock").read_text(encoding="utf-8"))
    mtimes = {}
    for stage in lock["stages"].values():
        for out in stage.get("outs", []):
            path = work / out["path"]
            files = [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file())
            mtimes |= {str(f.relative_to(work)): f.stat().st_mtime_ns for f in files}
    return mtimes


@pytest.mark.slow
def test_dvc_repro_on_tiny_config(tmp_path: Path, tiny_repo):
    work, params, run = tiny_repo
    out = run("repro")
    assert reproduced(out) == STAGES, out
    for name in sorted(STAGES):
        assert f"[{name}] read" in out, f"stage {name} printed no summary line"

    dag = run("dag", "--md")
    names = dict(re.findall(r"(node\d+)\[\"?(\w+)\"?\]", dag))
    edges = {(names[a], names[b]) for a, b in re.findall(r"(node\d+)-->(node\d+)", dag)}
    chain = ["ingest", "chunk", "pairs", "negatives", "train_embedder", "evaluate"]
    for edge in itertools.pairwise(chain):
        assert edge in edges, dag
    for edge in [("chunk", "bm25"), ("bm25", "pairs"), ("bm25", "negatives")]:  # one tokenization, read by both
        assert edge in edges, dag
    for edge in [("train_embedder", "index"), ("train_embedder", "train_reranker"), ("train_reranker", "evaluate")]:
        assert edge in edges, dag

    metrics = read_json(work / "metrics/evaluate.json")
    for system in ("bm25", "base_dense", "hybrid", "ft_dense", "ft_hybrid", "ft_dense+rerank", "ft_hybrid+rerank"):
        for m in ("hit@1", "recall@10", "precision@5", "mrr@10", "ndcg@10", "map@10"):
            assert 0.0 <= metrics["test"][system][m] <= 1.0
    assert metrics["n_queries"]["test"] >= 5
    groups = read_jsonl(work / "data/negatives/train_groups.jsonl")
    assert groups and all({"query", "pos", "neg"} <= set(g) for g in groups)
    assert (work / "reports/evaluation.md").read_text(encoding="utf-8").startswith("# ragtune evaluation report")
    assert (work / "metrics/recall_at_k.csv").read_text().startswith("k,bm25,base_dense,hybrid,ft_dense,ft_hybrid")
    trained = read_json(work / "metrics/train_embedder.json")
    assert trained["effective"]["optimizer_steps"] == 12 and trained["effective"]["learning_rate"] == 1e-4
    assert any("optimizer steps" in w for w in trained["warnings"])  # 12 < 50: loudly flagged
    assert "optimizer steps" in (work / "reports/evaluation.md").read_text(encoding="utf-8")
    # params.yaml's merge_alpha 0.5 ran: the unmerged checkpoint's dev scores are kept next to the shipped ones
    assert "ndcg@10" in trained["dev"]["unmerged"]
    assert trained["shipped"] in (
        "fine-tuned, merged with base (alpha 0.5)",
        "fine-tuned (the alpha 0.5 merge lost on dev)",
        "base",
    )
    # the base ships unless the trained model's dev gain has a 95% interval above 0
    assert (trained["shipped"] == "base") == (trained["dev"]["evidence"]["ci_low"] <= 0)
    assert set(metrics["test_gain_vs_base_dense"]["ft_dense"]) == {"gain", "ci_low", "ci_high", "n_queries"}
    assert "paired-bootstrap" in (work / "reports/evaluation.md").read_text(encoding="utf-8")
    from sentence_transformers import SentenceTransformer

    ft = SentenceTransformer(str(work / "models/embedder"), device="cpu")
    assert ft.prompts["query"] == "query: " and (work / "models/embedder/README.md").exists()

    # the reranker stage (the default kind, late interaction): groups from the embedder, dev before/after, the step
    # guard, and a folder the common loader opens by its marker
    rr = read_json(work / "metrics/train_reranker.json")
    assert rr["kind"] == "late_interaction" and rr["effective"]["optimizer_steps"] == 8
    assert "ndcg@10" in rr["dev"]["before"] and "ndcg@10" in rr["dev"]["after"]
    assert any("optimizer steps" in w for w in rr["warnings"])
    from ragtune import rerank

    assert rerank.reranker_kind(work / "models/reranker") == "late_interaction"
    rgroups = read_jsonl(work / "data/reranker/train_groups.jsonl")
    assert rgroups and all(set(g["neg_sources"]) <= {"embedder", "random"} for g in rgroups)
    # evaluate chose a pipeline on dev, reported it first, and search serves it from models/ alone
    pipeline = read_json(work / "models/pipeline.json")
    assert pipeline["system"] == metrics["pipeline"]["system"] and pipeline["chosen_on"] == "dev"
    assert set(metrics["reranker"]) == {"ft_dense", "bm25", "ft_hybrid", "ft_convex"}
    # each component beyond ft_dense was put to the dev-evidence test, and the choice follows the ladder's verdicts
    steps = metrics["selection"]["steps"]
    assert {s["candidate"] for s in steps if s["component"] == "retriever"} == {"bm25", "ft_hybrid", "ft_convex"}
    adopted = [s["candidate"] for s in steps if s["adopted"]]
    assert pipeline["system"] == (adopted[-1] if adopted else "ft_dense") and pipeline["reason"]
    assert all(s["ci_low"] > 0 for s in steps if s["adopted"])
    assert 0.0 <= metrics["convex"]["alpha"] <= 1.0 and "ft_convex" in metrics["test"]
    # the forgetting check scored the shipped sample (out of this tiny corpus's domain) with base and shipped models
    ood = metrics["out_of_domain"]["sample"]
    assert ood["n_queries"] > 250 and 0 <= ood["base_ndcg@10"] <= 1
    assert "Forgetting check" in (work / "reports/evaluation.md").read_text(encoding="utf-8")
    models = read_json(work / "metrics/models.json")
    assert models["base_dense"]["dim"] == models["ft_dense"]["dim"] == 32 and models["ft_dense"]["passages_per_s"] > 0
    report = (work / "reports/evaluation.md").read_text(encoding="utf-8")
    assert report.index("## Headline") < report.index("## test split")
    from ragtune.cli import main as cli

    assert cli(["search", "mật khẩu đổi khi nào", "--json", "--root", str(work)]) == 0

    outputs = [
        "data/interim/documents.jsonl",
        "data/interim/queries.jsonl",
        "data/chunks/chunks.jsonl",
        "data/pairs/train.jsonl",
        "data/pairs/test.jsonl",
        "data/pairs/synthetic.jsonl",
        "data/negatives/train_groups.jsonl",
    ]
    first = tree_hash(work, outputs)
    # a second repro is a no-op: DVC sees nothing changed, runs no stage, and touches neither dvc.lock nor any out
    status = run("status", "--json")
    assert json.JSONDecoder().raw_decode(status.lstrip())[0] == {}, status
    lock, mtimes = (work / "dvc.lock").read_bytes(), out_mtimes(work)
    out = run("repro")
    assert reproduced(out) == set(), out
    assert (work / "dvc.lock").read_bytes() == lock
    assert out_mtimes(work) == mtimes
    shutil.rmtree(tmp_path / "ragtune-cache", ignore_errors=True)  # recompute embeddings from scratch too
    out = run("repro", "--force")
    assert reproduced(out) == STAGES, out
    assert tree_hash(work, outputs) == first, "two runs gave different outputs"

    # a param change re-runs the stage that reads it and what is downstream of it, and nothing upstream
    params["evaluate"]["rrf_k"] = 10
    write_params(work, params)
    out = run("repro")
    assert reproduced(out) == downstream("evaluate", edges) == {"evaluate"}, out
    params["train_reranker"]["lr"] = 5e-5
    write_params(work, params)
    out = run("repro")
    assert reproduced(out) == downstream("train_reranker", edges) == {"train_reranker", "evaluate"}, out
