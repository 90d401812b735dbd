"""train_reranker: params reach the CrossEncoderTrainer, negatives come from the embedder's ranking with the
false-negative guards, positives are capped per document, fusion behaves at its ends, and a tiny reranker learns."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import shipped_params

from ragtune.rerank import apply_rerank, fuse, top1_concentration
from ragtune.train.common import apply_attention_dropout
from ragtune.train.reranker.config import RerankerConfigError, RerankerTrainConfig
from ragtune.train.reranker.data import Candidates, cap_per_document, dev_samples, groups_to_dataset, mine_rerank_groups
from ragtune.train.reranker.run import reranker_warnings
from ragtune.train.reranker.trainer import build_evaluator, build_trainer, head_is_new, load_reranker, pair_summary

# Non-default value for every knob, so a knob that does not reach the trainer fails the test.
PARAMS = {
    "seed": 7,
    "kind": "cross_encoder",  # the kinds' own sections reach their trainers: tests/test_reranker_kinds.py
    "late_interaction": {
        "max_query_length": 16,
        "max_doc_length": 32,
        "scale": 5.0,
        "n_negatives": 2,
        "attention_dropout": None,
    },
    "llm": {
        "base": "x",
        "instruction": "y",
        "max_length": 64,
        "lora_r": 2,
        "lora_alpha": 4,
        "lora_dropout": 0.0,
        "target_modules": ["q_proj"],
    },
    # the warm start's keys reach its trainer: test_reranker_distill.py
    "distill": {"lists": 5, "list_size": 3, "temperature": 0.05, "epochs": 2, "batch_size": 2},
    "base": "base",
    "head": "cls",
    "loss": "bce",
    "pos_weight": 2.5,
    "mnrl_scale": 5.0,
    "n_hard": 3,
    "n_random": 2,
    "rank_min": 1,
    "rank_max": 9,
    "margin": 0.1,
    "max_pos_per_doc": 3,
    "use_synthetic": False,
    "max_length": 48,
    "epochs": 3,
    "max_steps": 13,
    "auto_min_steps": 5,  # the auto plan's knobs: test_auto_schedule_reaches_the_reranker_trainer
    "auto_max_epochs": 4,
    "auto_max_steps": 500,
    "eval_fraction": 0.25,
    "batch_size": 4,
    "lr": 4e-5,
    "head_lr": 2e-3,
    "warmup_ratio": 0.2,
    "scheduler": "cosine",
    "weight_decay": 0.05,
    "rerank_k": 7,
    "eval_steps": 3,
    "save_steps": 6,
    "save_total_limit": 4,
    "early_stopping_patience": 2,
    "load_best_model_at_end": False,
    "ship_unchecked": True,  # a stage-level switch: test_reranker_stage_without_dev_*
    "max_access_level": "internal",  # a stage-level rule on the groups and lists: test_access_training.py
    "gradient_accumulation_steps": 2,
    "gradient_checkpointing": True,
    "precision": "auto",
    "cpu_bf16": False,
    "attention_dropout": 0.05,
    "logging_steps": 2,
    "dataloader_num_workers": 1,
}


def rr(**overrides) -> RerankerTrainConfig:
    """The shipped params.yaml's train_reranker config, with ``overrides``: a test names only what it is about."""
    return RerankerTrainConfig.from_params(shipped_params("train_reranker", **overrides))


CHUNKS = {f"{d}#{i}": d for d in "ABCDEF" for i in range(2)}
TEXT = {c: f"văn bản {c}" for c in CHUNKS}


def test_params_cover_every_config_field():
    names = {f.name for f in dataclasses.fields(RerankerTrainConfig)} - {"extra"}
    assert names == set(PARAMS), "a new train_reranker param needs a row in PARAMS and an assertion"
    shipped = rr()
    assert all(getattr(shipped, k) != v for k, v in PARAMS.items() if k not in ("precision", "loss", "kind"))


def test_unknown_or_invalid_params_are_refused():
    with pytest.raises(RerankerConfigError, match=r"unknown key.*learning_rate"):
        rr(learning_rate=1e-4)
    with pytest.raises(RerankerConfigError, match="loss"):
        rr(loss="cosine")
    with pytest.raises(RerankerConfigError, match="rank_min"):
        rr(rank_min=10, rank_max=5)
    section = shipped_params("train_reranker")
    del section["head"]  # the key params.yaml lacked until defaults moved out of the code
    with pytest.raises(RerankerConfigError, match=r"params.yaml train_reranker: missing key\(s\) head: add them"):
        RerankerTrainConfig.from_params(section)


