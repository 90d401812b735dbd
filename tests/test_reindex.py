"""`ragtune reindex`: the index's chunks and vectors for a user's vector store, and only from a matching model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import write_serving_models

import ragtune.reindex as reindex_module
from ragtune.cli import main
from ragtune.io import read_json, read_jsonl, write_jsonl
from ragtune.models.identity import model_fingerprint
from ragtune.reindex import ReindexError, export_vectors
from ragtune.search import SearchSetupError

DOCS = {
    "HR-leave": ("Nghỉ phép năm", "Nhân viên được nghỉ phép 12 ngày mỗi năm."),
    "IT-vpn": ("VPN", "Kết nối VPN bằng tài khoản công ty khi làm việc từ xa."),
    "IT-password": ("Mật khẩu", "Mật khẩu dài tối thiểu 12 ký tự và đổi sau 90 ngày."),
    "FIN-travel": ("Công tác phí", "Công tác phí được thanh toán trong 5 ngày làm việc."),
    "HR-salary": ("Bảng lương", "Bảng lương chi tiết của ban giám đốc."),
}
LEVELS = {"HR-salary": {"access_level": "restricted"}, "IT-vpn": {"access_level": "internal", "tags": ["vpn"]}}


@pytest.fixture
def repo(tmp_path: Path, tiny_embedder_path: Path) -> Path:
    return write_serving_models(tmp_path, tiny_embedder_path, DOCS, candidate_k=4, metadata=LEVELS)


def _parquet(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def test_parquet_and_jsonl_hold_every_indexed_chunk_with_its_vector_level_and_metadata(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = repo / "models/index"
    chunks, vectors = read_jsonl(index / "chunks.jsonl"), np.load(index / "embeddings.npy")
    monkeypatch.setattr(reindex_module, "BATCH", 2)  # several batches: rows and vectors stay aligned across them
    assert main(["reindex", "--out", str(repo / "out/vectors.parquet"), "--root", str(repo)]) == 0
    rows = _parquet(repo / "out/vectors.parquet")
    assert [r["chunk_id"] for r in rows] == [c["chunk_id"] for c in chunks]
    np.testing.assert_array_equal(np.array([r["vector"] for r in rows], dtype=np.float32), vectors)
    by_doc = {r["doc_id"]: r for r in rows}
    assert by_doc["HR-salary"]["access_level"] == "restricted" and by_doc["HR-leave"]["access_level"] == "public"
    assert json.loads(by_doc["IT-vpn"]["metadata"]) == {"access_level": "internal", "department": "IT", "tags": ["vpn"]}
    assert by_doc["IT-vpn"]["text"].startswith("VPN\n") and by_doc["IT-vpn"]["title"] == "VPN"
    side = read_json(repo / "out/vectors.manifest.json")
    assert side["embedder_fingerprint"] == model_fingerprint(repo / "models/embedder")
    assert (side["rows"], side["dim"], side["format"], side["passage_prompt"]) == (
        len(DOCS),
        32,
        "parquet",
        "passage: ",
    )

    done = export_vectors(index, repo / "out/vectors.jsonl")
    lines = read_jsonl(done.out)
    assert [r["chunk_id"] for r in lines] == [r["chunk_id"] for r in rows]
    np.testing.assert_array_equal(np.array([r["vector"] for r in lines], dtype=np.float32), vectors)
    assert lines[0]["metadata"] == json.loads(rows[0]["metadata"]) and "access_rank" not in lines[0]


def test_given_chunks_are_embedded_as_the_index_embedded_its_own(repo: Path) -> None:
    """--chunks: the store's own chunking, embedded with the index's passage prompt: the same text gives the index's
    vector; fields other than chunk_id and text are carried through."""
    index = repo / "models/index"
    chunks, vectors = read_jsonl(index / "chunks.jsonl"), np.load(index / "embeddings.npy")
    given = [{"chunk_id": i, "text": c["text"], "source": "crm"} for i, c in enumerate(chunks)]
    write_jsonl(repo / "mine.jsonl", given)
    done = export_vectors(index, repo / "mine.parquet", chunks_file=repo / "mine.jsonl")
    rows = _parquet(done.out)
    assert [r["chunk_id"] for r in rows] == [str(i) for i in range(len(chunks))] and done.rows == len(chunks)
    np.testing.assert_allclose(np.array([r["vector"] for r in rows]), vectors, atol=1e-5)
    lines = read_jsonl(export_vectors(index, repo / "mine.jsonl.out", fmt="jsonl", chunks_file=repo / "mine.jsonl").out)
    assert lines[1]["source"] == "crm" and read_json(repo / "mine.jsonl.manifest.json")["source"].endswith("mine.jsonl")


def test_bad_chunks_files_and_outputs_name_the_line_and_the_fix(repo: Path) -> None:
    index = repo / "models/index"
    with pytest.raises(ReindexError, match=r"cannot tell the format .*\*\.parquet or \*\.jsonl"):
        export_vectors(index, repo / "vectors.csv")
    with pytest.raises(ReindexError, match=r"no such file"):
        export_vectors(index, repo / "v.parquet", chunks_file=repo / "absent.jsonl")
    cases = {
        '{"chunk_id": "a", "text": "x"}\n{"chunk_id": "b"}\n': r"bad\.jsonl:2: chunk 'b' has no text",
        '{"text": "x"}\n': r"bad\.jsonl:1: no chunk_id",
        '{"chunk_id": 1, "text": "x"}\n\n{"chunk_id": "1", "text": "y"}\n': r"bad\.jsonl:3: chunk_id '1' repeats line 1",
    }
    for content, message in cases.items():
        (repo / "bad.jsonl").write_text(content, encoding="utf-8")
        with pytest.raises(ReindexError, match=message):
            export_vectors(index, repo / "v.parquet", chunks_file=repo / "bad.jsonl")
        assert not (repo / "v.parquet").exists() and not (repo / "v.parquet.tmp").exists()  # nothing half-written


def test_an_index_from_another_embedder_is_not_exported(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """After train_embedder ran again without the index stage, the index's vectors are the old model's: exporting
    them would fill the store with vectors the served model's queries cannot be compared with."""
    config = repo / "models/embedder/config.json"
    config.write_text(config.read_text(encoding="utf-8").replace("{", '{"retrained": 1, ', 1), encoding="utf-8")
    assert main(["reindex", "--out", str(repo / "v.parquet"), "--root", str(repo)]) == 2
    assert "dvc repro index" in capsys.readouterr().err and not (repo / "v.parquet").exists()
    with pytest.raises(SearchSetupError, match="embedded by another model"):
        export_vectors(repo / "models/index", repo / "v.jsonl", chunks_file=repo / "any.jsonl")
