"""train_reranker.kind: the shared keys reach every kind's trainer, the stage trains and ships each kind, and
evaluate / search load whatever kind was shipped through one loader."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from conftest import make_stage_dir, shipped_params
from test_reranker_llm import INSTRUCTION, TARGETS, tiny_qwen3  # noqa: F401 (tiny_qwen3 is a fixture)

from ragtune import rerank
from ragtune.io import read_json
from ragtune.paths import Paths
from ragtune.rerankers.late_interaction import LateInteractionReranker
from ragtune.rerankers.llm import LLMReranker
from ragtune.train.reranker import kinds
from ragtune.train.reranker.config import RerankerConfigError, RerankerTrainConfig
from ragtune.train.reranker.kinds import kind_settings
from ragtune.train.reranker.run import run_train_reranker

PAIRS = [("mật khẩu đổi khi nào", "Mật khẩu phải đổi sau chín mươi ngày."), ("nghỉ phép", "Sao lưu lúc hai giờ.")]


def _cfg(**overrides) -> RerankerTrainConfig:
    return RerankerTrainConfig.from_params(shipped_params("train_reranker", **overrides))


@pytest.mark.parametrize("kind", ["late_interaction", "llm"])
def test_the_shared_keys_reach_each_kind_and_its_own_keys_come_from_its_section(kind):
    cfg = _cfg(kind=kind, lr=7e-5, batch_size=6, warmup_ratio=0.2, weight_decay=0.03, seed=11, logging_steps=3)
    settings = kind_settings(cfg, dict(getattr(cfg, kind)), 2.0, 40)
    assert (settings.lr, settings.batch_size, settings.warmup_ratio, settings.weight_decay) == (7e-5, 6, 0.2, 0.03)
    assert (settings.seed, settings.logging_steps, settings.epochs, settings.max_steps) == (11, 3, 2.0, 40)
    for key, value in shipped_params("train_reranker")[kind].items():
        got = getattr(settings, key)
        assert (list(got) if isinstance(got, tuple) else got) == value


def test_a_bad_kind_or_kind_key_is_refused_with_its_params_path():
    with pytest.raises(RerankerConfigError, match=r"train_reranker\.kind='colbert'"):
        _cfg(kind="colbert")
    cfg = _cfg(
        kind="late_interaction", late_interaction={**shipped_params("train_reranker")["late_interaction"], "x": 1}
    )
    with pytest.raises(RerankerConfigError, match=r"train_reranker\.late_interaction: unknown key\(s\) x; .*scale"):
        kind_settings(cfg, cfg.late_interaction, 1.0, -1)


def _stage(tmp_path, tiny_embedder_path, **reranker):
    work = make_stage_dir(tmp_path, tiny_embedder_path, train_reranker={"max_steps": 2, "batch_size": 4, **reranker})
    params = yaml.safe_load((work / "params.yaml").read_text(encoding="utf-8"))
    summary = run_train_reranker(params["model"], params["train_reranker"], Paths(work))
    return Paths(work), read_json(Paths(work).metrics("train_reranker")), summary


LI = {
    "max_query_length": 32,
    "max_doc_length": 64,
    "scale": 20.0,
    "n_negatives": 1,
    "attention_dropout": None,
    "freeze_embeddings": False,
}


def test_late_interaction_kind_trains_ships_and_loads_through_the_common_loader(tmp_path, tiny_embedder_path):
    paths, m, summary = _stage(tmp_path, tiny_embedder_path, kind="late_interaction", lr=7e-5, late_interaction=LI)
    assert m["kind"] == "late_interaction" and m["kept"] == kinds.kept_model(m["dev"])
    assert m["shipped"] == ("fine-tuned" if m["kept"] == "trained" else "untrained start (training made dev worse)")
    assert m["effective"]["learning_rate"] == 7e-5 and m["effective"]["optimizer_steps"] == 2
    assert "ndcg@10" in m["dev"]["after"] and "head" in m["not_read"]
    assert rerank.reranker_kind(paths.reranker) == "late_interaction" and "late_interaction" in summary["wrote"]
    model = rerank.load_reranker(paths.reranker)
    assert isinstance(model, LateInteractionReranker)
    scores = rerank.predict(model, PAIRS, batch_size=2, bf16=True)  # what evaluate and search call
    assert len(scores) == 2 and np.isfinite(scores).all()


@pytest.mark.parametrize("dropout", [0.0, 0.3, None])
def test_late_interaction_attention_dropout_reaches_the_model_it_trains(
    tmp_path, tiny_embedder_path, monkeypatch, dropout
):
    from torch.nn import Dropout

    from ragtune.train.reranker import late_interaction

    real, seen = late_interaction.build_trainer, []

    def spy(reranker, *args, **kwargs):  # what the trainer gets: the attention modules' dropout as training runs
        seen.extend(
            m.dropout.p
            for m in reranker.model.modules()
            if "Attention" in type(m).__name__ and isinstance(getattr(m, "dropout", None), Dropout)
        )
        return real(reranker, *args, **kwargs)

    monkeypatch.setattr(late_interaction, "build_trainer", spy)
    li = {**LI, "attention_dropout": dropout}
    _, m, _ = _stage(tmp_path, tiny_embedder_path, kind="late_interaction", late_interaction=li)
    own = json.loads((tiny_embedder_path / "config.json").read_text())["attention_probs_dropout_prob"]
    assert seen and set(seen) == {own if dropout is None else dropout}
    assert m["effective"]["attention_dropout"] == dropout
    assert m["effective"]["attention_dropout_modules"] == (0 if dropout is None else len(seen))
    assert "attention_dropout" in m["not_read"]  # the cross-encoder's key, not this kind's


@pytest.mark.parametrize("freeze", [True, False])
def test_late_interaction_freeze_embeddings_reaches_the_model_it_trains(
    tmp_path, tiny_embedder_path, monkeypatch, freeze
):
    from ragtune.train.reranker import late_interaction

    real, seen = late_interaction.build_trainer, []

    def spy(reranker, *args, **kwargs):  # what the trainer gets: is the token-embedding matrix trainable?
        seen.append(reranker.model[0].auto_model.get_input_embeddings().weight.requires_grad)
        return real(reranker, *args, **kwargs)

    monkeypatch.setattr(late_interaction, "build_trainer", spy)
    _, m, _ = _stage(
        tmp_path, tiny_embedder_path, kind="late_interaction", late_interaction={**LI, "freeze_embeddings": freeze}
    )
    assert seen == [not freeze]
    assert (m["effective"]["frozen_params"] > 0) is freeze and m["effective"]["trainable_params"] > 0


def test_a_kind_that_dev_says_got_worse_ships_its_untrained_start(tmp_path, tiny_embedder_path, monkeypatch):
    real, trained = kinds.train_kind, []

    def worse_on_dev(*args, **kwargs):  # the real training and save, then dev reports a loss
        metrics = real(*args, **kwargs)
        trained.extend(rerank.load_reranker(args[4]).predict(PAIRS, batch_size=2))  # args[4]: the out dir
        metrics["dev"]["after"]["ndcg@10"] = metrics["dev"]["before"]["ndcg@10"] - 0.1
        return metrics

    monkeypatch.setattr(kinds, "train_kind", worse_on_dev)
    # lr high enough that two steps move the weights: the shipped scores must be the start's, not the trained ones
    paths, m, summary = _stage(tmp_path, tiny_embedder_path, kind="late_interaction", lr=1e-3, late_interaction=LI)
    assert m["kept"] == "start" and m["shipped"] == "untrained start (training made dev worse)"
    assert any("holds the untrained start" in w for w in m["warnings"]) and "untrained start" in summary["wrote"]
    start = LateInteractionReranker.from_embedder(paths.embedder, max_query_length=32, max_doc_length=64)
    shipped = rerank.load_reranker(paths.reranker)
    np.testing.assert_allclose(shipped.predict(PAIRS, batch_size=2), start.predict(PAIRS, batch_size=2), atol=1e-6)
    assert np.abs(np.array(trained) - start.predict(PAIRS, batch_size=2)).max() > 1e-4  # what it replaced differed


def test_kept_model_is_the_start_only_when_dev_got_worse():
    assert kinds.kept_model({"before": {"ndcg@10": 0.6}, "after": {"ndcg@10": 0.59}}) == "start"
    assert kinds.kept_model({"before": {"ndcg@10": 0.6}, "after": {"ndcg@10": 0.6}}) == "trained"  # a tie: trained
    assert kinds.kept_model({"before": {}, "after": {}}) == "trained"  # no dev question: ship_unchecked decided
    assert kinds.kept_model({}) == "trained"


def test_llm_kind_trains_ships_and_loads_through_the_common_loader(tmp_path, tiny_embedder_path, tiny_qwen3):  # noqa: F811
    llm = {**shipped_params("train_reranker")["llm"], "base": str(tiny_qwen3), "instruction": INSTRUCTION,
           "max_length": 96, "lora_r": 4, "lora_alpha": 8, "target_modules": list(TARGETS)}  # fmt: skip
    paths, m, _ = _stage(tmp_path, tiny_embedder_path, kind="llm", lr=2e-4, precision="fp32", llm=llm)
    assert m["kind"] == "llm" and m["effective"]["learning_rate"] == 2e-4 and m["effective"]["optimizer_steps"] == 2
    assert m["effective"]["settings"]["lora_r"] == 4 and m["train"]["random_baseline"] == pytest.approx(0.6931, 1e-3)
    marker = json.loads((paths.reranker / rerank.MARKER).read_text(encoding="utf-8"))
    assert marker["kind"] == "llm" and marker["prompt"]["instruction"] == INSTRUCTION
    model = rerank.load_reranker(paths.reranker)
    assert isinstance(model, LLMReranker)
    scores = rerank.predict(model, PAIRS, batch_size=2)
    assert len(scores) == 2 and all(0.0 <= s <= 1.0 for s in scores)


def test_a_cross_encoder_folder_has_no_marker_and_loads_as_a_cross_encoder(tmp_path, tiny_embedder_path):
    from sentence_transformers import CrossEncoder

    from ragtune.train.reranker.trainer import load_reranker

    load_reranker(tiny_embedder_path, max_length=64, head="mean", seed=0).save_pretrained(str(tmp_path / "ce"))
    assert rerank.reranker_kind(tmp_path / "ce") == "cross_encoder"
    assert isinstance(rerank.load_reranker(tmp_path / "ce"), CrossEncoder)
