"""Shared fixtures: a tiny BERT embedder built from scratch, so unit tests run in seconds with no download."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from ragtune.io import write_json, write_jsonl

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAGTUNE_QUIET", "1")

VI_SENTENCES = [
    "Nhân viên được nghỉ phép năm 12 ngày và đăng ký trên cổng LamHR trước ba ngày làm việc.",
    "Quy trình đăng ký khóa đào tạo cần quản lý trực tiếp phê duyệt trên LamAcademy.",
    "Người nghiện ma túy từ đủ 18 tuổi trở lên bị áp dụng biện pháp xử lý hành chính.",
    "Hướng dẫn kết nối mạng riêng ảo HL-VPN trên máy tính Windows và macOS.",
    "Báo cáo sự cố hệ thống production tháng ba do ổ đĩa đầy gây gián đoạn dịch vụ.",
    "Chính sách làm việc từ xa áp dụng tối đa hai ngày mỗi tuần cho nhân viên chính thức.",
    "Hợp đồng lao động phải được lập thành văn bản và ký kết trước khi bắt đầu công việc.",
    "Doanh thu quý một năm 2026 tăng mười hai phần trăm so với cùng kỳ năm trước.",
    "Mật khẩu phải có ít nhất mười hai ký tự, bao gồm chữ hoa, chữ thường và chữ số.",
    "Sao lưu cơ sở dữ liệu PostgreSQL được thực hiện hằng đêm lúc hai giờ sáng.",
]


# the default reranker kind's token lengths, within the tiny embedder's positions
TINY_LATE_INTERACTION = {"max_query_length": 32, "max_doc_length": 64}


def load_benchmark(name: str) -> Any:
    """``benchmarks/<name>.py`` as a module (benchmarks are scripts, not a package), for tests of their pure parts."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses in the module look themselves up here
    spec.loader.exec_module(module)
    return module


def shipped_params(name: str, **overrides: Any) -> dict[str, Any]:
    """The shipped params.yaml's ``name`` section with ``overrides`` applied: a complete section, as
    ``StageConfig.from_params`` requires (a missing key is an error), so a test names only the keys it is about and
    every other value is the one the pipeline runs with. Unknown override keys pass through, for tests of refusal."""
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    return {**params[name], **overrides}