def test_every_param_reaches_the_trainer(tiny_embedder_path, tmp_path):
    from transformers import EarlyStoppingCallback

    cfg = RerankerTrainConfig.from_params(PARAMS)
    assert head_is_new(tiny_embedder_path)  # an embedder folder has no classification head
    model = load_reranker(tiny_embedder_path, cfg.max_length, cfg.head, seed=cfg.seed)
    assert model.max_seq_length == 48
    attention, warns = apply_attention_dropout(model, cfg.attention_dropout, cfg.SECTION)
    attn = [m.dropout.p for m in model.modules() if type(m).__name__ == "BertSelfAttention"]
    assert attn and set(attn) == {0.05} and attention["attention_dropout_modules"] == len(attn) and not warns
    groups = [{"query": f"hỏi {i}", "pos": [f"đúng {i}"], "neg": [f"sai {i}a", f"sai {i}b"]} for i in range(8)]
    evaluator = build_evaluator([{"query": "hỏi 1", "positive": ["đúng 1"], "documents": ["sai 1a", "đúng 1"]}], 4)
    trainer = build_trainer(
        model, cfg, groups_to_dataset(groups, cfg.loss), evaluator, tmp_path, new_head=True, pos_weight=cfg.pos_weight
    )
    a = trainer.args
    assert (a.seed, a.data_seed) == (7, 7)
    assert a.learning_rate == 4e-5 and a.learning_rate_mapping == {"classifier": 2e-3}
    assert a.warmup_steps == 0.2
    assert getattr(a.lr_scheduler_type, "value", a.lr_scheduler_type) == "cosine"
    assert a.weight_decay == 0.05
    assert a.num_train_epochs == 3 and a.max_steps == 13
    assert a.per_device_train_batch_size == 4 and a.gradient_accumulation_steps == 2
    assert a.eval_steps == 3 and a.save_steps == 6 and a.save_total_limit == 4
    assert a.load_best_model_at_end is False and a.metric_for_best_model == "eval_dev_ndcg@10"
    assert a.activation_checkpointing is True
    assert a.bf16 is False and a.fp16 is False  # cpu_bf16 off
    assert a.logging_steps == 2 and a.dataloader_num_workers == 1
    assert any(
        isinstance(cb, EarlyStoppingCallback) and cb.early_stopping_patience == 2
        for cb in trainer.callback_handler.callbacks
    )
    assert type(trainer.loss).__name__ == "BinaryCrossEntropyLoss" and float(trainer.loss.pos_weight) == 2.5
    # the optimizer really gives the new head its own learning rate
    opt = trainer.create_optimizer()
    head_ids = {id(p) for n, p in model.named_parameters() if "classifier" in n}
    lrs = {g["lr"] for g in opt.param_groups if any(id(p) in head_ids for p in g["params"])}
    assert lrs == {2e-3}

    lambda_cfg = dataclasses.replace(cfg, loss="lambda")
    t2 = build_trainer(
        model, lambda_cfg, groups_to_dataset(groups, "lambda"), None, tmp_path, new_head=False, pos_weight=1.0
    )
    assert type(t2.loss).__name__ == "LambdaLoss" and t2.args.learning_rate_mapping == {}
    mnrl = build_trainer(
        model,
        dataclasses.replace(cfg, loss="mnrl"),
        groups_to_dataset(groups, "mnrl"),
        None,
        tmp_path,
        new_head=True,
        pos_weight=1.0,
    )
    assert type(mnrl.loss).__name__ == "MultipleNegativesRankingLoss" and mnrl.loss.scale == 5.0


