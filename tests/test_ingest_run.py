"""run_ingest: the ingest stage's whole job on a tiny corpus in a tmp folder, checked on the files it writes."""

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import shipped_params

from ragtune.ingest import IngestError, run_ingest
from ragtune.paths import Paths

BODY = "Nhân viên được nghỉ phép năm mười bốn ngày và đăng ký trên cổng LamHR trước ba ngày làm việc."


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def corpus(root: Path) -> dict[str, Any]:
    """A folder of Markdown, a CSV table and a JSONL question file with one line that is not JSON."""
    write(root / "src/docs/nghi-phep.md", f"---\nid: POL-1\ntags: phép năm; lamhr\n---\n# Nghỉ phép năm\n\n{BODY}")
    write(root / "src/docs/vpn.md", "Cài đặt HL-VPN trên máy tính xách tay trước khi làm việc từ xa.")
    write(
        root / "src/quick.csv",
        "ma;tieu_de;noi_dung\n"
        "QP-1;Đặt phòng họp;Đặt phòng họp trên lịch chung ít nhất một ngày trước buổi họp.\n"
        "QP-2;Trùng lặp;Cài đặt HL-VPN trên máy tính xách tay trước khi làm việc từ xa.\n",
    )
    questions = [{"id": f"q{i}", "query": f"Câu hỏi {i} về nghỉ phép?", "positives": ["POL-1"]} for i in range(4)]
    questions.append({"id": "q9", "query": "Đặt phòng họp thế nào?", "positives": "QP-1, vpn"})
    lines = [json.dumps(q, ensure_ascii=False) for q in questions]
    lines.insert(2, '{"id": "broken", "query": "thiếu dấu ngoặc"')
    write(root / "src/questions.jsonl", "\n".join(lines) + "\n")
    return shipped_params(
        "ingest",
        root="src",
        documents=["docs", {"path": "quick.csv", "columns": {"id": "ma", "title": "tieu_de", "text": "noi_dung"}}],
        queries=["questions.jsonl"],
    )


def test_run_ingest_writes_documents_queries_quarantine_and_metrics(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    summary = run_ingest(corpus(tmp_path), paths)

    assert summary == {"read": "4 files / 10 records", "wrote": "3 documents, 5 queries, 2 quarantined"}

    documents = read_jsonl(paths.documents)
    assert [d["doc_id"] for d in documents] == ["POL-1", "vpn", "QP-1"]
    assert documents[0] == {
        "doc_id": "POL-1",
        "title": "Nghỉ phép năm",
        "text": f"# Nghỉ phép năm\n\n{BODY}",
        "source": "src/docs/nghi-phep.md",  # relative to paths.root, the repository root
        "metadata": {"tags": ["phép năm", "lamhr"]},
    }
    assert documents[2]["source"] == "src/quick.csv:2"

    queries = read_jsonl(paths.queries)
    assert [q["query_id"] for q in queries] == ["q0", "q1", "q2", "q3", "q9"]
    assert queries[-1]["positive_doc_ids"] == ["QP-1", "vpn"]
    assert queries[-1]["source"] == "src/questions.jsonl:6"

    quarantine = read_jsonl(paths.ingest_quarantine)
    assert [(q["kind"], q["reason"], q["source"]) for q in quarantine] == [
        ("document", "duplicate_text", "src/quick.csv:3"),
        ("query", "malformed_json", "src/questions.jsonl:3"),
    ]
    assert quarantine[0]["record"]["duplicate_of"] == "vpn"
    assert quarantine[1]["record"]["line"] == '{"id": "broken", "query": "thiếu dấu ngoặc"'

    metrics = json.loads(paths.metrics("ingest").read_text(encoding="utf-8"))
    assert metrics["quarantine_reasons"] == {"duplicate_text": 1, "malformed_json": 1}
    assert metrics["documents"] | {"by_type": None} == {
        "read": 4,
        "kept": 3,
        "repaired_mojibake": 0,
        "quarantined": 1,
        "duplicates": 1,
        "by_type": None,
        "by_source": {"src/docs": 2, "src/quick.csv": 1},
        "by_format": {"csv": 1, "md": 2},
    }
    assert metrics["queries"]["read"] == 6 and metrics["queries"]["kept"] == 5
    assert metrics["queries"]["quarantined"] == 1
    assert metrics["queries"]["positives_per_query_mean"] == 1.2


def test_run_ingest_is_deterministic(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    section = corpus(tmp_path)
    outputs = [paths.documents, paths.queries, paths.ingest_quarantine, paths.metrics("ingest")]
    run_ingest(section, paths)
    first = [p.read_bytes() for p in outputs]
    run_ingest(section, paths)
    assert [p.read_bytes() for p in outputs] == first


def test_run_ingest_config_error_writes_nothing(tmp_path: Path) -> None:
    section = corpus(tmp_path)
    section["documents"] = [*section["documents"], "missing.csv"]
    paths = Paths(tmp_path)
    with pytest.raises(IngestError, match=r"ingest.documents\[2\].path.*'missing.csv'"):
        run_ingest(section, paths)
    assert not paths.documents.exists() and not paths.metrics("ingest").exists()


def test_run_ingest_normalizes_a_large_table_in_a_worker_pool_with_the_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A table source of PARALLEL_MIN_BYTES or more is normalized by worker processes a batch ahead; documents,
    quarantine and metrics are the same bytes as in-process, with mojibake, both tone styles, string metadata, a
    duplicate text, a too-short text and a malformed line spread over several batches."""
    from ragtune.ingest import run as ingest_run
    from ragtune.ingest import state

    rows = [
        {"id": f"D{i}", "title": f"Quy định {i} hòa giải", "text": f"Điều {i}.  Khỏe   mạnh\u00a0và thuỷ lợi. {BODY}",
         "unit": f"Phòng  {i % 3}"}
        for i in range(9)
    ]  # fmt: skip
    rows[3]["text"] = "Dá»±a trÃªn quy Ä‘á»‹nh cá»§a Luáº­t nÃ y, ngÆ°á»i lao Ä‘á»™ng Ä‘Æ°á»£c nghá»‰ phÃ©p."  # mojibake
    rows[5]["text"] = rows[1]["text"]  # duplicate text
    rows[7]["text"] = "ngắn"  # too short
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    lines.insert(4, '{"id": "broken", "text": "thiếu dấu ngoặc"')

    def run(name: str, workers: int) -> list[bytes]:
        monkeypatch.setenv("RAGTUNE_WORKERS", str(workers))
        root = tmp_path / name
        write(root / "src/docs.jsonl", "\n".join(lines) + "\n")
        paths = Paths(root)
        run_ingest(shipped_params("ingest", root="src", documents=["docs.jsonl"], queries=[]), paths)
        files = (paths.documents, paths.ingest_quarantine, paths.metrics("ingest"))
        return [p.read_bytes() for p in files]

    one = run("one", 1)
    used = []
    real = state.ordered_map
    monkeypatch.setattr(state, "ordered_map", lambda *a, **k: used.append(k["parallel"]) or real(*a, **k))
    monkeypatch.setattr(ingest_run, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(ingest_run, "NORMALIZE_BATCH", 2)
    assert run("pool", 2) == one
    assert used == [True]
    documents = one[0].decode()
    assert "Dựa trên quy định" in documents and "Khỏe mạnh và thủy lợi" in documents and "Phòng 1" in documents
    quarantine = one[1].decode()
    assert all(reason in quarantine for reason in ("duplicate_text", "too_short", "malformed_json"))
