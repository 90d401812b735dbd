"""train_embedder: every param reaches the trainer, unknown params are refused, and a tiny model really trains."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import REPO, shipped_params

from ragtune.precision import cpu_has_fast_bf16
from ragtune.train.checkpoints import prepare_checkpoint_dir
from ragtune.train.common import apply_attention_dropout, precision_flags
from ragtune.train.embedder.config import EmbedderTrainConfig, TrainConfigError
from ragtune.train.embedder.dev import build_ir_evaluator
from ragtune.train.embedder.merge import merge_checked_on_dev, merge_with_base, ship_base
from ragtune.train.embedder.run import training_warnings
from ragtune.train.embedder.trainer import (
    build_args,
    build_loss,
    build_trainer,
    column_prompts,
    freeze,
    groups_to_dataset,
)
from ragtune.train.schedule import plan_schedule, resolve_schedule

# Non-default value for every knob, so a knob that does not reach the trainer fails the test.
PARAMS = {
    "seed": 7,
    "loss": "cached_mnrl",
    "scale": 50.0,
    "directions": ["query_to_doc", "doc_to_query"],
    "hardness_mode": "in_batch_negatives",
    "hardness_strength": 9.0,
    "mini_batch_size": 3,
    "gist_temperature": 0.05,
    "matryoshka_dims": [32, 16],
    "n_hard_negatives": 2,
    "positives": "all",
    "batch_sampler": "no_duplicates",
    "max_seq_length": 64,
    "epochs": 3,
    "max_steps": 11,
    "auto_min_steps": 5,  # the auto plan's knobs: test_auto_schedule_reaches_the_trainer
    "auto_max_epochs": 4,
    "auto_max_steps": 500,
    "eval_fraction": 0.25,
    "batch_size": 4,
    "lr": 5e-5,
    "warmup_ratio": 0.2,
    "scheduler": "cosine",
    "weight_decay": 0.05,
    "dev_level": "chunk",
    "dev_pool_k": 3,  # the stage builds the pool: test_train_run.py
    "eval_steps": 3,
    "save_steps": 6,
    "save_total_limit": 4,
    "early_stopping_patience": 2,
    "load_best_model_at_end": False,
    "merge_alpha": 0.7,
    "merge_tolerance": 0.01,
    "keep_base_if_worse": False,
    "enabled": False,  # stage-level switches: test_stage_* below
    "ship_unchecked": True,
    "max_access_level": "internal",  # a stage-level rule on the rows: test_train_run.py, test_access_training.py
    "gradient_accumulation_steps": 2,
    "gradient_checkpointing": True,
    "precision": "auto",
    "cpu_bf16": True,
    "freeze_embeddings": True,
    "freeze_layers": 1,
    "attention_dropout": 0.05,
    "logging_steps": 2,
    "dataloader_num_workers": 0,
}


def emb(**overrides) -> EmbedderTrainConfig:
    """The shipped params.yaml's train_embedder config, with ``overrides``: a test names only what it is about."""
    return EmbedderTrainConfig.from_params(shipped_params("train_embedder", **overrides))


def auto_bounds(cfg) -> dict:
    """The auto plan's bounds of ``cfg``, as plan_schedule's keyword arguments (it has no defaults of its own)."""
    return {k: getattr(cfg, k) for k in ("auto_min_steps", "auto_max_epochs", "auto_max_steps", "eval_fraction")}


def test_params_cover_every_config_field():
    names = {f.name for f in dataclasses.fields(EmbedderTrainConfig)} - {"extra"}
    assert names == set(PARAMS), "a new train_embedder param needs a row in PARAMS and an assertion below"


def test_unknown_or_invalid_params_are_refused():
    with pytest.raises(TrainConfigError, match=r"unknown key.*learning_rate"):
        emb(learning_rate=1e-4)  # the classic: a key nobody reads
    with pytest.raises(TrainConfigError, match="loss"):
        emb(loss="cosine_similarity")
    with pytest.raises(TrainConfigError, match="batch_size"):
        emb(batch_size=1)
    with pytest.raises(TrainConfigError, match="directions"):
        emb(directions=["doc_to_query"])  # the retrieval direction is required
    with pytest.raises(TrainConfigError, match="directions"):
        emb(directions=["query_to_doc", "doc_to_queries"])
    with pytest.raises(TrainConfigError, match="GISTEmbedLoss"):
        emb(loss="gist", directions=["query_to_doc", "doc_to_query"])
    with pytest.raises(TrainConfigError, match="hardness_strength"):
        emb(hardness_mode="in_batch_negatives", hardness_strength=0)  # a mode with strength 0 does nothing
    assert emb(directions="query_to_doc").directions == ("query_to_doc",)
    with pytest.raises(TrainConfigError, match="positives"):
        emb(positives="every")


def test_a_missing_key_is_an_error_that_names_it():
    """params.yaml is the one place defaults live: a section without a key is refused, never filled in, so an old
    params.yaml fails loudly instead of training with values nobody chose."""
    section = shipped_params("train_embedder")
    del section["lr"], section["scale"]
    with pytest.raises(TrainConfigError) as err:
        EmbedderTrainConfig.from_params(section)
    message = str(err.value)
    assert "params.yaml train_embedder: missing key(s) lr, scale: add them" in message
    assert "shipped params.yaml" in message and "unknown" not in message
    # a renamed key is both: one message names the stray key and the missing one
    with pytest.raises(TrainConfigError, match=r"unknown key learning_rate.*missing key\(s\) lr:"):
        EmbedderTrainConfig.from_params({**section, "scale": 100, "learning_rate": 5e-5})
    with pytest.raises(TrainConfigError, match="missing key"):
        EmbedderTrainConfig.from_params({})