def test_auto_schedule_reaches_the_reranker_trainer(tiny_embedder_path, tmp_path):
    """The reranker's rows are its dataset's (pointwise for bce: a positive and its negatives per group), and the
    resolved plan is what the CrossEncoderTrainer gets and counts."""
    from ragtune.train.reranker.trainer import build_args
    from ragtune.train.schedule import resolve_schedule

    cfg = rr(batch_size=4, auto_min_steps=10, max_length=32)
    groups = [{"query": f"hỏi {i}", "pos": [f"đúng {i}"], "neg": [f"sai {i}a", f"sai {i}b"]} for i in range(8)]
    ds = groups_to_dataset(groups, "bce")
    with pytest.raises(RerankerConfigError, match="resolve_schedule"):
        build_args(cfg, tmp_path, new_head=True, has_eval=False)
    resolved, plan = resolve_schedule(cfg, len(ds))
    # 24 rows / 4 = 6 steps per epoch → 2 epochs reach 10 steps; eval_fraction 0.5 → every 6
    assert (plan.steps_per_epoch, plan.epochs, plan.total_steps, plan.eval_steps, plan.save_steps) == (6, 2, 12, 6, 6)
    model = load_reranker(tiny_embedder_path, cfg.max_length, cfg.head, seed=cfg.seed)
    for c in (resolved, cfg):  # build_trainer resolves an auto config itself, to the same values
        trainer = build_trainer(model, c, ds, None, tmp_path, new_head=True, pos_weight=1.0)
        a = trainer.args
        assert (a.num_train_epochs, a.max_steps, a.eval_steps, a.save_steps) == (2, -1, 6, 6)
        epochs, per_epoch, *_, max_steps = trainer.set_initial_training_values(a, trainer.get_train_dataloader())
        assert (per_epoch, max_steps, epochs) == (6, 12, 2)


def test_mean_head_gets_the_head_learning_rate_and_round_trips(tiny_embedder_path, tmp_path):
    """head=mean: encoder + mean pooling + a linear scorer; the scorer (only) gets head_lr, and it reloads alone."""
    from sentence_transformers import CrossEncoder

    cfg = rr(head="mean", lr=1e-5, head_lr=1e-2, max_length=32, cpu_bf16=False)
    model = load_reranker(tiny_embedder_path, cfg.max_length, cfg.head, seed=cfg.seed)
    groups = [{"query": f"hỏi {i}", "pos": [f"đúng {i}"], "neg": [f"sai {i}"]} for i in range(4)]
    trainer = build_trainer(model, cfg, groups_to_dataset(groups, "bce"), None, tmp_path, new_head=True, pos_weight=1.0)
    head = {id(p) for n, p in model.named_parameters() if n.startswith("2.linear.")}
    assert len(head) == 2  # weight and bias
    by_lr = {}
    for g in trainer.create_optimizer().param_groups:
        for p in g["params"]:
            by_lr[id(p)] = g["lr"]
    assert {by_lr[i] for i in head} == {1e-2}
    assert {lr for i, lr in by_lr.items() if i not in head} == {1e-5}
    before = model.predict([("hỏi 1", "đúng 1"), ("hỏi 1", "sai 2")])
    model.save_pretrained(str(tmp_path / "rr"))
    after = CrossEncoder(str(tmp_path / "rr")).predict([("hỏi 1", "đúng 1"), ("hỏi 1", "sai 2")])
    assert after == pytest.approx(before, abs=1e-6)
    with pytest.raises(RerankerConfigError, match="head"):
        rr(head="max")


def test_dataset_shapes_per_loss():
    groups = [{"query": "q", "pos": ["p"], "neg": ["n1", "n2"]}, {"query": "r", "pos": ["p2"], "neg": ["m1"]}]
    bce = groups_to_dataset(groups, "bce")
    assert bce.column_names == ["query", "passage", "label"] and bce["label"] == [1.0, 0.0, 0.0, 1.0, 0.0]
    lam = groups_to_dataset(groups, "lambda")
    assert lam["labels"] == [[1.0, 0.0, 0.0], [1.0, 0.0]]
    mnrl = groups_to_dataset(groups, "mnrl")
    assert mnrl.column_names == ["query", "positive", "negative_1"]  # no padding with invented negatives


