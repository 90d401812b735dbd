"""The index stage's library function: every chunk embedded by the fine-tuned embedder, in the folder search loads."""

from __future__ import annotations

import shutil

import numpy as np

from ragtune.io import read_json, read_jsonl, write_jsonl
from ragtune.paths import Paths
from ragtune.search import Pipeline, Searcher, run_index


def test_run_index_writes_what_search_loads(tmp_path, tiny_embedder_path):
    from conftest import TOPICS, shipped_params

    from ragtune.models.identity import model_fingerprint

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
    summary = run_index(model_p, shipped_params("bm25", tokenizer="syllable"), shipped_params("access"), paths)

    manifest = read_json(paths.index / "manifest.json")
    assert manifest == {
        "embedder": str(paths.embedder),
        "embedder_fingerprint": model_fingerprint(tiny_embedder_path),  # the folder's content, wherever it lies
        "query_prompt": "query: ",
        "passage_prompt": "passage: ",
        "bm25": {"tokenizer": "syllable", "backend": "bm25s", "k1": 1.5, "b": 0.75},
        "access": {  # no document has a label: all at access.unlabeled, so every caller sees every one
            "levels": ["public", "internal", "confidential", "restricted"],
            "unlabeled": "public",
            "documents": {"public": len(docs), "internal": 0, "confidential": 0, "restricted": 0},
            "unlabeled_documents": len(docs),
        },
        "n_chunks": len(chunks),
        "dim": 32,
    }
    vectors = np.load(paths.index / "embeddings.npy")
    assert vectors.shape == (len(chunks), 32) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    rows = read_jsonl(paths.index / "chunks.jsonl")
    assert [r["chunk_id"] for r in rows] == [c["chunk_id"] for c in chunks]  # one level: the chunks' own order
    assert rows[3]["metadata"] == {"n": 3} and {r["access_rank"] for r in rows} == {0}
    assert summary == {  # a corpus without labels: the summary line is as it was before access levels
        "read": f"{len(chunks)} chunks of {len(docs)} documents",
        "wrote": f"{paths.index}/ ({len(chunks)} × 32 vectors, chunks, manifest)",
    }
    searcher = Searcher.load(paths.index, Pipeline("ft_hybrid"))
    assert len(searcher.search(TOPICS[0][0], k=3)) == 3


LABELS = {"D0": "restricted", "D2": " Internal", "D3": "PUBLIC", "D4": "confidential", "D6": "internal", "D7": " "}


def _write_inputs(paths: Paths, labels: dict[str, str]) -> tuple[list[dict], list[dict]]:
    from conftest import TOPICS

    docs = [
        {"doc_id": f"D{i}", "title": t, "metadata": {"access_level": labels[f"D{i}"]} if f"D{i}" in labels else {}}
        for i, (t, _) in enumerate(TOPICS)
    ]
    chunks = [
        {"chunk_id": f"D{i}#0000", "doc_id": f"D{i}", "title": t, "section": "", "text": f"{t}\n{body}"}
        for i, (t, body) in enumerate(TOPICS)
    ]
    write_jsonl(paths.documents, docs)
    write_jsonl(paths.chunks, chunks)
    return docs, chunks


def test_labels_are_ranked_stored_lowest_first_and_the_unlabeled_are_counted_loudly(tmp_path, tiny_embedder_path):
    """Labels match case- and space-insensitively; a blank label is no label. Rows are stored lowest level first
    (chunk order within a level), with their vectors, and the summary says how many documents had no label and
    the level they got."""
    from conftest import shipped_params

    from ragtune.retrieval import load_dense

    paths = Paths(tmp_path)
    shutil.copytree(tiny_embedder_path, paths.embedder)
    _, chunks = _write_inputs(paths, LABELS)
    model_p = shipped_params("model", max_seq_length=128)
    summary = run_index(model_p, shipped_params("bm25", tokenizer="syllable"), shipped_params("access"), paths)

    rows = read_jsonl(paths.index / "chunks.jsonl")
    order = ["D1", "D3", "D5", "D7", "D2", "D6", "D4", "D0"]  # public (D1, D5, D7 unlabeled), internal, conf., restr.
    assert [r["doc_id"] for r in rows] == order
    assert [r["access_rank"] for r in rows] == [0, 0, 0, 0, 1, 1, 2, 3]
    assert rows[4]["metadata"] == {"access_level": " Internal"}  # the label is kept as the source wrote it
    want = load_dense(model_p, name=str(paths.embedder)).encode_passages([c["text"] for c in chunks])
    np.testing.assert_array_equal(np.load(paths.index / "embeddings.npy"), want[[int(d[1]) for d in order]])
    access = read_json(paths.index / "manifest.json")["access"]
    assert access["documents"] == {"public": 4, "internal": 2, "confidential": 1, "restricted": 1}
    assert access["unlabeled_documents"] == 3
    assert summary["wrote"].endswith(
        "; access levels: public 4, internal 2, confidential 1, restricted 1; "
        "3 of 8 documents have no access_level → public (access.unlabeled)"
    )


def test_an_off_scale_label_stops_the_stage_naming_document_value_and_fix(tmp_path):
    """Before any embedding: the stage exits 1 with one line (no traceback) naming the document, the value, the
    valid levels and both fixes."""
    from conftest import REPO, run_stage

    work = tmp_path / "stage"
    _write_inputs(Paths(work), {**LABELS, "D5": "Secret", "D6": "top secret"})
    shutil.copy(REPO / "params.yaml", work / "params.yaml")
    output = run_stage(work, "index", fails=True).strip()
    assert len(output.splitlines()) == 1 and "Traceback" not in output, output
    assert output.startswith("index failed: document D5 has access_level 'Secret'; document D6 has access_level ")
    assert "not on the access scale public, internal, confidential, restricted" in output
    assert "Add 'Secret', 'top secret' to access.levels" in output and "fix the document's label" in output
    assert not (work / "models/index").exists()