def test_config_fields_have_no_defaults():
    """No second copy of params.yaml's values in the code: it drifted (scale 20 vs 100, lr 2e-5 vs 5e-5, …)."""
    from ragtune.train.reranker.config import RerankerTrainConfig

    for cls in (EmbedderTrainConfig, RerankerTrainConfig):
        with_default = [
            f.name
            for f in dataclasses.fields(cls)
            if f.name != "extra"
            and (f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING)
        ]
        assert with_default == [], (cls.__name__, with_default)


def test_shipped_params_load_into_every_config():
    """The shipped params.yaml and the example params files are complete for every config class."""
    from ragtune.params import load_params, section
    from ragtune.train.reranker.config import RerankerTrainConfig

    for path in (REPO / "params.yaml", *sorted((REPO / "examples").glob("*.params.yaml"))):
        params = load_params(path)
        for cls in (EmbedderTrainConfig, RerankerTrainConfig):
            cfg = cls.from_params(section(params, cls.SECTION))
            assert dataclasses.asdict(cfg)["seed"] == section(params, cls.SECTION)["seed"], path


def test_every_param_reaches_the_trainer(tiny_embedder_path, tmp_path):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.sampler import BatchSamplers
    from transformers import EarlyStoppingCallback

    cfg = EmbedderTrainConfig.from_params(PARAMS)
    model = SentenceTransformer(str(tiny_embedder_path), device="cpu")
    model.max_seq_length = cfg.max_seq_length
    counts = freeze(model, cfg)
    hf = model[0].auto_model
    assert not hf.embeddings.word_embeddings.weight.requires_grad
    assert not any(p.requires_grad for p in hf.encoder.layer[0].parameters())
    assert all(p.requires_grad for p in hf.encoder.layer[1].parameters())
    assert counts["frozen_params"] > 0
    attention, warns = apply_attention_dropout(model, cfg.attention_dropout, cfg.SECTION)
    attn_dropouts = [m.dropout.p for m in hf.modules() if type(m).__name__ == "BertSelfAttention"]
    assert attn_dropouts == [0.05] * hf.config.num_hidden_layers  # every layer, not just the first
    assert attention == {"attention_dropout": 0.05, "attention_dropout_modules": len(attn_dropouts)} and not warns

    groups = [{"query": f"câu hỏi {i}", "pos": [f"đoạn văn {i}"], "neg": [f"sai {i}a", f"sai {i}b"]} for i in range(12)]
    groups[0]["pos"].append("đoạn văn 0 của tài liệu thứ hai")  # a question naming two documents
    ds, dropped = groups_to_dataset(groups, cfg.n_hard_negatives, cfg.positives)
    assert ds.column_names == ["anchor", "positive", "negative_1", "negative_2"] and dropped == 0
    assert len(ds) == 13 and ds["positive"][:2] == groups[0]["pos"]  # positives: all → a row per positive
    prompts = column_prompts(cfg.n_hard_negatives, "query: ", "passage: ")
    chunks = [{"chunk_id": f"c{i}", "text": f"đoạn văn {i}"} for i in range(12)]
    dev = [{"query_id": "d1", "query": "câu hỏi 1", "positive_chunk_ids": ["c1"]}]
    evaluator = build_ir_evaluator(dev, chunks, "query: ", "passage: ", level=cfg.dev_level)
    assert type(evaluator).__name__ == "InformationRetrievalEvaluator"  # dev_level=chunk: ST's evaluator as is
    trainer = build_trainer(model, cfg, ds, evaluator=evaluator, output_dir=tmp_path, prompts=prompts)
    a = trainer.args
    assert (a.seed, a.data_seed) == (7, 7)
    assert a.learning_rate == 5e-5
    assert a.warmup_steps == 0.2  # transformers v5: float < 1 = ratio
    assert getattr(a.lr_scheduler_type, "value", a.lr_scheduler_type) == "cosine"
    assert a.weight_decay == 0.05
    assert a.num_train_epochs == 3 and a.max_steps == 11
    assert a.per_device_train_batch_size == 4
    assert a.eval_steps == 3 and a.save_steps == 6 and a.save_total_limit == 4
    assert a.load_best_model_at_end is False
    assert a.metric_for_best_model == "eval_dev_cosine_ndcg@10"
    assert a.gradient_accumulation_steps == 2 and a.activation_checkpointing is True
    assert a.bf16 is True and a.fp16 is False  # cpu_bf16 on a CPU machine
    assert a.logging_steps == 2 and a.dataloader_num_workers == 0
    assert a.batch_sampler == BatchSamplers.NO_DUPLICATES  # the non-default; document_disjoint: test_batching.py
    assert a.prompts == {
        "anchor": "query: ",
        "positive": "passage: ",
        "negative_1": "passage: ",
        "negative_2": "passage: ",
    }
    assert any(
        isinstance(cb, EarlyStoppingCallback) and cb.early_stopping_patience == 2
        for cb in trainer.callback_handler.callbacks
    )
    loss = trainer.loss
    assert type(loss).__name__ == "MatryoshkaLoss" and list(loss.matryoshka_dims) == [32, 16]
    assert type(loss.loss).__name__ == "CachedMultipleNegativesRankingLoss" and loss.loss.mini_batch_size == 3
    assert loss.loss.scale == 50.0
    assert tuple(loss.loss.directions) == ("query_to_doc", "doc_to_query")
    assert loss.loss.hardness_mode == "in_batch_negatives" and loss.loss.hardness_strength == 9.0
    assert model.max_seq_length == 64

    gist_cfg = dataclasses.replace(cfg, loss="gist", matryoshka_dims=())
    gist = build_loss(model, gist_cfg, guide=model)
    assert type(gist).__name__ == "GISTEmbedLoss" and gist.temperature == 0.05
    with pytest.raises(TrainConfigError, match="guide"):
        build_loss(model, gist_cfg)