def test_negatives_come_from_the_embedder_ranking_with_guards():
    cfg = rr(n_hard=2, n_random=1, rank_min=0, rank_max=6, margin=0.1, seed=1)
    pair = {"query_id": "q", "query": "hỏi", "positive_doc_ids": ["A"], "positive_chunk_ids": ["A#0"]}
    ranking = {
        "q": [
            ("A#1", 0.95),  # sibling chunk of the positive document: never a negative
            ("B#0", 0.90),  # ≥ (1 - 0.1) × 0.95 = 0.855: too close to the positive, likely a false negative
            ("A#0", 0.85),
            ("C#0", 0.80),
            ("D#0", 0.70),
            ("E#0", 0.60),
        ]
    }
    groups, counts = mine_rerank_groups([pair], Candidates(ranking, TEXT, CHUNKS), cfg)
    g = groups[0]
    assert g["pos"] == [TEXT["A#0"]] and g["neg_ids"][:2] == ["C#0", "D#0"]
    assert g["neg_sources"] == ["embedder", "embedder", "random"]
    assert CHUNKS[g["neg_ids"][2]] != "A" and g["neg_ids"][2] not in g["neg_ids"][:2]
    assert counts["dropped_by_margin"] == 1 and counts.get("groups_short_of_hard_negatives", 0) == 0
    assert mine_rerank_groups([pair], Candidates(ranking, TEXT, CHUNKS), cfg)[0] == groups  # deterministic
    # a rank window that leaves too few candidates is counted, not padded
    narrow = dataclasses.replace(cfg, rank_min=5, rank_max=6)
    g2, c2 = mine_rerank_groups([pair], Candidates(ranking, TEXT, CHUNKS), narrow)
    assert g2[0]["neg_ids"][:1] == ["E#0"] and c2["groups_short_of_hard_negatives"] == 1


def test_positives_are_capped_per_document():
    pairs = [{"query_id": f"a{i}", "positive_doc_ids": ["A"]} for i in range(5)] + [
        {"query_id": "b", "positive_doc_ids": ["B"]}
    ]
    kept, dropped = cap_per_document(pairs, 2, seed=3)
    assert sum(p["positive_doc_ids"] == ["A"] for p in kept) == 2 and dropped == {"A": 3}
    assert {"query_id": "b", "positive_doc_ids": ["B"]} in kept
    assert cap_per_document(pairs, 0, seed=3) == (pairs, {})


def test_fusion_ends_and_middle():
    cands = [("x", 0.9), ("y", 0.8), ("z", 0.1)]
    rer = [0.1, 0.2, 0.9]
    assert [c for c, _ in fuse(cands, rer, 0.0)] == ["x", "y", "z"]  # retriever alone
    assert [c for c, _ in fuse(cands, rer, 1.0)] == ["z", "y", "x"]  # reranker alone
    ranking = {"q": [*cands, ("w", 0.05)]}
    out = apply_rerank(ranking, {"q": rer}, 1.0)
    assert [c for c, _ in out["q"]] == ["z", "y", "x", "w"]  # candidates past rerank depth keep their place after


def test_dev_samples_mark_every_retrieved_chunk_of_a_labeled_document():
    dev = [{"query_id": "q", "query": "hỏi", "positive_doc_ids": ["A"]}]
    ranking = {"q": [("B#0", 0.9), ("A#1", 0.8), ("A#0", 0.7), ("C#0", 0.6)]}
    (s,) = dev_samples(dev, Candidates(ranking, TEXT, CHUNKS), k=3)
    assert s["documents"] == [TEXT["B#0"], TEXT["A#1"], TEXT["A#0"]]
    assert s["positive"] == [TEXT["A#1"], TEXT["A#0"]]


def test_guards_fire():
    assert top1_concentration({"q1": [("A#0", 1)], "q2": [("A#1", 1)], "q3": [("B#0", 1)]}, CHUNKS) == ("A", 2 / 3)
    w = reranker_warnings(
        optimizer_steps=10, dev_input_ndcg=0.8, dev_reranked_ndcg=0.5, popular_doc="A", popular_share=0.5
    )
    assert len(w) == 3 and "worse" in w[1] and "popularity" in w[2]
    assert reranker_warnings(optimizer_steps=100, dev_input_ndcg=0.5, dev_reranked_ndcg=0.6) == []


