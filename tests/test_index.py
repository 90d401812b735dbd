"""The index stage's library function: every chunk embedded by the fine-tuned embedder, in the folder search loads."""

from __future__ import annotations

import shutil

import numpy as np

from ragtune.io import read_json, read_jsonl, write_jsonl
from ragtune.paths import Paths
from ragtune.search import Pipeline, Searcher, run_index


def test_run_index_writes_what_search_loads(tmp_path, tiny_embedder_path):
    from conftest import TOPICS, shipped_params

    paths = Paths(tmp_path)
    shutil.copytree(tiny_embedder_path, paths.embedder)
    docs = [{"doc_id": f"D{i}", "title": t, "metadata": {"n": i}} for i, (t, _) in enumerate(TOPICS)]
    chunks = [
        {"chunk_id": f"D{i}#0000", "doc_id": f"D{i}", "title": t, "section": "", "text": f"{t}\n{body}"}
        for i, (t, body) in enumerate(TOPICS)
    ]
    write_jsonl(paths.documents, docs)
    write_jsonl(paths.chunks, chunks)
    model_p = shipped_params("model", embedder="unused: the index embeds with paths.embedder", max_seq_length=128)
    summary = run_index(model_p, shipped_params("bm25", tokenizer="syllable"), paths)

    manifest = read_json(paths.index / "manifest.json")
    assert manifest == {
        "embedder": str(paths.embedder),
        "query_prompt": "query: ",
        "passage_prompt": "passage: ",
        "bm25": {"tokenizer": "syllable", "backend": "bm25s", "k1": 1.5, "b": 0.75},
        "n_chunks": len(chunks),
        "dim": 32,
    }
    vectors = np.load(paths.index / "embeddings.npy")
    assert vectors.shape == (len(chunks), 32) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    rows = read_jsonl(paths.index / "chunks.jsonl")
    assert [r["chunk_id"] for r in rows] == [c["chunk_id"] for c in chunks]
    assert rows[3]["metadata"] == {"n": 3}
    assert summary == {
        "read": f"{len(chunks)} chunks of {len(docs)} documents",
        "wrote": f"{paths.index}/ ({len(chunks)} × 32 vectors, chunks, manifest)",
    }
    searcher = Searcher.load(paths.index, Pipeline("ft_hybrid"))
    assert len(searcher.search(TOPICS[0][0], k=3)) == 3