ROW_COUNTS = (10, 40, 184, 736, 5_000, 500_000, 1_000_000)


def test_auto_plan_is_sized_to_the_data():
    """epochs: auto on row counts from a toy corpus to a million pairs: whole epochs until auto_min_steps, capped by
    auto_max_epochs, cut at auto_max_steps; dev check and checkpoint at eval_fraction of the run."""
    import math

    d = emb()  # the shipped params
    plans = [plan_schedule(n, 16, **auto_bounds(d)) for n in ROW_COUNTS]
    for n, p in zip(ROW_COUNTS, plans, strict=True):
        assert p.rows == n and p.steps_per_epoch == math.ceil(n / 16)
        assert p.total_steps <= d.auto_max_steps
        if p.max_steps > 0:  # cut by the compute budget: a fraction of one epoch on very large data
            assert p.total_steps == p.max_steps == d.auto_max_steps and p.epochs < 1
            assert p.steps_per_epoch > d.auto_max_steps and "auto_max_steps" in p.reason
        else:
            assert p.epochs >= 1 and p.epochs == int(p.epochs)
            assert p.total_steps == p.epochs * p.steps_per_epoch
            if math.ceil(d.auto_min_steps / p.steps_per_epoch) <= d.auto_max_epochs:
                assert p.total_steps >= d.auto_min_steps
                assert p.total_steps - p.steps_per_epoch < d.auto_min_steps  # the fewest whole epochs that do
            else:
                assert p.epochs == d.auto_max_epochs and "short of auto_min_steps" in p.reason
        assert p.eval_steps == p.save_steps == max(1, math.ceil(round(d.eval_fraction * p.total_steps, 9)))
        assert p.reason.endswith(".") and ". " not in p.reason  # one sentence, for one console line
    totals = [p.total_steps for p in plans]
    epochs = [p.epochs for p in plans]
    assert totals == sorted(totals) and epochs == sorted(epochs, reverse=True)  # more data: more steps, fewer epochs
    got = {n: (p.epochs, p.max_steps, p.total_steps, p.eval_steps) for n, p in zip(ROW_COUNTS, plans, strict=True)}
    assert got[10] == (10, -1, 10, 3)  # 0.3 × 10 is 3.0000000000000004 in floats: still 3
    assert got[40] == (10, -1, 30, 9)  # 3 steps per epoch: the epoch cap binds before 60 steps
    assert got[184] == (5, -1, 60, 18)  # the sample: exactly the hand-tuned 5 epochs / 60 steps / every 18
    assert got[736] == (2, -1, 92, 28)
    assert got[5_000] == (1, -1, 313, 94)
    assert got[500_000] == (0.096, 3000, 3000, 900)
    assert got[1_000_000] == (0.048, 3000, 3000, 900)
    # the reranker's defaults on the sample: 736 pointwise rows / 8 → the hand-tuned 1 epoch, 92 steps, every 46
    r = plan_schedule(736, 8, auto_min_steps=60, auto_max_epochs=10, auto_max_steps=2000, eval_fraction=0.5)
    assert (r.epochs, r.max_steps, r.total_steps, r.steps_per_epoch) == (1, -1, 92, 92)
    assert r.eval_steps == r.save_steps == 46
    # the Trainer's count: per-process batches ceil(rows / (batch·world)), then ceil(batches / accumulation)
    auto = auto_bounds(d)
    assert plan_schedule(184, 8, world=2, **auto).steps_per_epoch == 12
    assert plan_schedule(184, 16, grad_accum=2, **auto).steps_per_epoch == 6
    assert plan_schedule(185, 16, world=2, grad_accum=3, **auto).steps_per_epoch == 2  # 6 batches per process / 3
    assert plan_schedule(0, 16, **auto).steps_per_epoch == 1  # nothing to train (a run that ships its base): still 1


def test_sample_plan_reproduces_the_hand_tuned_schedule():
    """params.yaml's defaults on the sample's row counts resolve to the values they replaced, so the sample's
    TrainingArguments, and with them the trained weights, are unchanged. The reranker's are the late-interaction
    kind's since batch 6 (2026-12-05): its 184 groups at 6 a step, 2 epochs = 62 steps, checked every 31
    (metrics/train_reranker.json → plan in the lock)."""
    from ragtune.params import load_params, section
    from ragtune.train.reranker.config import RerankerTrainConfig

    params = load_params()
    emb = EmbedderTrainConfig.from_params(section(params, "train_embedder"))
    assert (emb.epochs, emb.eval_steps, emb.save_steps) == ("auto", "auto", "auto")
    cfg, plan = resolve_schedule(emb, 184)
    assert (cfg.epochs, cfg.max_steps, cfg.eval_steps, cfg.save_steps) == (5.0, -1, 18, 18) and plan.total_steps == 60
    rr, plan = resolve_schedule(RerankerTrainConfig.from_params(section(params, "train_reranker")), 184)
    assert (rr.epochs, rr.max_steps, rr.eval_steps, rr.save_steps) == (2.0, -1, 31, 31) and plan.total_steps == 62
    assert (emb.ship_unchecked, rr.ship_unchecked, emb.enabled) == (False, False, True)


