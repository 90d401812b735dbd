"""End-to-end: `dvc repro` of the whole DAG on a tiny corpus with the tiny embedder, in a temporary repo copy."""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ragtune.jsonl import read_json, read_jsonl, write_jsonl

REPO = Path(__file__).resolve().parents[1]

TOPICS = [
    (
        "Nghỉ phép năm",
        "Nhân viên chính thức có mười hai ngày nghỉ phép năm. Đơn nghỉ phép gửi trên LamHR trước ba ngày.",
    ),
    (
        "Đào tạo nội bộ",
        "Khóa đào tạo được đăng ký trên LamAcademy. Quản lý trực tiếp phê duyệt trong hai ngày làm việc.",
    ),
    ("Kết nối VPN", "Cài WireGuard và nhập tệp cấu hình HL-VPN. Kết nối bị ngắt sau tám giờ không hoạt động."),
    ("Mật khẩu", "Mật khẩu dài ít nhất mười hai ký tự. Mật khẩu phải đổi sau chín mươi ngày sử dụng."),
    ("Sao lưu dữ liệu", "Cơ sở dữ liệu PostgreSQL được sao lưu lúc hai giờ sáng. Bản sao lưu giữ ba mươi ngày."),
    ("Công tác phí", "Chi phí đi công tác được thanh toán qua LamPay. Hóa đơn nộp trong năm ngày sau chuyến đi."),
    (
        "Làm việc từ xa",
        "Nhân viên được làm việc từ xa tối đa hai ngày mỗi tuần. Lịch làm việc từ xa đăng ký theo tháng.",
    ),
    ("Báo cáo sự cố", "Sự cố an toàn thông tin phải báo trong một giờ. Báo cáo gửi qua LamDesk cho đội an ninh."),
]


def _tree_hash(root: Path, rels: list[str]) -> dict[str, str]:
    return {r: hashlib.sha256((root / r).read_bytes()).hexdigest() for r in rels}


def make_tiny_repo(tmp_path: Path, tiny_embedder_path: Path) -> tuple[Path, dict, callable]:
    """A copy of this repo with a tiny corpus and the tiny embedder; returns (path, params, run-dvc function)."""
    work = tmp_path / "repo"
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split("\n")
    for rel in filter(None, files):
        if rel.startswith("data/sample/") or not (REPO / rel).is_file():
            continue
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, work / rel)
    subprocess.run(["git", "init", "-q"], cwd=work, check=True)

    docs = []
    for i, (title, body) in enumerate(TOPICS):
        docs.append(
            {"id": f"D{i}", "title": title, "text": f"{body}\n\n## Chi tiết\n{body} Mục {i} áp dụng cho mọi phòng ban."}
        )
    queries = [
        {"qid": f"Q{i}{j}", "question": q, "docs": f"D{i}"}
        for i, (title, body) in enumerate(TOPICS)
        for j, q in enumerate(
            [f"{title} quy định thế nào?", body.split(".")[0].lower() + "?", f"hỏi về {title.lower()}"]
        )
    ]
    write_jsonl(work / "data/tiny/docs.jsonl", docs)
    write_jsonl(work / "data/tiny/questions.jsonl", queries)

    params = yaml.safe_load((work / "params.yaml").read_text(encoding="utf-8"))
    params["model"]["embedder"] = str(tiny_embedder_path)
    params["model"]["max_seq_length"] = 128
    params["ingest"]["root"] = "data/tiny"
    params["ingest"]["documents"] = [{"path": "docs.jsonl"}]
    params["ingest"]["queries"] = [
        {"path": "questions.jsonl", "columns": {"id": "qid", "query": "question", "positives": "docs"}}
    ]
    params["chunk"].update({"max_tokens": 48, "overlap_tokens": 8})
    params["pairs"].update({"dev_ratio": 0.2, "test_ratio": 0.3})
    params["negatives"]["dense_range_max"] = 10
    params["train_embedder"].update(
        {"max_steps": 12, "batch_size": 4, "eval_steps": 6, "save_steps": 6, "lr": 1e-4, "max_seq_length": 64}
    )
    write_params(work, params)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "add", "-A"], cwd=work, check=True)
    subprocess.run([*git, "commit", "-qm", "tiny"], cwd=work, check=True)

    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["HF_HUB_OFFLINE"] = "1"
    env["RAGTUNE_QUIET"] = "1"
    dvc = [sys.executable, "-m", "dvc"]

    def run(*args: str) -> str:
        proc = subprocess.run([*dvc, *args], cwd=work, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, f"dvc {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout + proc.stderr

    return work, params, run


def write_params(work: Path, params: dict) -> None:
    (work / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True, sort_keys=False), encoding="utf-8")


@pytest.mark.slow
def test_dvc_repro_on_tiny_config(tmp_path: Path, tiny_embedder_path: Path):
    work, params, run = make_tiny_repo(tmp_path, tiny_embedder_path)
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
    first = _tree_hash(work, outputs)
    assert "up to date" in run("repro") or "didn't change" in run("repro")
    shutil.rmtree(tmp_path / "ragtune-cache", ignore_errors=True)  # recompute embeddings from scratch too
    run("repro", "--force")
    assert _tree_hash(work, outputs) == first, "two runs gave different outputs"

    # a param change re-runs only the stages that read it (and their downstream)
    params["evaluate"]["rrf_k"] = 10
    write_params(work, params)
    out = run("repro")
    assert "[evaluate] read" in out and "[chunk] read" not in out
