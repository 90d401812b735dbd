"""The late-interaction reranker: MaxSim as hand-computed, a meaningful untrained start, training and save/load."""

from __future__ import annotations

import json
import math
import string
from pathlib import Path
from typing import Any

import pytest
from conftest import VI_SENTENCES

from ragtune import rerank
from ragtune.rerankers.late_interaction import MARKER, LateInteractionError, LateInteractionReranker
from ragtune.train.reranker.late_interaction import (
    LateInteractionConfigError,
    LateInteractionSettings,
    dev_rerank_metrics,
    train_late_interaction,
)

QUERY = "nghỉ phép năm bao nhiêu ngày"
DOCS = ["Nhân viên được nghỉ phép năm 12 ngày.", "Sao lưu cơ sở dữ liệu, hằng đêm lúc hai giờ sáng."]


def settings(**overrides: Any) -> LateInteractionSettings:
    values = dict(
        seed=0,
        lr=7.0e-5,
        epochs=1.0,
        max_steps=3,
        batch_size=4,
        n_negatives=2,
        max_query_length=16,
        max_doc_length=48,
        scale=20.0,
        warmup_ratio=0.0,
        scheduler="linear",
        weight_decay=0.01,
        bf16=False,
        attention_dropout=None,
        freeze_embeddings=False,
        logging_steps=1,
    )
    return LateInteractionSettings.from_params({**values, **overrides})