def test_explicit_schedule_values_win():
    auto = auto_bounds(emb())
    p = plan_schedule(184, 16, epochs=3, **auto)  # a number of epochs wins over auto (and over auto_max_steps)
    assert (p.epochs, p.max_steps, p.total_steps, p.eval_steps) == (3, -1, 36, 11)
    assert plan_schedule(500_000, 16, epochs=1, **auto).total_steps == 31_250
    assert plan_schedule(184, 16, epochs=0.5, **auto).total_steps == 6  # the Trainer's ceil(epochs × steps per epoch)
    p = plan_schedule(184, 16, max_steps=11, **auto)  # max_steps > 0 wins over everything
    assert (p.max_steps, p.total_steps, p.eval_steps) == (11, 11, 4) and "max_steps 11" in p.reason
    assert plan_schedule(184, 16, epochs=3, max_steps=11, **auto).epochs == 3  # kept for the Trainer, which ignores it
    p = plan_schedule(184, 16, eval_steps=7, **auto)  # an auto save_steps follows a set eval_steps (a multiple of it)
    assert (p.eval_steps, p.save_steps) == (7, 7)
    p = plan_schedule(184, 16, save_steps=20, **auto)
    assert (p.eval_steps, p.save_steps) == (20, 20)
    p = plan_schedule(184, 16, eval_steps=5, save_steps=10, **auto)
    assert (p.eval_steps, p.save_steps) == (5, 10)
    cfg, _ = resolve_schedule(emb(), 500_000)
    assert resolve_schedule(cfg, 500_000)[0] == cfg  # resolving a resolved config changes nothing
    assert (cfg.max_steps, cfg.eval_steps) == (3000, 900)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("epochs", 0),
        ("epochs", -1),
        ("epochs", "five"),
        ("epochs", True),
        ("eval_steps", 0),
        ("eval_steps", 2.5),
        ("eval_steps", "often"),
        ("save_steps", -3),
        ("auto_min_steps", 0),
        ("auto_max_epochs", 0),
        ("auto_max_steps", 0),
        ("eval_fraction", 0),
        ("eval_fraction", 1.5),
    ],
)
def test_bad_schedule_values_are_refused_with_their_key(key, value):
    from ragtune.train.reranker.config import RerankerConfigError, RerankerTrainConfig

    with pytest.raises(TrainConfigError, match=rf"train_embedder\.{key}"):
        emb(**{key: value})
    with pytest.raises(RerankerConfigError, match=rf"train_reranker\.{key}"):
        RerankerTrainConfig.from_params(shipped_params("train_reranker", **{key: value}))


def test_auto_schedule_reaches_the_trainer(tiny_embedder_path, tmp_path):
    """The resolved plan is what TrainingArguments get, and the Trainer, counting its own dataloader (the
    document-disjoint sampler, gradient accumulation), arrives at the same steps per epoch and total."""
    from sentence_transformers import SentenceTransformer

    cfg = emb(
        batch_size=4,
        n_hard_negatives=0,
        gradient_accumulation_steps=2,
        auto_min_steps=10,
        auto_max_epochs=3,
        eval_fraction=0.5,
    )
    groups = [{"query": f"hỏi {i} về nghỉ phép", "pos": [f"tài liệu {i} quy định"], "neg": []} for i in range(13)]
    ds, _ = groups_to_dataset(groups, 0)
    model = SentenceTransformer(str(tiny_embedder_path), device="cpu")
    prompts = column_prompts(0, "", "")
    with pytest.raises(TrainConfigError, match="resolve_schedule"):
        build_args(cfg, tmp_path, prompts)  # auto is not a number of steps
    resolved, plan = resolve_schedule(cfg, len(ds))
    # 13 rows / 4 = 4 batches, 2 steps per epoch; 10 steps would take 5 epochs, the cap is 3
    assert (plan.steps_per_epoch, plan.epochs, plan.total_steps, plan.eval_steps) == (2, 3, 6, 3)
    for c in (resolved, cfg):  # build_trainer resolves an auto config itself, to the same values
        trainer = build_trainer(model, c, ds, None, tmp_path / "ck", prompts)
        a = trainer.args
        assert (a.num_train_epochs, a.max_steps, a.eval_steps, a.save_steps) == (3, -1, 3, 3)
        epochs, per_epoch, *_, max_steps = trainer.set_initial_training_values(a, trainer.get_train_dataloader())
        assert (per_epoch, max_steps, epochs) == (plan.steps_per_epoch, plan.total_steps, 3)
    cut, plan = resolve_schedule(dataclasses.replace(cfg, auto_max_steps=5), len(ds))  # the budget cuts mid-epoch
    a = build_trainer(model, cut, ds, None, tmp_path / "ck", prompts).args
    assert (a.max_steps, a.eval_steps, a.save_steps) == (5, 3, 3) and plan.total_steps == 5


def test_attention_dropout_is_validated_and_loud_when_it_reaches_nothing(tiny_embedder_path):
    """Empty keeps the model's own dropout; a value no module takes is a warning, never a silent no-op."""
    import torch
    from sentence_transformers import SentenceTransformer

    assert emb(attention_dropout=None).attention_dropout is None
    for bad in (1.0, -0.1, "off", True):
        with pytest.raises(TrainConfigError, match="attention_dropout"):
            emb(attention_dropout=bad)

    model = SentenceTransformer(str(tiny_embedder_path), device="cpu")
    hf = model[0].auto_model
    own = hf.config.attention_probs_dropout_prob
    assert apply_attention_dropout(model, None, "train_embedder") == (
        {"attention_dropout": None, "attention_dropout_modules": 0},
        [],
    )
    assert {m.dropout.p for m in hf.modules() if type(m).__name__ == "BertSelfAttention"} == {own}

    # With attention dropout off and hidden dropout off too, training-mode forward passes become deterministic:
    # the value really reaches the attention computation, not just an attribute.
    apply_attention_dropout(model, 0.0, "train_embedder")
    for m in hf.modules():
        if type(m).__name__ != "BertSelfAttention" and isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    model.train()
    feats = model.preprocess(["một câu hỏi khá dài để có nhiều token"])
    assert torch.equal(model(feats)["sentence_embedding"], model(feats)["sentence_embedding"])
    apply_attention_dropout(model, 0.5, "train_embedder")
    assert not torch.equal(model(feats)["sentence_embedding"], model(feats)["sentence_embedding"])

    class NoAttention(torch.nn.Sequential):
        pass

    plain = NoAttention(torch.nn.Linear(2, 2), torch.nn.Dropout(0.1))
    effective, warns = apply_attention_dropout(plain, 0.0, "train_embedder")
    assert effective["attention_dropout_modules"] == 0 and plain[1].p == 0.1
    assert len(warns) == 1 and "reached no attention module" in warns[0]


