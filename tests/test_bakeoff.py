"""Base-model bake-off: each dense model's serving cost is measured, and experiments line up in one table."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from conftest import VI_SENTENCES

from ragtune.evaluation.bakeoff import compare_rows, experiments_from_dvc, measure_encoder, render_table


def _wider(tiny_embedder_path: Path, tmp_path: Path) -> Path:
    """A second tiny model: the same tokenizer, 64 dimensions instead of 32."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as st_models
    from transformers import BertConfig, BertModel

    hf = tmp_path / "wide-hf"
    src = SentenceTransformer(str(tiny_embedder_path), device="cpu")
    src[0].tokenizer.save_pretrained(hf)
    torch.manual_seed(1)
    BertModel(
        BertConfig(
            vocab_size=src[0].tokenizer.vocab_size,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=128,
            max_position_embeddings=128,
        )
    ).save_pretrained(hf)
    t = st_models.Transformer(str(hf), max_seq_length=128)
    out = tmp_path / "wide"
    SentenceTransformer(modules=[t, st_models.Pooling(64, "mean"), st_models.Normalize()], device="cpu").save(str(out))
    return out


def test_measure_encoder_reports_what_each_model_costs(tiny_embedder_path: Path, tmp_path: Path):
    wide = _wider(tiny_embedder_path, tmp_path)
    small = measure_encoder(tiny_embedder_path, VI_SENTENCES * 4, "passage: ", batch_size=8)
    big = measure_encoder(wide, VI_SENTENCES * 4, "passage: ", batch_size=8)
    assert (small["dim"], big["dim"]) == (32, 64)
    assert big["size_mib"] > small["size_mib"] > 0 and big["params_m"] > small["params_m"]
    for m in (small, big):
        assert m["passages_per_s"] > 0 and m["peak_rss_mib"] > 50  # a child process with torch loaded
        assert m["measured_on"] == "40 passages, batch 8"
    # the peak is the model's own process, not inherited from a large parent (fork + exec keeps the parent's
    # high-water mark in getrusage's ru_maxrss): a parent grown by 1 GiB does not move it
    ballast = bytearray(2**30)
    ballast[::4096] = b"x" * len(ballast[::4096])  # touch every page so it is resident
    again = measure_encoder(tiny_embedder_path, VI_SENTENCES * 4, "passage: ", batch_size=8)
    del ballast
    assert again["peak_rss_mib"] < small["peak_rss_mib"] + 200


def test_compare_renders_one_row_per_experiment_from_dvc_exp_show():
    def entry(name, model, enabled, ndcg, dim, speed):
        metrics = {
            "metrics/evaluate.json": {
                "data": {"test": {"ft_dense": {"ndcg@10": ndcg, "mrr@10": ndcg - 0.05, "hit@1": 0.5}}}
            },
            "metrics/models.json": {
                "data": {"ft_dense": {"dim": dim, "passages_per_s": speed, "peak_rss_mib": 900.0, "size_mib": 450.0}}
            },
        }
        params = {"params.yaml": {"data": {"model": {"embedder": model}, "train_embedder": {"enabled": enabled}}}}
        return {"rev": name, "name": name, "data": {"params": params, "metrics": metrics}}

    show = [
        {
            **entry("workspace", "intfloat/multilingual-e5-small", True, 0.84, 384, 41.2),
            "experiments": [
                {"revs": [entry("e5-base", "intfloat/multilingual-e5-small", False, 0.80, 384, 40.0)]},
                {"revs": [entry("vn-emb", "AITeamVN/Vietnamese_Embedding", False, 0.86, 1024, 6.5)]},
                {"revs": [{"rev": "broken", "name": "broken", "data": {"status": "Failed"}}]},
            ],
        }
    ]
    unnamed = entry(None, "intfloat/multilingual-e5-small", False, 0.81, 384, 40.0)
    unnamed["rev"] = "0123456789abcdef0123456789abcdef01234567"
    show[0]["experiments"].append({"revs": [unnamed]})
    rows = compare_rows(experiments_from_dvc(json.loads(json.dumps(show))))
    assert [r["experiment"] for r in rows] == ["workspace", "e5-base", "vn-emb", "0123456"]
    assert [r["trained"] for r in rows] == [True, False, False, False]
    table = render_table(rows)
    assert (
        "| vn-emb | AITeamVN/Vietnamese_Embedding | no | 0.8600 | 0.8100 | 0.5000 | 1024 | 6.5 | 900 | 450 |" in table
    )
    # an experiment whose metrics lack a figure shows a dash, not a crash
    del show[0]["experiments"][1]["revs"][0]["data"]["metrics"]["metrics/models.json"]
    assert "| vn-emb | AITeamVN/Vietnamese_Embedding | no | 0.8600 | 0.8100 | 0.5000 | – | – | – | – |" in render_table(
        compare_rows(experiments_from_dvc(show))
    )


@pytest.mark.slow
def test_a_bakeoff_sweep_of_dvc_experiments_ends_in_one_table(
    tiny_repo, tmp_path: Path, tiny_embedder_path: Path, monkeypatch, capsys
):
    """The documented sweep, for real: two base models as DVC experiments, untrained, then `ragtune compare`."""
    from ragtune.cli import main

    work, _, run = tiny_repo
    wide = _wider(tiny_embedder_path, tmp_path)
    run("exp", "run", "-n", "tiny32", "-S", "train_embedder.enabled=false")
    run("exp", "run", "-n", "tiny64", "-S", f"model.embedder={wide}", "-S", "train_embedder.enabled=false")
    monkeypatch.chdir(work)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    assert main(["compare", "--system", "base_dense"]) == 0
    rows = {line.split(" | ")[0].strip("| "): line for line in capsys.readouterr().out.splitlines()[2:]}
    assert {"tiny32", "tiny64"} <= set(rows)
    assert "| 32 |" in rows["tiny32"] and "| 64 |" in rows["tiny64"] and str(wide) in rows["tiny64"]
    assert "| no |" in rows["tiny32"]  # train_embedder.enabled: false
