"""The training stages' wiring, through run_train_embedder / run_train_reranker on the tiny model: every param
reaches the trainer the stage builds, and the stage ships what the rules say (trained, merged, or the base model).

The trainer is observed with a spy (the real ``build_trainer``, its result recorded), never replaced.
"""

from __future__ import annotations

import pytest
import yaml
from conftest import make_stage_dir
from test_training import PARAMS, _same_weights

from ragtune.io import read_json, read_jsonl, write_jsonl
from ragtune.paths import Paths
from ragtune.precision import cpu_has_fast_bf16
from ragtune.train.embedder import run as embedder_run
from ragtune.train.embedder.run import run_train_embedder
from ragtune.train.reranker import run as reranker_run
from ragtune.train.reranker.run import run_train_reranker

# PARAMS differs from the shipped params.yaml in every key but these five; here they differ too, and the stage
# trains (enabled) with two hard negatives per row, so the run shows each value reaching the trainer.
WIRED = {
    **PARAMS,
    "lr": 7e-5,
    "precision": "bf16",  # auto (the default) with cpu_bf16: false would train in fp32
    "cpu_bf16": False,  # only read under precision: auto (see test_run_train_embedder_ships_the_base_model...)
    "freeze_embeddings": False,
    "dataloader_num_workers": 1,
    "enabled": True,
}


def _params(work) -> dict:
    return yaml.safe_load((work / "params.yaml").read_text(encoding="utf-8"))