def test_document_level_dev_evaluator_matches_the_evaluate_stage():
    """Dev metrics during training are computed on documents (best chunk per document), as evaluate computes them."""
    from ragtune.evaluation.metrics import evaluate_ranking
    from ragtune.retrieval import to_doc_ranking

    chunks = [{"chunk_id": f"{d}#{i}", "doc_id": d, "text": f"{d} đoạn {i}"} for d in "ABCD" for i in range(3)]
    dev = [
        {"query_id": "q1", "query": "x", "positive_doc_ids": ["C"], "positive_chunk_ids": ["C#2"]},
        {"query_id": "q2", "query": "y", "positive_doc_ids": ["A", "D"], "positive_chunk_ids": ["A#0"]},
    ]
    ev = build_ir_evaluator(dev, chunks, "", "", level="doc", candidate_k=50)
    assert max(ev.precision_recall_at_k) == 50  # enough chunks retrieved for ten distinct documents
    # Chunk hits as ST produces them (unsorted). q1: A#0 .9, A#1 .8, C#1 .7 → documents A, C: C is rank 2.
    hits = [
        [{"corpus_id": "C#1", "score": 0.7}, {"corpus_id": "A#0", "score": 0.9}, {"corpus_id": "A#1", "score": 0.8}],
        [{"corpus_id": "B#0", "score": 0.9}, {"corpus_id": "B#1", "score": 0.85}, {"corpus_id": "D#2", "score": 0.5}],
    ]
    got = ev.compute_metrics(hits)
    chunk_to_doc = {c["chunk_id"]: c["doc_id"] for c in chunks}
    ranking = {
        qid: [(h["corpus_id"], h["score"]) for h in sorted(q, key=lambda h: -h["score"])]
        for qid, q in zip(["q1", "q2"], hits, strict=True)
    }
    want, _ = evaluate_ranking(to_doc_ranking(ranking, chunk_to_doc), {"q1": {"C"}, "q2": {"A", "D"}}, [10])
    assert got["mrr@k"][10] == pytest.approx(want["mrr@10"], abs=1e-4) == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert got["ndcg@k"][10] == pytest.approx(want["ndcg@10"], abs=1e-4)  # ours are rounded to 4 places
    assert got["accuracy@k"][1] == 0.0
    with pytest.raises(TrainConfigError, match="dev_level"):
        build_ir_evaluator(dev, chunks, "", "", level="paragraph")


def test_precision_defaults():
    cfg = emb(precision="auto", cpu_bf16=False)
    assert precision_flags(cfg, cuda=True, bf16_supported=True) == {"fp16": False, "bf16": True}
    assert precision_flags(cfg, cuda=True, bf16_supported=False) == {"fp16": True, "bf16": False}
    assert precision_flags(cfg, cuda=False, bf16_supported=False) == {"fp16": False, "bf16": False}
    cpu_bf16 = dataclasses.replace(cfg, cpu_bf16=True)  # forced: bf16 autocast on any CPU
    assert precision_flags(cpu_bf16, cuda=False, bf16_supported=False) == {"fp16": False, "bf16": True}
    auto = dataclasses.replace(cfg, cpu_bf16="auto")  # the shipped setting: only where the CPU has native bf16
    assert precision_flags(auto, cuda=False, bf16_supported=False) == {"fp16": False, "bf16": cpu_has_fast_bf16()}
    assert precision_flags(auto, cuda=True, bf16_supported=True) == {"fp16": False, "bf16": True}  # CUDA: unaffected
    with pytest.raises(TrainConfigError):
        precision_flags(dataclasses.replace(cfg, precision="fp16"), cuda=False, bf16_supported=False)


def test_groups_short_of_negatives_are_dropped_not_padded():
    groups = [{"query": "a", "pos": ["p"], "neg": ["n1"]}, {"query": "b", "pos": ["p2"], "neg": ["n1", "n2"]}]
    ds, dropped = groups_to_dataset(groups, 2)
    assert len(ds) == 1 and dropped == 1


def test_every_labeled_positive_becomes_a_row_only_with_positives_all():
    groups = [
        {"query": "a", "pos": ["p1", "p2", "p1"], "neg": ["n1"]},  # two documents, one chunk listed twice
        {"query": "b", "pos": ["q1"], "neg": ["n2"]},
        {"query": "c", "pos": ["r1", "r2"], "neg": []},  # short of negatives: dropped whatever the mode
    ]
    first, dropped_first = groups_to_dataset(groups, 1)
    every, dropped_every = groups_to_dataset(groups, 1, "all")
    assert first["positive"] == ["p1", "q1"] and dropped_first == 1
    assert every["anchor"] == ["a", "a", "b"] and every["positive"] == ["p1", "p2", "q1"] and dropped_every == 1
    assert every["negative_1"] == ["n1", "n1", "n2"]  # each row keeps its group's guarded negatives