def _build_tiny_embedder(root: Path) -> Path:
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import BertConfig, BertModel, BertTokenizerFast

    # The vocabulary is built, not trained: tokenizers' WordPieceTrainer breaks merge ties in a per-process random
    # order, so a trained vocabulary (and every ranking the tiny model makes) changed from one pytest run to the next,
    # and a test asserting on a ranking passed or failed by luck. Whole corpus words, plus every character alone and
    # as a ``##`` continuation, in sorted order: identical in every run, and any text over this alphabet tokenizes.
    # Words are normalised as BertTokenizerFast will normalise text (it installs this normalizer), so they match.
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    words = sorted({w for s in VI_SENTENCES for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(s))})
    chars = sorted({c for w in words for c in w})
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens = dict.fromkeys([*specials, *chars, *(f"##{c}" for c in chars), *words])
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(tokens)}, unk_token="[UNK]"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    hf_tok = BertTokenizerFast(tokenizer_object=tok, model_max_length=128)
    hf_dir = root / "hf"
    hf_tok.save_pretrained(hf_dir)
    config = BertConfig(
        vocab_size=hf_tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    import torch

    torch.manual_seed(0)
    BertModel(config).save_pretrained(hf_dir)
    from sentence_transformers.sentence_transformer import modules as st_models

    transformer = st_models.Transformer(str(hf_dir), max_seq_length=128)
    pooling = st_models.Pooling(transformer.get_embedding_dimension(), "mean")
    model = SentenceTransformer(
        modules=[transformer, pooling, st_models.Normalize()],
        prompts={"query": "query: ", "passage": "passage: "},
        device="cpu",
    )
    out = root / "tiny-embedder"
    model.save(str(out))
    return out


@pytest.fixture(scope="session")
def tiny_embedder_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path to a saved 2-layer, 32-dim sentence-transformers model with e5-style prompts."""
    return _build_tiny_embedder(tmp_path_factory.mktemp("models"))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the embedding cache per-test so tests never read each other's vectors."""
    monkeypatch.setenv("RAGTUNE_CACHE", str(tmp_path / "ragtune-cache"))


# ----------------------------------------------------------------------------- a tiny copy of the repo
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


# A corpus with access labels (mixed case and spacing, one document unlabeled) and filterable metadata, for the
# access-level and filter tests of search, the CLI and serve. Two documents per level of the shipped scale.
LEVELED_DOCS = {
    "HR-1": ("Nghỉ phép năm", "Nhân viên chính thức có mười hai ngày nghỉ phép năm, đăng ký trên LamHR."),
    "HR-2": ("Làm việc từ xa", "Nhân viên được làm việc từ xa tối đa hai ngày mỗi tuần, đăng ký theo tháng."),
    "IT-1": ("Mật khẩu", "Mật khẩu dài ít nhất mười hai ký tự và phải đổi sau chín mươi ngày."),
    "IT-2": ("Kết nối VPN", "Cài WireGuard và nhập tệp cấu hình HL-VPN khi làm việc từ xa."),
    "IT-3": ("Sao lưu dữ liệu", "Cơ sở dữ liệu PostgreSQL được sao lưu lúc hai giờ sáng, giữ ba mươi ngày."),
    "FN-1": ("Công tác phí", "Chi phí đi công tác thanh toán qua LamPay trong năm ngày sau chuyến đi."),
    "SEC-1": ("Báo cáo sự cố", "Sự cố an toàn thông tin mật khẩu bị lộ phải báo trong một giờ qua LamDesk."),
    "HR-3": ("Lương thưởng", "Bảng lương thưởng của ban giám đốc và mức tăng lương nhân viên năm nay."),
}
LEVELED_METADATA: dict[str, dict[str, Any]] = {
    "HR-1": {"access_level": "public", "document_type": "Policy", "tags": ["nghỉ phép", "nhân sự"]},
    "HR-2": {"document_type": "Policy", "tags": ["nhân sự", "từ xa"]},  # unlabeled: access.unlabeled (public)
    "IT-1": {"access_level": " Internal ", "document_type": "Guide", "tags": ["bảo mật"]},
    "IT-2": {"access_level": "internal", "document_type": "Guide", "tags": ["vpn", "từ xa"]},
    "IT-3": {"access_level": "CONFIDENTIAL", "document_type": "Procedure", "tags": ["sao lưu"]},
    "FN-1": {"access_level": "confidential", "document_type": "Policy", "tags": ["tài chính"]},
    "SEC-1": {"access_level": "Restricted", "document_type": "Report", "tags": ["bảo mật", "sự cố"]},
    "HR-3": {"access_level": "restricted", "document_type": "Policy", "tags": ["nhân sự", "lương"]},
}
LEVELED_RANK = {"HR-1": 0, "HR-2": 0, "IT-1": 1, "IT-2": 1, "IT-3": 2, "FN-1": 2, "SEC-1": 3, "HR-3": 3}


def write_serving_models(
    root: Path,
    tiny_embedder_path: Path,
    docs: dict[str, tuple[str, str]],
    *,
    candidate_k: int,
    metadata: dict[str, dict[str, Any]] | None = None,
    access: dict[str, Any] | None = None,
) -> Path:
    """A repo-shaped folder as `dvc repro` leaves it for `ragtune search` and `ragtune serve`: models/embedder,
    models/reranker (a tiny cross-encoder), models/index over one chunk per document of ``docs`` (id → (title,
    body); metadata department = the id's prefix, updated with ``metadata[id]``, e.g. ``access_level`` or ``tags``)
    and models/pipeline.json serving ft_hybrid+rerank. ``access`` is the params section (default: the shipped one).

    Passages are embedded one at a time, so a chunk's vector does not depend on which other documents are indexed:
    an index of a subset of ``docs`` holds exactly the rows of the full one. Returns root."""
    from ragtune.access import AccessScale
    from ragtune.models.identity import model_fingerprint
    from ragtune.retrieval import load_dense
    from ragtune.search import write_index
    from ragtune.train.reranker.trainer import load_reranker

    models = root / "models"
    shutil.copytree(tiny_embedder_path, models / "embedder")
    load_reranker(tiny_embedder_path, 64, seed=0).save_pretrained(str(models / "reranker"))
    chunks = [
        {"chunk_id": f"{d}#0000", "doc_id": d, "title": t, "section": t, "text": f"{t}\n{body}"}
        for d, (t, body) in docs.items()
    ]
    metadata = metadata or {}
    records = [
        {"doc_id": d, "title": t, "metadata": {"department": d.split("-")[0], **metadata.get(d, {})}}
        for d, (t, _) in docs.items()
    ]
    embedder = load_dense({"batch_size": 1}, name=str(models / "embedder"))
    embedder.encoder.use_cache = False
    write_index(
        models / "index",
        chunks,
        records,
        embedder.encode_passages([c["text"] for c in chunks]),
        {
            "embedder": "models/embedder",
            "embedder_fingerprint": model_fingerprint(models / "embedder"),
            "query_prompt": embedder.query_prompt,
            "passage_prompt": embedder.passage_prompt,
            "bm25": {"tokenizer": "syllable", "backend": "bm25s"},
        },
        AccessScale.from_params(access or shipped_params("access")),
    )
    pipeline = {"retriever": "ft_hybrid", "rerank": True, "rerank_k": 3, "fusion_weight": 0.5}
    write_json(
        models / "pipeline.json", {"system": "ft_hybrid+rerank", **pipeline, "candidate_k": candidate_k, "rrf_k": 60}
    )
    return root


def make_tiny_repo(tmp_path: Path, tiny_embedder_path: Path) -> tuple[Path, dict, callable]:
    """A copy of this repo with a tiny corpus and the tiny embedder; returns (path, params, run-dvc function)."""
    work = tmp_path / "repo"
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split("\n")
    for rel in filter(None, files):
        if not (REPO / rel).is_file():  # data/sample comes too: evaluate's forgetting check reads it
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
    params["train_reranker"].update(
        {"max_steps": 8, "batch_size": 4, "eval_steps": 4, "save_steps": 4, "max_length": 64, "rank_max": 10}
    )
    params["train_reranker"]["late_interaction"].update(TINY_LATE_INTERACTION)
    params["evaluate"]["rerank_k"] = 5
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


@pytest.fixture
def tiny_repo(tmp_path: Path, tiny_embedder_path: Path):
    """(path, params, run_dvc) for a committed copy of the repo with a tiny corpus and the tiny embedder."""
    return make_tiny_repo(tmp_path, tiny_embedder_path)


# ----------------------------------------------------------------------------- one stage, inputs written by hand
def make_stage_dir(tmp_path: Path, tiny_embedder_path: Path, *, dev: bool = True, **sections: dict) -> Path:
    """A folder with what train_embedder and train_reranker read, written directly (no ingest … negatives run).

    The TOPICS corpus, one chunk per document, three training questions per document with the next document's chunk
    as hard negative, and two dev questions (``dev=False``: an empty dev split). ``sections`` update params.yaml's
    sections (``train_embedder={"enabled": False}``). ``models/embedder`` is the tiny embedder, for the reranker.
    """
    from transformers import AutoTokenizer

    work = tmp_path / "stage"
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_embedder_path))
    chunks = [
        {"chunk_id": f"D{i}#0", "doc_id": f"D{i}", "text": f"{title}\n{body}"} for i, (title, body) in enumerate(TOPICS)
    ]
    for c in chunks:  # as the chunk stage counts them: train_embedder checks the longest fits its max_seq_length
        c["n_tokens"] = len(tokenizer(c["text"], add_special_tokens=False)["input_ids"])
    questions = [
        {"query_id": f"Q{i}{j}", "query": q, "positive_doc_ids": [f"D{i}"], "positive_chunk_ids": [f"D{i}#0"]}
        for i, (title, body) in enumerate(TOPICS)
        for j, q in enumerate([f"{title} quy định thế nào?", body.split(".")[0].lower() + "?", f"hỏi về {title}"])
    ]
    held = {"Q00", "Q31"}
    train = [q for q in questions if q["query_id"] not in held]
    groups = [
        {
            "query_id": q["query_id"],
            "query": q["query"],
            "pos": [chunks[int(q["query_id"][1])]["text"]],
            "pos_ids": q["positive_chunk_ids"],
            "neg": [chunks[(int(q["query_id"][1]) + 1) % len(chunks)]["text"]],
            "neg_ids": [chunks[(int(q["query_id"][1]) + 1) % len(chunks)]["chunk_id"]],
        }
        for q in train
    ]
    write_jsonl(work / "data/chunks/chunks.jsonl", chunks)
    write_jsonl(work / "data/negatives/train_groups.jsonl", groups)
    write_jsonl(work / "data/pairs/train.jsonl", train)
    write_jsonl(work / "data/pairs/synthetic.jsonl", [])
    write_jsonl(work / "data/pairs/dev.jsonl", [q for q in questions if q["query_id"] in held] if dev else [])
    write_jsonl(work / "data/pairs/test.jsonl", [])
    shutil.copytree(tiny_embedder_path, work / "models/embedder")

    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["model"].update({"embedder": str(tiny_embedder_path), "max_seq_length": 64})
    # max_seq_length 80: the longest chunk is 57 tiny-tokenizer tokens, 67 with the 8-token prompt and 2 specials
    params["train_embedder"].update({"batch_size": 4, "max_seq_length": 80, "lr": 1e-3, "auto_min_steps": 6})
    params["train_reranker"].update({"batch_size": 4, "max_length": 64, "rank_max": 6, "auto_min_steps": 6})
    params["train_reranker"]["late_interaction"].update(TINY_LATE_INTERACTION)
    for name, values in sections.items():
        params[name].update(values)
    write_params(work, params)
    return work


def run_stage(work: Path, name: str, *, fails: bool = False) -> str:
    """``python stages/<name>.py`` of this repo, run in ``work``; returns its output (stdout + stderr).

    ``fails=True``: the stage must exit with an error (a refused config), and the output is its message.
    """
    env = dict(os.environ, HF_HUB_OFFLINE="1", RAGTUNE_QUIET="1", COLUMNS="200")
    proc = subprocess.run(
        [sys.executable, str(REPO / "stages" / f"{name}.py")], cwd=work, env=env, capture_output=True, text=True
    )
    if fails:
        assert proc.returncode != 0, f"{name} succeeded, but it should have failed:\n{proc.stdout}\n{proc.stderr}"
    else:
        assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr
