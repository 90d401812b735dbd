"""Shared fixtures: a tiny BERT embedder built from scratch, so unit tests run in seconds with no download."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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


def _build_tiny_embedder(root: Path) -> Path:
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import BertConfig, BertModel, BertTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=600, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], min_frequency=1
    )
    tok.train_from_iterator(VI_SENTENCES * 3, trainer)
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