def test_checkpoints_are_wiped_when_the_fingerprint_changes(tmp_path):
    ck = tmp_path / "ckpt"
    assert prepare_checkpoint_dir(ck, "aaa").checkpoint is None
    (ck / "checkpoint-5").mkdir()
    (ck / "checkpoint-5" / "trainer_state.json").write_text("{}")
    (ck / "checkpoint-10").mkdir()  # incomplete (killed while saving): removed (tests/test_checkpoints.py)
    assert prepare_checkpoint_dir(ck, "aaa").checkpoint.endswith("checkpoint-5")
    assert prepare_checkpoint_dir(ck, "bbb").checkpoint is None and not (ck / "checkpoint-5").exists()
    a = emb(lr=1e-5).fingerprint("data")
    assert a != emb(lr=2e-5).fingerprint("data") and a != emb(lr=1e-5).fingerprint("other")
    assert a == emb(lr=1e-5, logging_steps=1).fingerprint("data")  # logging does not change training


def test_guards_fire():
    w = training_warnings(
        optimizer_steps=5, final_loss=3.0, batch_size=16, dev_before=0.5, dev_after=0.4, leaked_queries=2
    )
    assert len(w) == 4
    assert (
        training_warnings(
            optimizer_steps=200, final_loss=0.3, batch_size=16, dev_before=0.5, dev_after=0.6, leaked_queries=0
        )
        == []
    )


def test_base_model_is_shipped_unless_dev_evidence_says_the_trained_one_is_better():
    def metrics(gain, low, n=46):
        return {"dev": {"evidence": {"gain": gain, "ci_low": low, "ci_high": gain + (gain - low), "n_queries": n}}}

    keep = emb()
    assert keep.keep_base_if_worse is True  # the shipped setting: never ship what dev cannot tell from a regression
    assert ship_base(keep, metrics(-0.08, -0.15))  # worse
    assert ship_base(keep, metrics(0.04, -0.02))  # better on average, but the interval allows a loss
    assert not ship_base(keep, metrics(0.084, 0.018))  # the sample: +8.4 [+1.8, +15.0] over 46 dev questions
    assert not ship_base(keep, {"dev": {"before": {}, "after": {}}})  # no dev split: the no-dev rule decides
    assert not ship_base(EmbedderTrainConfig.from_params(PARAMS), metrics(-0.08, -0.15))  # the user opted out


def test_dev_evidence_is_a_paired_interval_over_dev_questions(tiny_embedder_path):
    from conftest import VI_SENTENCES

    from ragtune.models import load_embedder, model_fingerprint
    from ragtune.train.embedder.dev import dev_evidence

    chunks = [{"chunk_id": f"d{i}#0000", "doc_id": f"d{i}", "text": t} for i, t in enumerate(VI_SENTENCES)]
    dev = [
        {"query_id": f"q{i}", "query": t.split(",")[0], "positive_doc_ids": [f"d{i}"]}
        for i, t in enumerate(VI_SENTENCES)
    ]
    model = load_embedder(str(tiny_embedder_path))
    same = dev_evidence(
        model, model, dev, chunks, "query: ", "passage: ", base_fingerprint=model_fingerprint(str(tiny_embedder_path))
    )
    assert same == {"gain": 0.0, "ci_low": 0.0, "ci_high": 0.0, "n_queries": 10}  # a model against itself
    import torch

    other = load_embedder(str(tiny_embedder_path))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.5)
    ev = dev_evidence(other, model, dev, chunks, "query: ", "passage: ", base_fingerprint="")
    assert ev["n_queries"] == 10 and ev["ci_low"] <= ev["gain"] <= ev["ci_high"]


def test_merge_with_base_interpolates_weights(tiny_embedder_path):
    import torch
    from sentence_transformers import SentenceTransformer

    assert EmbedderTrainConfig.from_params(PARAMS).merge_alpha == 0.7
    with pytest.raises(TrainConfigError, match="merge_alpha"):
        emb(merge_alpha=0)
    base = SentenceTransformer(str(tiny_embedder_path), device="cpu")
    tuned = SentenceTransformer(str(tiny_embedder_path), device="cpu")
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(1.0)
    name, before = next((n, t.clone()) for n, t in tuned.state_dict().items() if t.is_floating_point())
    merge_with_base(tuned, base, 0.7)
    after, origin = tuned.state_dict()[name], base.state_dict()[name]
    assert torch.allclose(after, origin + 0.7, atol=1e-5)  # (1 - a)·base + a·(base + 1)
    assert not torch.allclose(after, before)
    ints = [n for n, t in base.state_dict().items() if not t.is_floating_point()]
    assert all(torch.equal(tuned.state_dict()[n], base.state_dict()[n]) for n in ints)  # ids copied, not averaged
    merge_with_base(tuned, base, 1.0)  # alpha 1 = keep the fine-tuned weights
    assert torch.allclose(tuned.state_dict()[name], origin + 0.7, atol=1e-5)


def test_merge_is_undone_only_when_dev_clearly_prefers_the_unmerged_model(tiny_embedder_path):
    import torch
    from sentence_transformers import SentenceTransformer

    assert EmbedderTrainConfig.from_params(PARAMS).merge_tolerance == 0.01
    cfg = emb(merge_alpha=0.5, merge_tolerance=0.005)
    base = SentenceTransformer(str(tiny_embedder_path), device="cpu")

    def tuned_model():
        m = SentenceTransformer(str(tiny_embedder_path), device="cpu")
        with torch.no_grad():
            for p in m.parameters():
                p.add_(1.0)
        return m

    name = next(n for n, t in base.state_dict().items() if t.is_floating_point())
    origin = base.state_dict()[name]

    def scripted(*values):
        it = iter({"dev_cosine_ndcg@10": v} for v in values)
        return lambda model: next(it)

    # dev cannot tell them apart (within tolerance): the merge stays
    model = tuned_model()
    unmerged, after, label = merge_checked_on_dev(model, base, cfg, scripted(0.8732, 0.8730))
    assert label == "fine-tuned, merged with base (alpha 0.5)" and after["dev_cosine_ndcg@10"] == 0.8730
    assert torch.allclose(model.state_dict()[name], origin + 0.5, atol=1e-5)
    # dev clearly prefers the unmerged model (ALQAC: .840 vs .790): the merge is undone
    model = tuned_model()
    unmerged, after, label = merge_checked_on_dev(model, base, cfg, scripted(0.84, 0.79))
    assert "lost on dev" in label and after == unmerged == {"dev_cosine_ndcg@10": 0.84}
    assert torch.allclose(model.state_dict()[name], origin + 1.0, atol=1e-5)
    # merge_alpha 1: no merge, one evaluation
    model = tuned_model()
    assert merge_checked_on_dev(model, None, emb(merge_alpha=1.0), scripted(0.5))[2] == "fine-tuned"