def test_tiny_reranker_learns_and_saves(tiny_embedder_path, tmp_path):
    """The trainer really optimises (loss falls, positives separate from negatives) and the output reloads alone.

    The cue is deliberately easy: a random 2-layer BERT has an almost input-independent [CLS] vector, and this test
    is about the training wiring, not about what e5 can learn (that is measured on the sample, see the README).
    """
    from sentence_transformers import CrossEncoder

    cfg = rr(
        max_steps=60,
        batch_size=8,
        lr=1e-3,
        head_lr=1e-2,
        logging_steps=1,
        save_steps=1000,
        warmup_ratio=0.0,
        scheduler="constant",
        cpu_bf16=False,
        max_length=32,
    )
    model = load_reranker(tiny_embedder_path, cfg.max_length, cfg.head, seed=cfg.seed)
    topics = ["nghỉ phép", "đào tạo", "mật khẩu", "sao lưu", "công tác", "vpn", "bảo hiểm", "tuyển dụng"]
    groups = [
        {
            "query": f"hỏi về {t}",
            "pos": [f"quy định chính thức về {t}"],
            "neg": [f"tin đồn không rõ về {topics[(j + k) % 8]}" for k in (1, 3)],
        }
        for j, t in enumerate(topics)
        for _ in range(3)
    ]
    before = pair_summary(model, groups)
    trainer = build_trainer(
        model, cfg, groups_to_dataset(groups, "bce"), None, tmp_path / "ck", new_head=True, pos_weight=2.0
    )
    trainer.train()
    after = pair_summary(model, groups)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    assert after["margin"] > before["margin"] + 0.5 and after["accuracy"] > before["accuracy"]
    model.save_pretrained(str(tmp_path / "reranker"))
    reloaded = CrossEncoder(str(tmp_path / "reranker"))
    assert not head_is_new(tmp_path / "reranker")
    ranked = reloaded.rank("hỏi về vpn", ["tin đồn không rõ về vpn", "quy định chính thức về vpn"])
    assert ranked[0]["corpus_id"] == 1


@pytest.mark.parametrize("head", ["mean", "cls"])
def test_a_new_head_starts_from_the_seed_and_leaves_the_global_rng_alone(tiny_embedder_path, head):
    """Identical runs must start from identical weights: the new head used to come from whatever state the global
    RNG was in, so even the before-training dev scores differed between two `dvc repro` runs."""
    import torch

    def head_weights(seed: int, global_seed: int) -> list[torch.Tensor]:
        torch.manual_seed(global_seed)  # a different global RNG state each time: it must not matter
        model = load_reranker(tiny_embedder_path, 64, head, seed=seed)
        encoder = {n for n, _ in model.named_parameters() if "encoder.layer" in n or "embeddings" in n}
        return [p.detach().clone() for n, p in model.named_parameters() if n not in encoder]

    a, b, c = head_weights(7, 1), head_weights(7, 2), head_weights(8, 1)
    assert a and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    load_reranker(tiny_embedder_path, 64, head, seed=7)
    assert torch.equal(torch.rand(3), expected)  # the global RNG is where it was


@pytest.mark.parametrize("ship_unchecked", [False, True])
def test_reranker_stage_without_dev(tmp_path, tiny_embedder_path, ship_unchecked):
    """No dev question: by default models/reranker is the untrained start model (loadable, so evaluate and search
    still find a reranker) and every report says why; ship_unchecked: true trains it, with a warning instead."""
    import torch
    from conftest import make_stage_dir, run_stage
    from sentence_transformers import CrossEncoder

    from ragtune.io import read_json

    work = make_stage_dir(
        tmp_path,
        tiny_embedder_path,
        dev=False,
        train_reranker={"kind": "cross_encoder", "ship_unchecked": ship_unchecked},
    )
    out = run_stage(work, "train_reranker")
    m = read_json(work / "metrics/train_reranker.json")
    shipped = CrossEncoder(str(work / "models/reranker"), device="cpu")
    start = load_reranker(work / "models/embedder", 64, "mean", seed=42)
    pairs = zip(shipped.state_dict().values(), start.state_dict().values(), strict=True)
    same = all(torch.equal(a, b) for a, b in pairs)
    assert m["plan"]["rows"] == m["train"]["rows"] and m["plan"]["total_steps"] > 0
    card = (work / "models/reranker/README.md").read_text(encoding="utf-8")
    if ship_unchecked:
        assert m["shipped"] == "fine-tuned (no dev questions: unchecked)" and not same
        assert m["effective"]["optimizer_steps"] == m["plan"]["total_steps"] and "schedule:" in out
        assert any("UNCHECKED" in w for w in m["warnings"])
    else:
        assert m["shipped"] == "untrained start model (no dev questions: unchecked)" and same
        assert m["effective"]["optimizer_steps"] == 0 and "schedule:" not in out
        assert len(m["warnings"]) == 1 and "NOT TRAINED" in m["warnings"][0]
        assert "train_reranker.ship_unchecked: true" in m["warnings"][0]
        assert "the untrained start model" in card and "planned, not run" in card
        assert (work / "models/reranker_checkpoints").is_dir()
        assert (work / "dvclive/train_reranker/plots/metrics").is_dir()
    assert len(shipped.predict([("hỏi về vpn", "Kết nối VPN")])) == 1