def hand_maxsim(path: Path, query: str, doc: str, q_len: int, d_len: int) -> float:
    """MeanMaxSim from the raw transformer: e5 prompts, L2-normalised token vectors, padding out (one text per
    call: no padding), single-token punctuation out of the passage, max over passage tokens, mean over query ones."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    enc = AutoModel.from_pretrained(path).eval()

    def vectors(text: str, n: int, skip_punct: bool) -> torch.Tensor:
        t = tok(text, truncation=True, max_length=n, return_tensors="pt")
        with torch.no_grad():
            h = torch.nn.functional.normalize(enc(**t).last_hidden_state[0], dim=-1)
        tokens = tok.convert_ids_to_tokens(t["input_ids"][0])
        keep = [i for i, x in enumerate(tokens) if not (skip_punct and x in string.punctuation)]
        return h[keep]

    q, d = vectors("query: " + query, q_len, False), vectors("passage: " + doc, d_len, True)
    return float((q @ d.T).max(dim=1).values.mean())


def test_scores_match_hand_computed_maxsim(tiny_embedder_path: Path) -> None:
    reranker = LateInteractionReranker.from_embedder(tiny_embedder_path, max_query_length=16, max_doc_length=48)
    assert reranker.prompts == {"query": "query: ", "document": "passage: "}
    got = reranker.predict([(QUERY, d) for d in DOCS])
    want = [hand_maxsim(tiny_embedder_path, QUERY, d, 16, 48) for d in DOCS]
    assert got.shape == (2,)
    assert got.tolist() == pytest.approx(want, abs=1e-5)
    # a batch with padding scores as each pair alone (padding never matches)
    mixed = reranker.predict([(QUERY, DOCS[0]), ("ngày", DOCS[1]), (QUERY, DOCS[1])], batch_size=2)
    assert mixed[[0, 2]].tolist() == pytest.approx(want, abs=1e-5)


def test_evaluate_scores_every_split_in_one_call_each_passage_encoded_once(tiny_embedder_path: Path) -> None:
    """rerank_scores (evaluate) over dev and test: every (query, chunk) the retrievers proposed gets the score the
    pair gets alone, and a chunk both splits retrieved is encoded once, not once per split."""
    from ragtune.rerank import rerank_scores

    reranker = LateInteractionReranker.from_embedder(tiny_embedder_path, max_query_length=16, max_doc_length=48)
    chunks = [{"chunk_id": f"c{i}", "text": t} for i, t in enumerate(DOCS + VI_SENTENCES[:3])]
    splits = {"dev": [{"query_id": "q1", "query": QUERY}], "test": [{"query_id": "q2", "query": VI_SENTENCES[0]}]}
    systems = {  # two retrievers; c1 and c2 come back for both splits
        "dev": {"a": {"q1": [("c0", 1.0), ("c1", 0.5)]}, "b": {"q1": [("c2", 1.0), ("c0", 0.2)]}},
        "test": {"a": {"q2": [("c1", 1.0), ("c2", 0.5)]}, "b": {"q2": [("c3", 1.0), ("c4", 0.9)]}},
    }
    encoded: list[str] = []
    real = reranker.model.encode_document
    reranker.model.encode_document = lambda docs, **kw: encoded.extend(docs) or real(docs, **kw)

    got = rerank_scores(reranker, systems, splits, ["a", "b"], chunks, k=2, bf16=False)

    assert {s: {q: list(c) for q, c in v.items()} for s, v in got.items()} == {
        "dev": {"q1": ["c0", "c1", "c2"]},
        "test": {"q2": ["c1", "c2", "c3", "c4"]},
    }
    assert sorted(encoded) == sorted(c["text"] for c in chunks)  # five distinct chunks, five encodes
    text = {c["chunk_id"]: c["text"] for c in chunks}
    for split, qs in splits.items():
        q = qs[0]
        alone = reranker.predict([(q["query"], text[c]) for c in got[split][q["query_id"]]])
        assert list(got[split][q["query_id"]].values()) == pytest.approx(alone.tolist(), abs=1e-5)


def test_untrained_reranker_ranks_identical_passage_first(tiny_embedder_path: Path) -> None:
    reranker = LateInteractionReranker.from_embedder(tiny_embedder_path, max_query_length=48, max_doc_length=48)
    text = VI_SENTENCES[0]
    scores = reranker.predict([(text, text), (text, VI_SENTENCES[4])])
    assert all(math.isfinite(s) for s in scores)
    assert scores[0] > scores[1]


def test_save_load_round_trip_and_kind_marker(tiny_embedder_path: Path, tmp_path: Path) -> None:
    reranker = LateInteractionReranker.from_embedder(tiny_embedder_path, max_query_length=16, max_doc_length=48)
    reranker.save(tmp_path / "li")
    marker = json.loads((tmp_path / "li" / MARKER).read_text(encoding="utf-8"))
    assert marker["kind"] == "late_interaction"
    assert (marker["max_query_length"], marker["max_doc_length"]) == (16, 48)
    loaded = LateInteractionReranker.load(tmp_path / "li")
    pairs = [(QUERY, d) for d in DOCS]
    assert loaded.predict(pairs).tolist() == reranker.predict(pairs).tolist()
    with pytest.raises(LateInteractionError, match="kind"):
        LateInteractionReranker.load(tiny_embedder_path)  # an embedder, not a saved reranker


def tiny_groups() -> list[dict[str, Any]]:
    return [
        {"query": s.split(" ", 4)[-1], "pos": [s], "neg": [VI_SENTENCES[(i + 3) % 10], VI_SENTENCES[(i + 6) % 10]]}
        for i, s in enumerate(VI_SENTENCES)
    ]


def test_training_runs_reaches_optimizer_and_ships_what_it_measured(tiny_embedder_path: Path, tmp_path: Path) -> None:
    dev = [
        {"query": s.split(" ", 4)[-1], "positive": [s], "documents": [VI_SENTENCES[(i + 1) % 10], s]}
        for i, s in enumerate(VI_SENTENCES[:4])
    ]
    out = tmp_path / "reranker"
    metrics = train_late_interaction(
        tiny_groups(), dev, settings(), out, tmp_path / "ckpt", embedder_dir=tiny_embedder_path
    )
    eff = metrics["effective"]
    assert eff["learning_rate"] == pytest.approx(7.0e-5)  # read back from the optimizer, not the settings
    assert eff["optimizer_steps"] == 3
    assert eff["negatives_per_group"] == 2
    assert math.isfinite(metrics["train"]["first_loss"]) and math.isfinite(metrics["train"]["final_loss"])
    assert any("barely trained" in w for w in metrics["warnings"])
    assert set(metrics["dev"]["before"]) >= {"ndcg@10", "recall@1", "base_ndcg@10", "base_recall@1"}
    # the positive is second in retrieval order: base recall@1 is 0, ndcg@10 is 1/log2(3)
    assert metrics["dev"]["before"]["base_recall@1"] == 0.0
    assert metrics["dev"]["before"]["base_ndcg@10"] == pytest.approx(1 / math.log2(3), abs=1e-4)
    # what was saved is what was measured after training
    loaded = LateInteractionReranker.load(out)
    assert dev_rerank_metrics(loaded, dev, batch_size=4) == metrics["dev"]["after"]
    untrained = LateInteractionReranker.from_embedder(tiny_embedder_path, max_query_length=16, max_doc_length=48)
    pairs = [(QUERY, d) for d in DOCS]
    assert loaded.predict(pairs).tolist() != untrained.predict(pairs).tolist()  # the weights moved


@pytest.mark.parametrize("bf16", [True, False])
def test_dev_is_scored_in_the_precision_evaluate_serves_the_reranker_in(
    tiny_embedder_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bf16: bool
):
    """bf16 training scores dev under CPU bf16 autocast, as evaluate and search run the saved reranker
    (rerank_bf16: auto → rerank.predict(bf16=True)), before and after; fp32 training scores it in fp32."""
    real, flags = rerank.predict, []

    def spy(*args: Any, **kwargs: Any) -> list[float]:
        flags.append(kwargs.get("bf16"))
        return real(*args, **kwargs)

    monkeypatch.setattr(rerank, "predict", spy)
    dev = [
        {"query": s.split(" ", 4)[-1], "positive": [s], "documents": [VI_SENTENCES[(i + 3) % 10], s]}
        for i, s in enumerate(VI_SENTENCES[:6])
    ]
    metrics = train_late_interaction(
        tiny_groups(), dev, settings(bf16=bf16), tmp_path / "r", tmp_path / "ckpt", embedder_dir=tiny_embedder_path
    )
    assert flags == [bf16, bf16]  # dev before and after
    loaded = LateInteractionReranker.load(tmp_path / "r")
    assert metrics["dev"]["after"] == dev_rerank_metrics(loaded, dev, batch_size=4, bf16=bf16)


def test_freeze_embeddings_keeps_the_token_embeddings_and_trains_the_rest(tiny_embedder_path: Path, tmp_path: Path):
    """freeze_embeddings: the saved reranker's token-embedding matrix is the embedder's, bit for bit, while the
    encoder layers moved; the metrics count the frozen parameters."""
    from safetensors.torch import load_file

    metrics = train_late_interaction(
        tiny_groups(), [], settings(freeze_embeddings=True), tmp_path / "r", tmp_path / "ckpt",
        embedder_dir=tiny_embedder_path,
    )  # fmt: skip
    start, trained = (load_file(str(p / "model.safetensors")) for p in (tiny_embedder_path, tmp_path / "r"))
    name = next(k for k in start if "word_embeddings" in k)
    assert trained[name].equal(start[name])
    layer = next(k for k in start if "layer.0" in k and k.endswith("dense.weight"))
    assert not trained[layer].equal(start[layer])
    assert metrics["effective"]["frozen_params"] == start[name].numel()
    unfrozen = train_late_interaction(
        tiny_groups(), [], settings(), tmp_path / "u", tmp_path / "ckpt2", embedder_dir=tiny_embedder_path
    )
    assert unfrozen["effective"]["frozen_params"] == 0
    assert not load_file(str(tmp_path / "u" / "model.safetensors"))[name].equal(start[name])


def test_settings_refuse_missing_and_bad_keys() -> None:
    with pytest.raises(LateInteractionConfigError, match="scale"):
        settings(scale=0.0)
    with pytest.raises(LateInteractionConfigError, match=r"late_interaction\.attention_dropout=1\.0"):
        settings(attention_dropout=1.0)
    good = {k: v for k, v in settings().__dict__.items() if k != "scale"}
    with pytest.raises(LateInteractionConfigError, match="scale"):
        LateInteractionSettings.from_params(good)