def test_tiny_model_trains_and_loss_drops(tiny_embedder_path, tmp_path):
    from sentence_transformers import SentenceTransformer

    cfg = emb(
        max_steps=30,
        batch_size=8,
        lr=1e-3,
        n_hard_negatives=0,
        logging_steps=1,
        save_steps=100,
        warmup_ratio=0.0,
        scale=20.0,  # the loss's own default: the tiny random model's cosines are not e5's narrow range
        cpu_bf16=False,
    )
    model = SentenceTransformer(str(tiny_embedder_path), device="cpu")
    topics = ["nghỉ phép", "đào tạo", "mật khẩu", "sao lưu", "công tác", "vpn", "bảo hiểm", "tuyển dụng"]
    groups = [
        {"query": f"hỏi về {t} lần {i}", "pos": [f"tài liệu {t} quy định {i}"], "neg": []}
        for t in topics
        for i in range(4)
    ]
    ds, _ = groups_to_dataset(groups, 0)
    trainer = build_trainer(model, cfg, ds, None, tmp_path, column_prompts(0, "query: ", "passage: "))
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert trainer.state.global_step == 30
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5


def test_model_after_bf16_training_computes_what_the_saved_model_computes(tiny_embedder_path, tmp_path):
    """accelerate leaves an autocast wrapper on model.forward after bf16 training; the dev scores after training and
    the merge check must not run in bf16 while the shipped model runs in fp32. The trainer's Fp32AfterTraining
    callback removes it; without that callback the in-memory model is measurably different from the saved one."""
    import torch
    from sentence_transformers import SentenceTransformer

    cfg = emb(max_steps=3, batch_size=4, lr=1e-3, n_hard_negatives=0, save_steps=100, cpu_bf16=True, scale=20.0)
    groups = [{"query": f"hỏi {i} về nghỉ phép", "pos": [f"tài liệu {i} quy định"], "neg": []} for i in range(12)]
    ds, _ = groups_to_dataset(groups, 0)
    texts = ["query: nghỉ phép mấy ngày", "passage: tài liệu quy định về nghỉ phép năm"]

    def train(with_fp32_callback: bool, out: str) -> tuple[torch.Tensor, torch.Tensor]:
        model = SentenceTransformer(str(tiny_embedder_path), device="cpu")
        trainer = build_trainer(model, cfg, ds, None, tmp_path / out, column_prompts(0, "query: ", "passage: "))
        assert trainer.args.bf16
        fp32 = [cb for cb in trainer.callback_handler.callbacks if type(cb).__name__ == "Fp32AfterTraining"]
        assert len(fp32) == 1
        if not with_fp32_callback:
            trainer.remove_callback(fp32[0])
        trainer.train()
        model.save(str(tmp_path / out / "model"))
        shipped = SentenceTransformer(str(tmp_path / out / "model"), device="cpu")
        return model.encode(texts, convert_to_tensor=True), shipped.encode(texts, convert_to_tensor=True)

    in_memory, shipped = train(with_fp32_callback=False, out="wrapped")
    assert not torch.equal(in_memory, shipped)  # the wrapper is real: without the callback the model runs in bf16
    in_memory, shipped = train(with_fp32_callback=True, out="fixed")
    assert torch.equal(in_memory, shipped)


def test_training_curves_are_plotted_against_the_optimizer_step(tiny_embedder_path, tmp_path):
    """DVCLive's own step counter advances per log call, so loss and dev points would interleave on a meaningless
    axis; ragtune's callback puts each point at its global step, and the before-training dev score at step 0."""
    import csv

    from sentence_transformers import SentenceTransformer

    from ragtune.train.common import dvclive_callbacks

    cfg = emb(max_steps=6, batch_size=4, n_hard_negatives=0, logging_steps=2, eval_steps=3, save_steps=3)
    groups = [{"query": f"hỏi {i} về nghỉ phép", "pos": [f"tài liệu {i} quy định"], "neg": []} for i in range(12)]
    chunks = [{"chunk_id": f"c{i}", "doc_id": f"d{i}", "text": f"tài liệu {i} quy định"} for i in range(12)]
    dev = [{"query_id": "q1", "query": "hỏi 1 về nghỉ phép", "positive_doc_ids": ["d1"], "positive_chunk_ids": ["c1"]}]
    ds, _ = groups_to_dataset(groups, 0)
    model = SentenceTransformer(str(tiny_embedder_path), device="cpu")
    evaluator = build_ir_evaluator(dev, chunks, "", "", level="doc")
    before = evaluator(model)
    live_dir = tmp_path / "live"
    callbacks = dvclive_callbacks(str(live_dir), resume=False, before=before)
    assert len(callbacks) == 1
    trainer = build_trainer(model, cfg, ds, evaluator, tmp_path / "ck", column_prompts(0, "", ""), callbacks=callbacks)
    trainer.train()

    def column(path: str) -> dict[int, float]:
        with open(live_dir / "plots" / "metrics" / path, encoding="utf-8") as f:
            return {
                int(r["step"]): float(r[next(k for k in r if k != "step")]) for r in csv.DictReader(f, delimiter="\t")
            }

    assert sorted(column("loss.tsv")) == [1, 2, 4, 6]  # logging_first_step, then every 2 steps
    dev_curve = column("eval/dev_cosine_ndcg@10.tsv")
    assert sorted(dev_curve) == [0, 3, 6]
    assert dev_curve[0] == pytest.approx(before["dev_cosine_ndcg@10"])


