"""The cross-encoder's distillation warm start (train_reranker.distill): lists, settings, the trainer it builds, and
its place in the stage (before the label stage, on the teacher's ranking)."""

from __future__ import annotations

import math

import pytest
import yaml
from conftest import REPO, make_stage_dir

from ragtune.io import read_json, read_jsonl
from ragtune.paths import Paths
from ragtune.train.reranker import distill as distill_mod
from ragtune.train.reranker.config import DistillConfigError, DistillSettings, RerankerTrainConfig
from ragtune.train.reranker.distill import distill_lists
from ragtune.train.reranker.run import run_train_reranker


def _shipped() -> dict:
    """The shipped params.yaml's train_reranker section."""
    return yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))["train_reranker"]


SETTINGS = {"lists": 3, "list_size": 2, "temperature": 0.05, "epochs": 1, "batch_size": 2}


def _q(qid: str, text: str) -> dict:
    return {"query_id": qid, "query": text}


def test_lists_take_the_training_split_first_copy_the_teacher_and_skip_repeats():
    ranking = {
        "T1": [("c1", 0.9), ("c2", 0.8), ("c3", 0.7)],
        "T2": [("c2", 0.85), ("c1", 0.6)],
        "S1": [("c3", 0.5), ("c1", 0.4)],
        "S2": [("c1", 0.7), ("c3", 0.1)],  # same text as T1: listed once
        "S3": [("c1", 0.9)],  # one candidate: nothing to rank
    }
    text = {"c1": "one", "c2": "two", "c3": "three"}
    sources = {"train": [_q("T1", "a"), _q("T2", "b")], "synthetic": [_q("S1", "c"), _q("S2", "a"), _q("S3", "d")]}
    lists, counts = distill_lists(sources, ranking, text, DistillSettings.from_params(SETTINGS), seed=0)

    assert counts == {"from_train": 2, "from_synthetic": 1, "lists": 3, "available": 3}
    assert [x["source"] for x in lists] == ["train", "train", "synthetic"]
    t1 = next(x for x in lists if x["query_id"] == "T1")
    assert t1["docs"] == ["one", "two"] and t1["doc_ids"] == ["c1", "c2"]  # the teacher's top list_size, in order
    assert t1["labels"] == [pytest.approx(0.9 / 0.05), pytest.approx(0.8 / 0.05)]  # cosine / temperature
    fewer, counts = distill_lists(sources, ranking, text, DistillSettings.from_params({**SETTINGS, "lists": 1}), 0)
    assert len(fewer) == 1 and fewer[0]["source"] == "train" and counts["available"] == 3


def test_the_order_within_a_source_is_seeded():
    ranking = {f"T{i}": [("c1", 0.9), ("c2", 0.1)] for i in range(20)}
    sources = {"train": [_q(f"T{i}", f"q{i}") for i in range(20)]}
    settings = DistillSettings.from_params({**SETTINGS, "lists": 5})
    picks = [
        [x["query_id"] for x in distill_lists(sources, ranking, {"c1": "", "c2": ""}, settings, s)[0]]
        for s in (1, 1, 2)
    ]
    assert picks[0] == picks[1] != picks[2]


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"lr": 1e-4}, "unknown"),  # the learning rate is train_reranker.lr, shared
        ({"lists": -1}, "lists=-1"),
        ({"list_size": 1}, "list_size=1"),
        ({"temperature": 0}, "temperature=0"),
    ],
)
def test_settings_refuse_a_bad_or_stray_key_and_the_stage_config_says_so_first(change, says):
    with pytest.raises(DistillConfigError, match=says):
        DistillSettings.from_params({**SETTINGS, **change})
    section = _shipped()
    with pytest.raises(DistillConfigError, match=says):  # validated with the section, before any mining
        RerankerTrainConfig.from_params({**section, "distill": {**section["distill"], **change}})


def test_the_shipped_default_is_valid():
    section = _shipped()
    DistillSettings.from_params(section["distill"])


