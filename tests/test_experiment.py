"""What the benchmarks share: param overrides as ``dvc exp run -S`` applies them, the embedder's stages re-run on a
scratch folder (nothing written outside it, nothing carried from one run to the next), and scoring one embedder."""

from __future__ import annotations

import pytest
import yaml
from conftest import make_stage_dir

from ragtune.experiment import TRAIN_EMBEDDER_INPUTS, copy_inputs, doc_scores, score, train_embedder
from ragtune.io import read_json, read_jsonl, sha256_file
from ragtune.models import load_embedder
from ragtune.params import ParamsError, with_overrides
from ragtune.paths import Paths


def test_with_overrides_parses_yaml_values_and_leaves_the_params_unchanged():
    params = {"train_embedder": {"seed": 42, "lr": 5e-5, "directions": ["query_to_doc"]}, "model": {"embedder": "x"}}

    out = with_overrides(params, ["train_embedder.seed=1", "train_embedder.directions=[a, b]", "model.embedder=y"])

    assert out == {"train_embedder": {"seed": 1, "lr": 5e-5, "directions": ["a", "b"]}, "model": {"embedder": "y"}}
    assert params["train_embedder"]["seed"] == 42 and params["model"]["embedder"] == "x"


def test_with_overrides_reaches_a_nested_key_and_keeps_its_siblings():
    params = {"train_reranker": {"seed": 42, "late_interaction": {"scale": 20.0, "attention_dropout": None}}}

    out = with_overrides(params, ["train_reranker.late_interaction.attention_dropout=0"])

    assert out["train_reranker"]["late_interaction"] == {"scale": 20.0, "attention_dropout": 0}
    assert params["train_reranker"]["late_interaction"]["attention_dropout"] is None  # the input is not changed


@pytest.mark.parametrize(
    "item",
    [
        "train_embedder.sede=1",
        "trainer.seed=1",
        "seed=1",
        "train_embedder.seed.x=1",
        "train_reranker.late_interaction.sclae=1",
    ],
)
def test_with_overrides_refuses_a_key_params_yaml_lacks(item):
    with pytest.raises(ParamsError, match=r"expected section\.key=value"):
        with_overrides({"train_embedder": {"seed": 42}, "train_reranker": {"late_interaction": {"scale": 20}}}, [item])


def _scratch(tmp_path, tiny_embedder_path, **train_embedder):
    """The stage inputs of a tiny pipeline (``source``) and a scratch folder holding copies of them."""
    work = make_stage_dir(tmp_path, tiny_embedder_path, train_embedder=train_embedder)
    params = yaml.safe_load((work / "params.yaml").read_text(encoding="utf-8"))
    source, scratch = Paths(work), Paths(tmp_path / "scratch")
    copy_inputs(source, scratch, TRAIN_EMBEDDER_INPUTS)
    return params, source, scratch


def test_train_embedder_mines_and_trains_under_the_scratch_paths_only(tmp_path, tiny_embedder_path):
    params, source, scratch = _scratch(tmp_path, tiny_embedder_path, enabled=False)
    copy_inputs(source, scratch, ["train", "synthetic"])
    before = {p: sha256_file(p) for p in source.root.rglob("*") if p.is_file()}

    model_dir, metrics, seconds = train_embedder(params, scratch, negatives=True)

    assert model_dir == scratch.embedder and (model_dir / "model.safetensors").exists()
    assert metrics == read_json(scratch.metrics("train_embedder"))
    assert metrics["shipped"] == "base (train_embedder.enabled: false)" and seconds > 0
    # the negatives stage ran here: its groups are the training pairs' own, mined again
    assert read_json(scratch.metrics("negatives"))["groups"] == len(read_jsonl(scratch.train_groups)) > 0
    assert {p: sha256_file(p) for p in source.root.rglob("*") if p.is_file()} == before


def test_a_run_after_another_in_the_same_process_trains_the_same_model(tmp_path, tiny_embedder_path):
    """The seed benchmark trains its seeds one after the other in one process: seed 1's weights must not depend on
    what ran before. Dropout draws from the global RNG, and the last step's weights ship (not the best checkpoint,
    not merged): without the trainer seeding that RNG, the third run's weights differ from the first's."""
    params, _, scratch = _scratch(tmp_path, tiny_embedder_path, max_steps=2, attention_dropout=0.1, lr=1e-3)
    params["train_embedder"].update(keep_base_if_worse=False, merge_alpha=1.0, load_best_model_at_end=False)

    def weights(seed: int) -> str:
        model_dir, metrics, _ = train_embedder(
            {**params, "train_embedder": {**params["train_embedder"], "seed": seed}}, scratch
        )
        assert metrics["shipped"].startswith("fine-tuned") and metrics["effective"]["optimizer_steps"] == 2
        return sha256_file(model_dir / "model.safetensors")

    first = weights(1)
    weights(7)
    assert weights(1) == first


def test_score_is_doc_level_at_10_per_split(tiny_embedder_path):
    chunks = [
        {"chunk_id": "A#0", "doc_id": "A", "text": "Nhân viên được nghỉ phép năm 12 ngày."},
        {"chunk_id": "A#1", "doc_id": "A", "text": "Đăng ký nghỉ phép trên cổng LamHR."},
        {"chunk_id": "B#0", "doc_id": "B", "text": "Sao lưu cơ sở dữ liệu PostgreSQL hằng đêm."},
    ]
    queries = [
        {"query_id": q, "query": t, "positive_doc_ids": [d], "positive_chunk_ids": []}
        for q, t, d in [("q1", "nghỉ phép năm", "A"), ("q2", "sao lưu dữ liệu", "B")]
    ]
    model = load_embedder(str(tiny_embedder_path))

    full = doc_scores(model, "query: ", "passage: ", chunks, {"dev": queries, "test": queries[:1]})
    short = score(model, "query: ", "passage: ", chunks, {"dev": queries, "test": queries[:1]})

    assert set(full["dev"]["per_query"]) == {"q1", "q2"} and set(full["test"]["per_query"]) == {"q1"}
    # two documents: every query finds its document in the top 10, so recall is 1 and NDCG is 1 or 1/log2(3)
    assert all(m["recall@10"] == 1.0 for m in full["dev"]["per_query"].values())
    assert short == {
        name: {"ndcg@10": round(s["mean"]["ndcg@10"], 4), "mrr@10": round(s["mean"]["mrr@10"], 4)}
        for name, s in full.items()
    }
