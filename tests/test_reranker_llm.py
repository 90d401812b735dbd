"""The LLM reranker (Qwen3-Reranker's yes/no recipe) on a tiny random Qwen3 built here: no download, seconds."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from ragtune.rerankers.llm import MARKER, PREFIX, SUFFIX, LLMReranker  # noqa: E402
from ragtune.train.reranker.llm import (  # noqa: E402
    MIN_STEPS,
    LLMRerankerConfigError,
    LLMRerankerSettings,
    build_trainer,
    dev_rerank_metrics,
    pair_rows,
    train_llm_reranker,
    training_warnings,
)

SENTENCES = [
    "Nhân viên được nghỉ phép năm 12 ngày và đăng ký trên cổng LamHR trước ba ngày làm việc.",
    "Hướng dẫn kết nối mạng riêng ảo HL-VPN trên máy tính Windows và macOS.",
    "Báo cáo sự cố hệ thống production tháng ba do ổ đĩa đầy gây gián đoạn dịch vụ.",
    "Mật khẩu phải có ít nhất mười hai ký tự, bao gồm chữ hoa, chữ thường và chữ số.",
    "Sao lưu cơ sở dữ liệu PostgreSQL được thực hiện hằng đêm lúc hai giờ sáng.",
    "Nhân viên được nghỉ bao nhiêu ngày phép năm?",
    "Kết nối HL-VPN trên macOS như thế nào?",
    "Mật khẩu cần bao nhiêu ký tự?",
]
INSTRUCTION = "Given a Vietnamese question, judge whether the passage answers it"
SPECIALS = ["<|endoftext|>", "[UNK]", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def tiny_qwen3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer Qwen3 (hidden 32) with a word-level tokenizer whose vocabulary is built, not trained (so
    it is identical in every run): the prompt's words, the sentences' words, "yes", "no", and the chat-template
    pieces as special tokens. Untied embeddings, so a test can set an output row without moving an input one."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    pre = pre_tokenizers.Whitespace()
    texts = [PREFIX, SUFFIX, INSTRUCTION, "<Instruct>: <Query>: <Document>:", "yes no", *SENTENCES]
    words = sorted({w for t in texts for w, _ in pre.pre_tokenize_str(t)} - set(SPECIALS))
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate([*SPECIALS, *words])}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="<|endoftext|>", eos_token="<|im_end|>"
    )
    hf_tok.add_special_tokens({"additional_special_tokens": SPECIALS[2:]})
    root = tmp_path_factory.mktemp("tiny_qwen3")
    hf_tok.save_pretrained(root)
    config = Qwen3Config(
        vocab_size=len(hf_tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        pad_token_id=hf_tok.pad_token_id,
    )
    torch.manual_seed(0)
    Qwen3ForCausalLM(config).save_pretrained(root)
    return root


def settings(base: Path, **overrides: Any) -> LLMRerankerSettings:
    values = dict(
        base=str(base),
        instruction=INSTRUCTION,
        max_length=160,
        lr=1e-3,
        epochs=1.0,
        max_steps=2,
        batch_size=4,
        gradient_accumulation_steps=1,
        warmup_ratio=0.0,
        weight_decay=0.0,
        lora_r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        target_modules=list(TARGETS),
        precision="fp32",
        seed=7,
        logging_steps=1,
    )
    return LLMRerankerSettings.from_params({**values, **overrides})


GROUPS = [
    {"query": SENTENCES[5], "pos": [SENTENCES[0]], "neg": [SENTENCES[1], SENTENCES[2]]},
    {"query": SENTENCES[6], "pos": [SENTENCES[1]], "neg": [SENTENCES[3], SENTENCES[4]]},
    {"query": SENTENCES[7], "pos": [SENTENCES[3]], "neg": [SENTENCES[0], SENTENCES[4]]},
]
DEV = [
    {"query": SENTENCES[5], "positive": [SENTENCES[0]], "documents": [SENTENCES[2], SENTENCES[0], SENTENCES[4]]},
    {"query": SENTENCES[7], "positive": [], "documents": [SENTENCES[1], SENTENCES[2]]},  # retriever missed it
]


def load(path: Path) -> LLMReranker:
    return LLMReranker.from_pretrained(path, instruction=INSTRUCTION, max_length=160, dtype=torch.float32)


def test_label_tokens_are_the_tokenizers_yes_and_no(tiny_qwen3: Path) -> None:
    rr = load(tiny_qwen3)
    assert rr.yes_id == rr.tokenizer.convert_tokens_to_ids("yes") != rr.tokenizer.unk_token_id
    assert rr.no_id == rr.tokenizer.convert_tokens_to_ids("no") != rr.yes_id


def test_score_is_p_yes_at_the_last_position(tiny_qwen3: Path) -> None:
    """Output rows set by hand so that logit(yes) - logit(no) = +8 at every pair's last position: P(yes) ≈ 1;
    swapped: ≈ 0. A decoy token gets a far larger logit, and must not matter (softmax over [no, yes] only)."""
    rr = load(tiny_qwen3)
    pairs = [(SENTENCES[5], SENTENCES[0]), (SENTENCES[6], SENTENCES[2] + " " + SENTENCES[4]), (SENTENCES[7], "")]
    with torch.no_grad():
        hidden = rr.model.model(**rr.encode(pairs)).last_hidden_state[:, -1, :]  # after the final norm
        u = torch.linalg.lstsq(hidden, torch.ones(len(pairs), 1)).solution[:, 0]  # hidden · u = 1 for every pair
        head = rr.model.lm_head.weight
        decoy = rr.tokenizer.convert_tokens_to_ids("Judge")
        head[rr.yes_id], head[rr.no_id], head[decoy] = 4 * u, -4 * u, 50 * u
    np.testing.assert_allclose(rr.predict(pairs, batch_size=2), 1 / (1 + math.exp(-8)), atol=1e-3)
    with torch.no_grad():
        head[rr.yes_id], head[rr.no_id] = -4 * u, 4 * u
    np.testing.assert_allclose(rr.predict(pairs, batch_size=3), 1 / (1 + math.exp(8)), atol=1e-3)


def test_left_padding_and_document_only_truncation(tiny_qwen3: Path) -> None:
    rr = load(tiny_qwen3)
    long_doc = " ".join(SENTENCES[:5] * 20)
    short = rr.pair_ids(SENTENCES[5], SENTENCES[0])
    cut = rr.pair_ids(SENTENCES[5], long_doc)
    assert len(cut) == rr.max_length
    query_part = rr.pair_ids(SENTENCES[5], "")
    assert cut[: len(query_part) - len(rr._suffix)] == query_part[: -len(rr._suffix)]  # the query survives whole
    assert cut[-len(rr._suffix) :] == rr._suffix == short[-len(rr._suffix) :]  # so does the prompt's end
    batch = rr.encode([(SENTENCES[5], SENTENCES[0]), (SENTENCES[5], long_doc)])
    assert batch["attention_mask"][:, -1].tolist() == [1, 1]  # the last position is real in every row
    assert batch["attention_mask"][0, 0].item() == 0 and batch["input_ids"][0, 0].item() == rr.pad_id
    # batching and padding do not change a score
    pairs = [(SENTENCES[5], SENTENCES[0]), (SENTENCES[5], long_doc), (SENTENCES[7], SENTENCES[3])]
    np.testing.assert_allclose(rr.predict(pairs, batch_size=1), rr.predict(pairs, batch_size=3), atol=1e-5)


def test_lora_adapters_train_base_weights_frozen_and_save_load_round_trips(tiny_qwen3: Path, tmp_path: Path) -> None:
    cfg = settings(tiny_qwen3, lr=5e-2, max_steps=3)
    rr = load(tiny_qwen3)
    trainer = build_trainer(rr, pair_rows(GROUPS), cfg, tmp_path / "ckpt")
    before = {n: p.detach().clone() for n, p in rr.model.named_parameters()}
    assert {n for n, p in rr.model.named_parameters() if p.requires_grad} == {n for n in before if "lora_" in n}
    trainer.train()
    after = dict(rr.model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n].detach())}
    assert changed and all("lora_" in n for n in changed)  # adapters moved; not one base weight did
    assert any("lora_B" in n for n in changed)  # B starts at 0: it moving is what changes the scores

    pairs = [(g["query"], t) for g in GROUPS for t in g["pos"] + g["neg"]]
    scores = rr.predict(pairs)
    rr.save(tmp_path / "out")  # merges the adapters
    marker = json.loads((tmp_path / "out" / MARKER).read_text(encoding="utf-8"))
    assert marker["kind"] == "llm" and marker["base"] == str(tiny_qwen3)
    assert marker["prompt"]["instruction"] == INSTRUCTION and marker["prompt"]["max_length"] == 160
    assert not (tmp_path / "out" / "adapter_config.json").exists()  # a plain causal LM: no peft needed to load
    loaded = LLMReranker.load(tmp_path / "out")
    np.testing.assert_allclose(loaded.predict(pairs), scores, atol=1e-5)
    assert not np.allclose(load(tiny_qwen3).predict(pairs), scores, atol=1e-4)  # and training changed them


def test_two_step_run_reports_lr_steps_loss_and_dev(tiny_qwen3: Path, tmp_path: Path) -> None:
    cfg = settings(tiny_qwen3, lr=3.7e-5, warmup_ratio=0.5)  # warmup: the current lr never equals the peak
    metrics = train_llm_reranker(GROUPS, DEV, cfg, tmp_path / "out", tmp_path / "ckpt")
    eff, train = metrics["effective"], metrics["train"]
    assert eff["learning_rate"] == cfg.lr  # read back from the optimizer's parameter groups
    assert eff["optimizer_steps"] == 2 and eff["trainable_params"] < eff["total_params"]
    assert eff["label_token_ids"]["yes"] != eff["label_token_ids"]["no"]
    assert train["rows"] == 9 and train["positives"] == 3
    assert train["random_baseline"] == round(math.log(2), 4)
    assert train["prior_baseline"] == round(-(1 / 3 * math.log(1 / 3) + 2 / 3 * math.log(2 / 3)), 4)
    assert train["loss_first"] is not None and train["loss_last"] is not None
    warnings = "\n".join(metrics["warnings"])
    assert f"only 2 LLM reranker optimizer steps (< {MIN_STEPS})" in warnings
    assert "random baseline ln 2" in warnings  # a random tiny model after 2 tiny steps answers like a coin
    dev = metrics["dev"]
    assert dev["n_queries"] == 2 and set(dev) >= {"input", "before", "after"}
    for key in ("input", "before", "after"):
        assert set(dev[key]) == {"recall@1", "ndcg@10", "mrr@10"}
    assert dev["input"]["recall@1"] == 0.0 and dev["input"]["mrr@10"] == 0.25  # positive 2nd; the missed one: 0
    assert (tmp_path / "out" / MARKER).exists()


def test_dev_metrics_use_the_projects_definitions() -> None:
    got = dev_rerank_metrics(DEV, None, batch_size=4)
    assert got == {"recall@1": 0.0, "ndcg@10": round((1 / math.log2(3)) / 2, 4), "mrr@10": 0.25}


def test_settings_have_no_defaults_and_refuse_bad_values(tiny_qwen3: Path) -> None:
    with pytest.raises(LLMRerankerConfigError, match="missing key"):
        LLMRerankerSettings.from_params({"base": "x"})
    with pytest.raises(LLMRerankerConfigError, match="lora_dropout"):
        settings(tiny_qwen3, lora_dropout=1.5)
    with pytest.raises(LLMRerankerConfigError, match="target_modules"):
        settings(tiny_qwen3, target_modules=[])
    assert replace(settings(tiny_qwen3), lr=2.0).lr == 2.0  # frozen dataclass: replace, not assignment


def test_warnings_quiet_for_a_run_that_learned_and_loud_for_one_that_learned_the_prior() -> None:
    learned = {"input": {"ndcg@10": 0.5}, "before": {"ndcg@10": 0.6}, "after": {"ndcg@10": 0.7}}
    assert training_warnings(steps=MIN_STEPS, loss_last=0.3, prior=0.6365, dev=learned) == []
    got = training_warnings(steps=MIN_STEPS, loss_last=0.62, prior=0.6365, dev=learned)
    assert len(got) == 1 and "yes/no share" in got[0]  # below ln 2, but no better than the class balance
    worse = {"input": {"ndcg@10": 0.8}, "before": {"ndcg@10": 0.75}, "after": {"ndcg@10": 0.7}}
    got = training_warnings(steps=MIN_STEPS, loss_last=0.3, prior=0.6365, dev=worse)
    # worse than before training: not a trainer warning; the stage ships the start and says so (kinds.run_kind)
    assert len(got) == 1 and "than the retriever" in got[0]