def _same_weights(a_path, b_path) -> bool:
    import torch
    from sentence_transformers import SentenceTransformer

    a = SentenceTransformer(str(a_path), device="cpu").state_dict()
    b = SentenceTransformer(str(b_path), device="cpu").state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _untrained_outputs_exist(work) -> None:
    """DVC requires every declared output after a run, trained or not; the curve folder holds no stale curve."""
    assert (work / "models/embedder_checkpoints").is_dir() and not any((work / "models/embedder_checkpoints").iterdir())
    assert (work / "dvclive/train_embedder/plots/metrics").is_dir()
    assert not any((work / "dvclive/train_embedder/plots/metrics").iterdir())


def test_stage_without_dev_ships_the_base_model_and_says_so(tmp_path, tiny_embedder_path):
    """No dev question: nothing could see a fine-tune lose to its base, so the base ships, loudly, with every
    metrics file a trained run writes."""
    from conftest import make_stage_dir, run_stage

    from ragtune.io import read_json

    work = make_stage_dir(tmp_path, tiny_embedder_path, dev=False)
    (work / "dvclive/train_embedder/plots/metrics").mkdir(parents=True)
    (work / "dvclive/train_embedder/plots/metrics/loss.tsv").write_text("step\tloss\n1\t2.0\n")  # an old run's curve
    out = run_stage(work, "train_embedder")
    m = read_json(work / "metrics/train_embedder.json")
    assert m["shipped"] == "base (no dev questions: unchecked)"
    assert len(m["warnings"]) == 1 and "NOT TRAINED" in m["warnings"][0]
    assert "ingest.queries" in m["warnings"][0] and "train_embedder.ship_unchecked: true" in m["warnings"][0]
    assert "ship_unchecked" in out  # printed, not only stored
    assert m["effective"]["optimizer_steps"] == 0 and m["effective"]["loss"] == "MultipleNegativesRankingLoss"
    assert m["train"]["rows"] == 22 and m["train"]["positives_not_trained"] == 22
    assert m["plan"]["total_steps"] == 6 and m["plan"]["rows"] == 22 and m["dev"] == {"before": {}, "after": {}}
    assert _same_weights(work / "models/embedder", tiny_embedder_path)
    card = (work / "models/embedder/README.md").read_text(encoding="utf-8")
    assert "the base model, not fine-tuned" in card and "no dev questions: unchecked" in card
    assert "| epochs | 1.0 |" in card and "| eval_steps | 2 |" in card  # the resolved plan, not "auto"
    _untrained_outputs_exist(work)


def test_stage_enabled_false_ships_the_base_model_quietly(tmp_path, tiny_embedder_path):
    """A base-model bake-off: the base model goes out with a card saying so, and no warning (it was asked for)."""
    from conftest import make_stage_dir, run_stage

    from ragtune.io import read_json

    work = make_stage_dir(tmp_path, tiny_embedder_path, train_embedder={"enabled": False})
    out = run_stage(work, "train_embedder")
    m = read_json(work / "metrics/train_embedder.json")
    assert m["shipped"] == "base (train_embedder.enabled: false)" and m["warnings"] == []
    assert m["effective"]["optimizer_steps"] == 0 and "plan" in m
    assert "enabled: false" in out and "schedule:" not in out
    assert _same_weights(work / "models/embedder", tiny_embedder_path)
    card = (work / "models/embedder/README.md").read_text(encoding="utf-8")
    assert "the base model, not fine-tuned" in card and "train_embedder.enabled: false" in card
    _untrained_outputs_exist(work)


def test_stage_ship_unchecked_trains_and_warns(tmp_path, tiny_embedder_path):
    """ship_unchecked: true without dev questions trains as before (epochs: auto sized to the 22 rows), and every
    report says that nothing checked the result."""
    from conftest import make_stage_dir, run_stage

    from ragtune.io import read_json

    work = make_stage_dir(tmp_path, tiny_embedder_path, dev=False, train_embedder={"ship_unchecked": True})
    out = run_stage(work, "train_embedder")
    m = read_json(work / "metrics/train_embedder.json")
    # 22 rows / 4 = 6 steps per epoch → 1 epoch reaches auto_min_steps 6; eval/save at ceil(0.3 × 6) = 2
    assert m["plan"] == {
        "rows": 22,
        "steps_per_epoch": 6,
        "epochs": 1.0,
        "max_steps": -1,
        "total_steps": 6,
        "eval_steps": 2,
        "save_steps": 2,
        "reason": m["plan"]["reason"],
    }
    assert "schedule: 22 rows / 4 per step = 6 steps per epoch" in out
    assert m["effective"]["optimizer_steps"] == 6 and m["effective"]["epochs"] == 1.0
    assert m["shipped"].startswith("fine-tuned") and m["shipped"].endswith("(no dev questions: unchecked)")
    assert any("UNCHECKED" in w and "ingest.queries" in w for w in m["warnings"])
    assert not _same_weights(work / "models/embedder", tiny_embedder_path)
    card = (work / "models/embedder/README.md").read_text(encoding="utf-8")
    assert "# ragtune fine-tuned embedder" in card and "Schedule: 22 rows" in card
