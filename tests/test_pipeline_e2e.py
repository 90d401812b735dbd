"""End-to-end: `dvc repro` of the whole DAG on a tiny corpus with the tiny embedder, in a temporary repo copy."""

from __future__ import annotations

import hashlib
import itertools
import re
import shutil
from pathlib import Path

import pytest
from conftest import write_params

from ragtune.jsonl import read_json, read_jsonl


def tree_hash(root: Path, rels: list[str]) -> dict[str, str]:
    return {r: hashlib.sha256((root / r).read_bytes()).hexdigest() for r in rels}


@pytest.mark.slow
def test_dvc_repro_on_tiny_config(tmp_path: Path, tiny_repo):
    work, params, run = tiny_repo
    out = run("repro")
    for name in ("ingest", "chunk", "pairs", "negatives", "train_embedder", "evaluate"):
        assert f"[{name}] read" in out, f"stage {name} printed no summary line"

    dag = run("dag", "--md")
    names = dict(re.findall(r"(node\d+)\[\"?(\w+)\"?\]", dag))
    edges = {(names[a], names[b]) for a, b in re.findall(r"(node\d+)-->(node\d+)", dag)}
    chain = ["ingest", "chunk", "pairs", "negatives", "train_embedder", "evaluate"]
    for edge in itertools.pairwise(chain):
        assert edge in edges, dag

    metrics = read_json(work / "metrics/evaluate.json")
    for system in ("bm25", "base_dense", "hybrid", "ft_dense", "ft_hybrid"):
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
    from sentence_transformers import SentenceTransformer

    ft = SentenceTransformer(str(work / "models/embedder"), device="cpu")
    assert ft.prompts["query"] == "query: " and (work / "models/embedder/README.md").exists()

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
    assert "up to date" in run("repro") or "didn't change" in run("repro")
    shutil.rmtree(tmp_path / "ragtune-cache", ignore_errors=True)  # recompute embeddings from scratch too
    run("repro", "--force")
    assert tree_hash(work, outputs) == first, "two runs gave different outputs"

    # a param change re-runs only the stages that read it (and their downstream)
    params["evaluate"]["rrf_k"] = 10
    write_params(work, params)
    out = run("repro")
    assert "[evaluate] read" in out and "[chunk] read" not in out
