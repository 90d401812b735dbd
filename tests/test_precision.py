"""cpu_bf16 / rerank_bf16: auto means bf16 only where the CPU computes it natively (ragtune.precision)."""

from __future__ import annotations

import pytest
import torch

from ragtune import precision
from ragtune.precision import bf16_setting_problem, cpu_has_fast_bf16, use_cpu_bf16


def test_auto_follows_onednn_and_true_false_are_kept(monkeypatch):
    assert cpu_has_fast_bf16() is bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert use_cpu_bf16("auto") is cpu_has_fast_bf16()
    assert use_cpu_bf16(True) is True and use_cpu_bf16(False) is False
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: False)  # an AVX2-only CPU
    assert use_cpu_bf16("auto") is False and use_cpu_bf16(True) is True
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: True)  # AVX-512 / AMX / ARM bf16
    assert use_cpu_bf16("auto") is True and use_cpu_bf16(False) is False


@pytest.mark.parametrize("bad", ["yes", "true", 1, None])
def test_anything_else_is_refused_with_the_choices(bad):
    msg = bf16_setting_problem("train_embedder.cpu_bf16", bad)
    assert msg and "train_embedder.cpu_bf16" in msg and "auto" in msg
    assert bf16_setting_problem("x", "auto") is None and bf16_setting_problem("x", False) is None


def test_both_trainers_and_evaluate_refuse_a_bad_setting():
    import yaml
    from conftest import REPO

    from ragtune.params import ParamsError, section
    from ragtune.train.embedder.config import EmbedderTrainConfig
    from ragtune.train.reranker.config import RerankerTrainConfig

    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    assert params["train_embedder"]["cpu_bf16"] == params["train_reranker"]["cpu_bf16"] == "auto"
    assert params["evaluate"]["rerank_bf16"] == "auto"
    for cls in (EmbedderTrainConfig, RerankerTrainConfig):
        with pytest.raises(ValueError, match=f"{cls.SECTION}.cpu_bf16='sometimes'"):
            cls.from_params({**params[cls.SECTION], "cpu_bf16": "sometimes"})
    with pytest.raises(ParamsError, match="rerank_bf16"):
        section({**params, "evaluate": {**params["evaluate"], "rerank_bf16": "sometimes"}}, "evaluate")