def test_the_stage_distills_before_the_label_stage_with_the_configured_rates(tmp_path, tiny_embedder_path, monkeypatch):
    """Lists written, the warm start's trainer built with train_reranker.lr / head_lr and the distill keys, its
    steps counted, dev scored after it, and the label stage then trains the warmed model."""
    warm = {"lists": 5, "list_size": 3, "temperature": 0.05, "epochs": 2, "batch_size": 2}
    work = make_stage_dir(
        tmp_path,
        tiny_embedder_path,
        train_reranker={"kind": "cross_encoder", "distill": warm, "lr": 2e-5, "head_lr": 3e-3},
    )
    paths = Paths(work)
    params = yaml.safe_load((work / "params.yaml").read_text(encoding="utf-8"))
    trainers: list = []
    from sentence_transformers.cross_encoder import trainer as st_trainer  # both trainers import it when built

    cls = st_trainer.CrossEncoderTrainer

    class Spy(cls):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            trainers.append(self)

    monkeypatch.setattr(st_trainer, "CrossEncoderTrainer", Spy)

    run_train_reranker(params["model"], params["train_reranker"], paths)

    lists = read_jsonl(paths.reranker_distill_lists)
    train = read_jsonl(paths.train)
    assert len(lists) == 5 and all(len(x["docs"]) == 3 for x in lists)
    assert {x["query_id"] for x in lists} <= {q["query_id"] for q in train}
    warm_trainer, label_trainer = trainers  # the warm start first, then the label stage
    assert type(warm_trainer.loss).__name__ == "ListNetLoss"
    assert warm_trainer.args.per_device_train_batch_size == 2 and warm_trainer.args.num_train_epochs == 2
    assert sorted(set(warm_trainer.lr_scheduler.base_lrs)) == [2e-5, 3e-3]  # body, new head
    m = read_json(paths.metrics("train_reranker"))
    d = m["distill"]
    assert d["optimizer_steps"] == 2 * math.ceil(5 / 2) == warm_trainer.state.global_step
    assert d["lists"] == 5 and d["from_train"] == 5 and d["available"] == len(train)
    assert d["uniform_guess_loss"] == pytest.approx(math.log(3), abs=1e-4) and d["teacher_entropy"] < math.log(3)
    assert "ndcg@10" in d["dev_after"] and type(label_trainer.loss).__name__ == "BinaryCrossEntropyLoss"


def test_off_writes_an_empty_list_file_and_builds_one_trainer(tmp_path, tiny_embedder_path, monkeypatch):
    off = {"kind": "cross_encoder", "distill": {**SETTINGS, "lists": 0}}
    work = make_stage_dir(tmp_path, tiny_embedder_path, train_reranker=off)
    paths = Paths(work)
    params = yaml.safe_load((work / "params.yaml").read_text(encoding="utf-8"))
    run_train_reranker(params["model"], params["train_reranker"], paths)
    assert read_jsonl(paths.reranker_distill_lists) == []
    assert read_json(paths.metrics("train_reranker"))["distill"] == {"lists": 0}


def test_the_warm_start_moves_the_student_toward_the_teacher(tiny_embedder_path, tmp_path):
    """On lists where the teacher always prefers the passage about the query's own topic, a few epochs of the warm
    start bring the ListNet loss down from where the new head starts."""
    from ragtune.train.reranker.trainer import load_reranker

    cfg = RerankerTrainConfig.from_params({**_shipped(), "lr": 1e-3, "head_lr": 1e-2})
    docs = ["thuế thu nhập cá nhân", "bảo hiểm xã hội", "nghỉ phép năm", "hợp đồng lao động"]
    lists = [
        {"query": f"hỏi về {d}", "docs": [d, *[o for o in docs if o != d]], "labels": [20.0, 0.0, 0.0, 0.0]}
        for d in docs
    ] * 4
    model = load_reranker(tiny_embedder_path, 32, "mean", seed=0)
    settings = DistillSettings.from_params({**SETTINGS, "lists": len(lists), "list_size": 4, "epochs": 4})
    out = distill_mod.distill(model, lists, cfg, settings, tmp_path / "ckpt", new_head=True)
    assert out["optimizer_steps"] == 4 * math.ceil(len(lists) / 2)
    assert out["final_loss"] < out["first_loss"]
    scores = model.predict([(x["query"], x["docs"][i]) for x in lists[:4] for i in range(4)])
    wins = sum(max(range(4), key=lambda i, j=j: scores[4 * j + i]) == 0 for j in range(4))
    assert wins >= 3  # the teacher's choice comes first for (almost) every query