def _spy(monkeypatch, module) -> list:
    """Record every trainer the run module builds (the real one: the run goes on as in production)."""
    built: list = []
    real = module.build_trainer

    def spy(*args, **kwargs):
        built.append(real(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(module, "build_trainer", spy)
    return built


def test_every_param_reaches_the_trainer_through_the_stage(tmp_path, tiny_embedder_path, monkeypatch):
    from sentence_transformers.base.sampler import BatchSamplers
    from transformers import EarlyStoppingCallback

    work = make_stage_dir(tmp_path, tiny_embedder_path, train_embedder=WIRED)
    paths = Paths(work)
    groups = read_jsonl(paths.train_groups)
    for i, g in enumerate(groups):  # a second hard negative per group: n_hard_negatives is 2 here
        other = groups[(i + 2) % len(groups)]
        g["neg"].append(other["pos"][0])
        g["neg_ids"].append(other["pos_ids"][0])
    write_jsonl(paths.train_groups, groups)
    # max_access_level: internal (PARAMS): D7 is restricted, the others at or below internal
    levels = {"D7": "Restricted", "D2": "internal"}
    write_jsonl(
        paths.documents, [{"doc_id": f"D{i}", "metadata": {"access_level": levels.get(f"D{i}")}} for i in range(8)]
    )
    built = _spy(monkeypatch, embedder_run)
    params = _params(work)

    summary = run_train_embedder(
        params["model"], params["train_embedder"], paths, bm25_p=params["bm25"], access_p=params["access"]
    )

    trainer = built[-1]
    a = trainer.args
    assert (a.seed, a.data_seed) == (7, 7)
    assert a.learning_rate == 7e-5 and trainer.lr_scheduler.base_lrs[0] == 7e-5  # reached the optimizer
    assert a.warmup_steps == 0.2  # transformers v5: float < 1 = ratio
    assert getattr(a.lr_scheduler_type, "value", a.lr_scheduler_type) == "cosine"
    assert a.weight_decay == 0.05
    assert a.num_train_epochs == 3 and a.max_steps == 11 and trainer.state.global_step == 11
    assert a.per_device_train_batch_size == 4 and a.gradient_accumulation_steps == 2
    assert a.eval_steps == 3 and a.save_steps == 6 and a.save_total_limit == 4
    assert a.load_best_model_at_end is False and a.metric_for_best_model == "eval_dev_cosine_ndcg@10"
    assert a.activation_checkpointing is True
    assert a.bf16 is True and a.fp16 is False
    assert a.logging_steps == 2 and a.dataloader_num_workers == 1
    assert a.batch_sampler == BatchSamplers.NO_DUPLICATES
    assert set(a.prompts) == {"anchor", "positive", "negative_1", "negative_2"}
    assert any(
        isinstance(cb, EarlyStoppingCallback) and cb.early_stopping_patience == 2
        for cb in trainer.callback_handler.callbacks
    )
    assert type(trainer.evaluator).__name__ == "InformationRetrievalEvaluator"  # dev_level: chunk
    # dev_pool_k: 3: each dev question's aligned chunk + BM25's and the base model's first 3, not all 8 chunks
    # (the 2 questions' pools overlap here: 6 chunks; a pool of 3 left dev flat, and early stopping ended the run)
    assert {"D0#0", "D3#0"} <= set(trainer.evaluator.corpus_ids) and len(trainer.evaluator.corpus_ids) < 8
    loss = trainer.loss
    assert type(loss).__name__ == "MatryoshkaLoss" and list(loss.matryoshka_dims) == [32, 16]
    inner = loss.loss
    assert type(inner).__name__ == "CachedMultipleNegativesRankingLoss" and inner.mini_batch_size == 3
    assert inner.scale == 50.0 and tuple(inner.directions) == ("query_to_doc", "doc_to_query")
    assert inner.hardness_mode == "in_batch_negatives" and inner.hardness_strength == 9.0
    hf = trainer.model[0].auto_model
    assert trainer.model.max_seq_length == 64
    assert hf.embeddings.word_embeddings.weight.requires_grad  # freeze_embeddings: false
    assert not any(p.requires_grad for p in hf.encoder.layer[0].parameters())  # freeze_layers: 1
    assert all(p.requires_grad for p in hf.encoder.layer[1].parameters())
    attn = [m.dropout.p for m in hf.modules() if type(m).__name__ == "BertSelfAttention"]
    assert attn == [0.05] * hf.config.num_hidden_layers

    m = read_json(paths.metrics("train_embedder"))
    assert m["train"]["positives"] == "all" and m["effective"]["hard_negatives_per_query"] == 2
    # max_access_level: the 3 questions about D7 left the rows, and no text of it reached the trainer
    excluded = m["train"]["access_excluded"]
    assert excluded["max_access_level"] == "internal"
    assert excluded["groups_dropped"] == {"confidential": 0, "restricted": 3}
    hidden = {g["pos"][0] for g in groups if g["pos_ids"][0] == "D7#0"}
    cells = [v for row in trainer.train_dataset for v in row.values()]
    assert len(hidden) == 1 and not [c for c in cells if any(h in c for h in hidden)]
    assert m["dev"]["pool"]["k"] == 3 and m["dev"]["pool"]["chunks"] == len(trainer.evaluator.corpus_ids)
    assert m["effective"]["learning_rate"] == 7e-5 and m["effective"]["optimizer_steps"] == 11
    # each optimizer step, dev check (steps 3, 6, 9 and the last) and save (6 and the last) timed, for `ragtune plan`
    timing = m["train"]["timing"]
    assert (timing["steps"], timing["evals"], timing["saves"]) == (11, 4, 2)
    assert min(timing["step_s_median"], timing["eval_s_mean"], timing["save_s_mean"]) > 0
    assert "unmerged" in m["dev"]  # merge_alpha 0.7 was applied and checked on dev
    assert m["shipped"].startswith("fine-tuned") and "evidence" in m["dev"]  # keep_base_if_worse: false
    card = (paths.embedder / "README.md").read_text(encoding="utf-8")
    assert "| lr | 7e-05 |" in card and "| max_steps | 11 |" in card and "| max_access_level | internal |" in card
    assert "## Dev split (chunk level)" in card  # dev_level: chunk here: the card names the level measured
    assert summary["wrote"].startswith(f"{paths.embedder} (")


@pytest.mark.parametrize("keep_base_if_worse", [True, False])
def test_run_train_embedder_ships_the_base_model_when_dev_shows_no_gain(
    tmp_path, tiny_embedder_path, keep_base_if_worse
):
    """A run whose dev evidence cannot rule out a loss (lr so small that the rankings cannot move: gain 0, interval
    [0, 0]) ships the base model unchanged with keep_base_if_worse, and the trained one without it."""
    overrides = {"lr": 1e-9, "max_steps": 2, "keep_base_if_worse": keep_base_if_worse, "dev_level": "doc"}
    work = make_stage_dir(tmp_path, tiny_embedder_path, train_embedder=overrides)
    paths = Paths(work)
    params = _params(work)

    summary = run_train_embedder(params["model"], params["train_embedder"], paths, bm25_p=params["bm25"])

    m = read_json(paths.metrics("train_embedder"))
    ev = m["dev"]["evidence"]
    assert ev["n_queries"] == 2 and ev["gain"] == 0 and ev["ci_low"] <= 0
    # precision auto + cpu_bf16 auto (shipped): bf16 exactly where this CPU computes it natively
    assert m["effective"]["optimizer_steps"] == 2 and m["effective"]["bf16"] is cpu_has_fast_bf16()
    card = (paths.embedder / "README.md").read_text(encoding="utf-8")
    assert "## Dev split (document level)" in card  # dev_level: doc, the shipped default (was always "chunk level")
    if keep_base_if_worse:
        assert m["shipped"] == "base"
        assert any("is the BASE model, unchanged" in w for w in m["warnings"])
        assert _same_weights(paths.embedder, tiny_embedder_path)
        assert "the base model, not fine-tuned" in card
        assert summary["wrote"].startswith(f"{paths.embedder} (base; 2 steps")
    else:
        assert m["shipped"].startswith("fine-tuned")
        assert not any("BASE model" in w for w in m["warnings"])
        assert "ragtune fine-tuned embedder" in card  # (its weights: lr 1e-9 moves none of them, in fp32)
    assert not any(paths.embedder_checkpoints.iterdir())  # a finished run leaves no checkpoint to "resume"


def test_the_shipped_embedder_s_corpus_vectors_are_cached_by_its_dev_check(tmp_path, tiny_embedder_path):
    """The dev evidence encodes the corpus with the trained model; it caches those vectors under the fingerprint of
    the saved folder, which is how index, train_reranker and evaluate load it: they find every chunk cached, and the
    cached vectors are the bytes a fresh encode of the saved folder gives (so the outputs do not depend on it)."""
    import hashlib

    import numpy as np

    from ragtune.retrieval import DenseEncoder, load_dense

    work = make_stage_dir(tmp_path, tiny_embedder_path, train_embedder={"max_steps": 2, "keep_base_if_worse": False})
    paths = Paths(work)
    params = _params(work)
    run_train_embedder(params["model"], params["train_embedder"], paths, bm25_p=params["bm25"])

    texts = [c["text"] for c in read_jsonl(paths.chunks)]
    shipped = load_dense(params["model"], name=str(paths.embedder))  # as the index stage loads it
    hashes = {hashlib.sha1(t.encode("utf-8")).hexdigest() for t in texts}
    assert set(shipped.encoder._store(shipped.passage_prompt).lookup(hashes)) == hashes  # all there, none encoded yet
    fresh = DenseEncoder(shipped.model, shipped.encoder.fingerprint, use_cache=False)
    # model.max_seq_length (64 here) truncates some chunks that train_embedder.max_seq_length (80) keeps: the check
    # must encode at the former, as the later stages do
    assert shipped.model.max_seq_length < params["train_embedder"]["max_seq_length"]
    assert np.array_equal(
        shipped.encoder.encode(texts, shipped.passage_prompt), fresh.encode(texts, shipped.passage_prompt)
    )


def test_run_train_reranker_mines_trains_and_writes(tmp_path, tiny_embedder_path, monkeypatch):
    """The reranker stage's wiring: groups mined from models/embedder's ranking, the new head's learning rate in
    the optimizer, the metrics and the card."""
    work = make_stage_dir(
        tmp_path, tiny_embedder_path, train_reranker={"kind": "cross_encoder", "head_lr": 3e-3, "lr": 2e-5}
    )
    paths = Paths(work)
    built = _spy(monkeypatch, reranker_run)
    params = _params(work)

    summary = run_train_reranker(params["model"], params["train_reranker"], paths)

    groups = read_jsonl(paths.reranker_train_groups)
    dev_groups = read_jsonl(paths.reranker_dev_groups)
    train = read_jsonl(paths.train)
    assert len(groups) == len(train) and len(dev_groups) == 2
    assert all(g["neg_sources"].count("embedder") <= params["train_reranker"]["n_hard"] for g in groups)
    trainer = built[-1]
    lrs = sorted(set(trainer.lr_scheduler.base_lrs))  # the groups' lr before the schedule decays it
    assert lrs == [2e-5, 3e-3]  # body, new head
    m = read_json(paths.metrics("train_reranker"))
    assert m["shipped"] == "fine-tuned" and m["effective"]["head_learning_rate"] == 3e-3
    assert m["effective"]["optimizer_steps"] == m["plan"]["total_steps"] == trainer.state.global_step
    assert m["dev"]["n_queries"] == 2 and "ndcg@10" in m["dev"]["after"]
    assert (paths.reranker / "README.md").read_text(encoding="utf-8").startswith("---\nlibrary_name")
    # base: embedder, the local fine-tuned folder (a Hub start model would give its commit); no checkpoint was cut short
    assert m["effective"]["base_model"]["commit"] == "local" and m["train"]["incomplete_checkpoints"] == []
    assert summary["read"] == f"{len(train)} training pairs (0 capped), 2 dev queries"


@pytest.mark.parametrize("how", ["enabled: false", "no dev evidence"])
def test_a_shipped_base_model_reads_the_base_model_s_cached_vectors(tmp_path, tiny_embedder_path, how):
    """When the base model ships, models/embedder is a re-save of it with other files (a card, its own config), so
    its fingerprint differs; it must still read the vectors the base model cached instead of the index stage
    encoding the corpus again, and the vectors it reads are the bytes its own encode gives."""
    import hashlib

    import numpy as np

    from ragtune.retrieval import DenseEncoder, load_dense

    overrides = {"enabled": False} if how == "enabled: false" else {"lr": 1e-9, "max_steps": 2}
    work = make_stage_dir(tmp_path, tiny_embedder_path, train_embedder=overrides)
    paths, params = Paths(work), _params(work)
    texts = [c["text"] for c in read_jsonl(paths.chunks)]
    base = load_dense(params["model"])
    base.encode_passages(texts)  # what pairs and negatives leave in the cache

    run_train_embedder(params["model"], params["train_embedder"], paths, bm25_p=params["bm25"])

    m = read_json(paths.metrics("train_embedder"))
    assert m["shipped"].startswith("base") and m["reads_base_vectors"] is True
    shipped = load_dense(params["model"], name=str(paths.embedder))  # as the index stage loads it
    assert shipped.encoder.fingerprint == base.encoder.fingerprint
    hashes = {hashlib.sha1(t.encode("utf-8")).hexdigest() for t in texts}
    assert set(shipped.encoder._store(shipped.passage_prompt).lookup(hashes)) == hashes
    fresh = DenseEncoder(shipped.model, "", use_cache=False)
    assert np.array_equal(shipped.encode_passages(texts), fresh.encode(texts, shipped.passage_prompt))


def test_a_folder_that_computes_other_vectors_keeps_its_own_cache(tmp_path, tiny_embedder_path):
    """share_cached_vectors writes no alias for a folder whose weights differ by one value."""
    import torch

    from ragtune.models import load_embedder, model_fingerprint
    from ragtune.retrieval import cached_as, share_cached_vectors

    other = load_embedder(str(tiny_embedder_path))
    with torch.no_grad():
        next(p for n, p in other.named_parameters() if "dense.weight" in n)[0, 0] += 0.5
    other.save(str(tmp_path / "other"))
    probe = ["Nhân viên chính thức có mười hai ngày nghỉ phép năm.", "Mật khẩu dài ít nhất mười hai ký tự."]

    assert not share_cached_vectors(tmp_path / "other", tiny_embedder_path, probe, max_seq_length=64, batch_size=4)
    assert cached_as(model_fingerprint(tmp_path / "other")) == model_fingerprint(tmp_path / "other")
    load_embedder(str(tiny_embedder_path)).save(str(tmp_path / "same"))  # a re-save: other files, the same weights
    assert share_cached_vectors(tmp_path / "same", tiny_embedder_path, probe, max_seq_length=64, batch_size=4)
    assert cached_as(model_fingerprint(tmp_path / "same")) == model_fingerprint(tiny_embedder_path)
