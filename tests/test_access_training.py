"""Training leaves out documents above ``max_access_level`` (issue 19): model weights can leak the text they were
trained on, so a confidential or restricted document must not reach a model served to lower levels through its
training rows.

The stages run on the tiny model (``make_stage_dir``), and the tests look at what the trainer is *given*: the dataset
passed to the Trainer (spied, never replaced), the lists the warm start trains on, the rows the late-interaction
trainer builds, and the files the stage writes. ``_expected`` states the rule once more, independently of
``ragtune.access``, and the stage's output must match it exactly: nothing left out beyond it, nothing kept against it.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from conftest import TOPICS, make_stage_dir

from ragtune.access import AccessError, training_access
from ragtune.io import read_json, read_jsonl, write_jsonl
from ragtune.paths import Paths
from ragtune.train.embedder import run as embedder_run
from ragtune.train.embedder.config import EmbedderTrainConfig, TrainConfigError
from ragtune.train.embedder.run import run_train_embedder
from ragtune.train.embedder.trainer import groups_to_dataset
from ragtune.train.reranker import late_interaction
from ragtune.train.reranker import run as reranker_run
from ragtune.train.reranker.config import RerankerTrainConfig
from ragtune.train.reranker.run import run_train_reranker

ACCESS = {"levels": ["public", "internal", "confidential", "restricted"], "unlabeled": "public"}
# one chunk per document D0..D7 (make_stage_dir); labels as ingest may leave them (case, spacing, none)
LABELS = {"D0": "public", "D1": " Public", "D2": "internal", "D3": "INTERNAL", "D4": "confidential"}
LABELS |= {"D5": "Confidential", "D6": "restricted", "D7": None}
RANK = {"D0": 0, "D1": 0, "D2": 1, "D3": 1, "D4": 2, "D5": 2, "D6": 3, "D7": 0}
ABOVE_INTERNAL = {d for d, r in RANK.items() if r > 1}  # D4, D5, D6
HIDDEN_TEXTS = {f"{title}\n{body}" for i, (title, body) in enumerate(TOPICS) if f"D{i}" in ABOVE_INTERNAL}
HIDDEN_IDS = {f"{d}#0" for d in ABOVE_INTERNAL}


def _stage(tmp_path, tiny_embedder_path, **sections) -> tuple[Paths, dict[str, Any]]:
    """make_stage_dir with documents.jsonl labeled as LABELS, and its params."""
    work = make_stage_dir(tmp_path, tiny_embedder_path, **sections)
    paths = Paths(work)
    write_jsonl(paths.documents, [{"doc_id": d, "metadata": {"access_level": v}} for d, v in LABELS.items()])
    return paths, yaml.safe_load((work / "params.yaml").read_text(encoding="utf-8"))


def _spy(monkeypatch, module, name: str) -> list:
    """Record the arguments and result of ``module.name`` (the real one runs)."""
    calls: list = []
    real = getattr(module, name)

    def spy(*args, **kwargs):
        calls.append((args, kwargs, real(*args, **kwargs)))
        return calls[-1][2]

    monkeypatch.setattr(module, name, spy)
    return calls


def _cells(dataset) -> list[str]:
    """Every text a dataset holds (lists flattened: listwise rows hold a list of passages)."""
    out: list[str] = []
    for row in dataset:
        for v in row.values():
            out += [x for x in (v if isinstance(v, list) else [v]) if isinstance(x, str)]
    return out


def _doc(chunk_id: str) -> str:
    return chunk_id.split("#")[0]


def _expected(groups: list[dict], relevant: dict[str, list[str]] | None = None) -> tuple[list[dict], dict, dict]:
    """The rule at max_access_level internal, written out independently: the kept groups, the groups dropped and the
    negatives removed per level."""
    names = ACCESS["levels"]
    dropped, removed, kept = {"confidential": 0, "restricted": 0}, {"confidential": 0, "restricted": 0}, []
    for g in groups:
        docs = [_doc(c) for c in g["pos_ids"]] + list((relevant or {}).get(g["query_id"], []))
        top = max(RANK[d] for d in docs)
        if top > 1:
            dropped[names[top]] += 1
            continue
        keep = [i for i, c in enumerate(g["neg_ids"]) if RANK[_doc(c)] <= 1]
        for c in g["neg_ids"]:
            if RANK[_doc(c)] > 1:
                removed[names[RANK[_doc(c)]]] += 1
        kept.append({**g, **{k: [g[k][i] for i in keep] for k in ("neg", "neg_ids", "neg_sources") if k in g}})
    return kept, dropped, removed


def _assert_nothing_hidden(texts: list[str], ids: list[str], queries: set[str]) -> None:
    assert texts, "the trainer was given nothing: the check below would pass vacuously"
    assert not HIDDEN_TEXTS & set(texts), "a text of a confidential or restricted document reached the trainer"
    assert not [t for t in texts if any(h in t for h in HIDDEN_TEXTS)]
    assert not HIDDEN_IDS & set(ids), "a chunk of a confidential or restricted document reached the trainer"
    assert not queries & set(texts), "a question about a confidential or restricted document reached the trainer"


def _hidden_queries(paths: Paths) -> set[str]:
    return {p["query"] for p in read_jsonl(paths.train) if set(p["positive_doc_ids"]) & ABOVE_INTERNAL}


# ----------------------------------------------------------------------------------------------- the rule itself
def test_the_rule_drops_questions_about_hidden_documents_and_removes_their_negatives():
    chunks = [{"chunk_id": f"{d}#0", "doc_id": d} for d in LABELS]
    docs = [{"doc_id": d, "metadata": {"access_level": v}} for d, v in LABELS.items()]
    access = training_access("train_embedder.max_access_level", "Internal", ACCESS, docs, chunks)
    groups = [
        {"query_id": "a", "query": "a", "pos": ["p0"], "pos_ids": ["D0#0"], "neg": ["n4", "n2", "n6"],
         "neg_ids": ["D4#0", "D2#0", "D6#0"], "neg_sources": ["dense", "bm25", "random"]},
        {"query_id": "b", "query": "b", "pos": ["p1", "p5"], "pos_ids": ["D1#0", "D5#0"], "neg": ["n0"],
         "neg_ids": ["D0#0"]},  # one of its documents is confidential: the whole question goes
        {"query_id": "c", "query": "c", "pos": ["p7"], "pos_ids": ["D7#0"], "neg": ["n4"], "neg_ids": ["D4#0"]},
        {"query_id": "d", "query": "d", "pos": ["p2"], "pos_ids": ["D2#0"], "neg": ["n3"], "neg_ids": ["D3#0"]},
    ]  # fmt: skip
    kept, counts = access.groups(groups, min_negatives=1, relevant_docs={"d": ["D2", "D6"]})
    assert [g["query_id"] for g in kept] == ["a", "c"]
    assert kept[0]["neg"] == ["n2"] and kept[0]["neg_ids"] == ["D2#0"] and kept[0]["neg_sources"] == ["bm25"]
    assert kept[1]["neg"] == [] and groups[2]["neg"] == ["n4"]  # the input is left as it was
    assert counts == {
        "max_access_level": "internal",
        "levels_excluded": ["confidential", "restricted"],
        "documents_excluded": {"confidential": 2, "restricted": 1},
        "groups_in": 4,
        "groups_kept": 2,
        "groups_dropped": {"confidential": 1, "restricted": 1},
        "negatives_removed": {"confidential": 2, "restricted": 1},
        "groups_left_short_of_negatives": 1,  # c: its only negative was confidential
    }
    assert (
        access.summary(counts) == "2 groups (confidential 1, restricted 1) and 3 negatives (confidential 2, "
        "restricted 1) above internal left out (train_embedder.max_access_level)"
    )
    assert training_access("train_embedder.max_access_level", None, ACCESS, docs, chunks) is None  # every level

    lists = [
        {"query": "a", "query_id": "a", "docs": ["t0", "t4", "t2"], "labels": [3.0, 2.0, 1.0],
         "doc_ids": ["D0#0", "D4#0", "D2#0"], "source": "train"},
        {"query": "b", "query_id": "b", "docs": ["t0", "t1"], "labels": [2.0, 1.0], "doc_ids": ["D0#0", "D1#0"],
         "source": "train"},
        {"query": "c", "query_id": "c", "docs": ["t6", "t1"], "labels": [2.0, 1.0], "doc_ids": ["D6#0", "D1#0"],
         "source": "synthetic"},
    ]  # fmt: skip
    kept_lists, list_counts = access.lists(lists, relevant_docs={"a": ["D0"], "b": ["D5"], "c": ["D1"]})
    assert kept_lists == [{**lists[0], "docs": ["t0", "t2"], "labels": [3.0, 1.0], "doc_ids": ["D0#0", "D2#0"]}]
    assert list_counts == {
        "lists_in": 3,
        "lists_kept": 1,
        "lists_dropped": {"confidential": 1, "restricted": 0},
        "candidates_removed": {"confidential": 1, "restricted": 1},
        "lists_dropped_under_two_candidates": 1,
    }
    with pytest.raises(AccessError, match=r"chunk 'D9#0'.*not hold"):  # a chunk of no known document: fail closed
        access.groups([{**groups[3], "neg_ids": ["D9#0"]}], min_negatives=1)


# ----------------------------------------------------------------------------------------------- train_embedder
def test_train_embedder_gives_the_trainer_no_text_of_a_document_above_the_level(
    tmp_path, tiny_embedder_path, monkeypatch
):
    paths, params = _stage(
        tmp_path, tiny_embedder_path, train_embedder={"max_access_level": "internal", "max_steps": 2}
    )
    trainers = _spy(monkeypatch, embedder_run, "build_trainer")
    datasets = _spy(monkeypatch, embedder_run, "groups_to_dataset")
    keys = _spy(monkeypatch, embedder_run.batching, "group_row_keys")
    groups = read_jsonl(paths.train_groups)
    assert HIDDEN_TEXTS & {t for g in groups for t in g["pos"] + g["neg"]}, "the input must hold hidden texts"

    summary = run_train_embedder(
        params["model"], params["train_embedder"], paths, bm25_p=params["bm25"], access_p=params["access"]
    )

    (args, kwargs, trainer), = trainers  # fmt: skip
    given = args[2]  # build_trainer(model, cfg, train_dataset, ...)
    assert len(given) == len(trainer.train_dataset) == 11
    row_groups = datasets[0][0][0]  # the groups the rows were made from
    _assert_nothing_hidden(
        _cells(given),
        [c for g in row_groups for c in g["pos_ids"] + g["neg_ids"]],
        _hidden_queries(paths),
    )
    doc_keys = {k for row in kwargs["batch_keys"] for k in row.owned | row.shown if k.startswith("doc:")}
    assert doc_keys and not doc_keys & {f"doc:{d}" for d in ABOVE_INTERNAL}
    assert keys[0][0][0] is row_groups  # the sampler's keys come from the same groups as the rows
    kept, dropped, removed = _expected(groups)
    assert row_groups == kept  # nothing else changed

    m = read_json(paths.metrics("train_embedder"))
    assert m["train"]["access_excluded"] == {
        "max_access_level": "internal",
        "levels_excluded": ["confidential", "restricted"],
        "documents_excluded": {"confidential": 2, "restricted": 1},
        "groups_in": 22,
        "groups_kept": 13,
        "groups_dropped": dropped,
        "negatives_removed": removed,
        "groups_left_short_of_negatives": 2,  # D3's questions: their one negative was D4's chunk
    }
    assert dropped == {"confidential": 6, "restricted": 3} and removed == {"confidential": 2, "restricted": 0}
    # the stage's own rule for short groups (n_hard_negatives: 1) then drops those two, and counts them
    assert m["train"]["groups"] == 11 and m["train"]["groups_dropped_short_of_negatives"] == 2
    assert (
        "9 groups (confidential 6, restricted 3) and 2 negatives (confidential 2) above internal left out "
        "(train_embedder.max_access_level)"
    ) in summary["read"]
    card = (paths.embedder / "README.md").read_text(encoding="utf-8")
    assert "Trained only on documents at access level `internal` or below" in card


def test_train_embedder_without_a_level_trains_on_every_row_as_before(tmp_path, tiny_embedder_path, monkeypatch):
    """Empty max_access_level (the default): documents.jsonl is not even read, and the trainer gets the rows the
    negatives stage's groups make, restricted texts included; metrics and card carry no trace of the key."""
    paths, params = _stage(tmp_path, tiny_embedder_path, train_embedder={"max_steps": 2})
    paths.documents.unlink()
    trainers = _spy(monkeypatch, embedder_run, "build_trainer")
    cfg = EmbedderTrainConfig.from_params(params["train_embedder"])
    assert cfg.max_access_level is None

    run_train_embedder(
        params["model"], params["train_embedder"], paths, bm25_p=params["bm25"], access_p=params["access"]
    )

    given = trainers[0][0][2]
    expected, _ = groups_to_dataset(read_jsonl(paths.train_groups), cfg.n_hard_negatives, cfg.positives)
    assert given.to_dict() == expected.to_dict() and set(_cells(given)) >= HIDDEN_TEXTS
    m = read_json(paths.metrics("train_embedder"))
    assert "access_excluded" not in m["train"]
    card = (paths.embedder / "README.md").read_text(encoding="utf-8")
    assert "max_access_level" not in card and "access level" not in card


# ----------------------------------------------------------------------------------------------- train_reranker
RERANKER = {"max_steps": 1, "n_hard": 2, "n_random": 2}


def test_train_reranker_gives_the_trainer_and_its_warm_start_no_text_of_a_document_above_the_level(
    tmp_path, tiny_embedder_path, monkeypatch
):
    """kind cross_encoder with the distillation warm start: the labeled groups, the teacher's lists, the files the
    stage writes. The same stage without a level (a second folder) mined the groups the rule is checked against."""
    distill = {"lists": 100, "list_size": 4, "temperature": 0.05, "epochs": 1, "batch_size": 4}
    section = {**RERANKER, "kind": "cross_encoder", "distill": distill}
    open_paths, params = _stage(tmp_path / "open", tiny_embedder_path, train_reranker=section)
    run_train_reranker(params["model"], params["train_reranker"], open_paths, access_p=params["access"])
    open_groups, open_lists = (
        read_jsonl(open_paths.reranker_train_groups),
        read_jsonl(open_paths.reranker_distill_lists),
    )
    assert "access_excluded" not in read_json(open_paths.metrics("train_reranker"))["train"]
    assert HIDDEN_IDS & {c for g in open_groups for c in g["neg_ids"]}, "no hidden negative was mined: test is moot"
    assert HIDDEN_IDS & {c for x in open_lists for c in x["doc_ids"]}

    paths, params = _stage(
        tmp_path / "leveled", tiny_embedder_path, train_reranker={**section, "max_access_level": "internal"}
    )
    trainers = _spy(monkeypatch, reranker_run, "build_trainer")
    warm = _spy(monkeypatch, reranker_run, "distill")
    summary = run_train_reranker(params["model"], params["train_reranker"], paths, access_p=params["access"])

    given = trainers[0][0][2]  # build_trainer(model, cfg, train_dataset, ...)
    lists = warm[0][0][1]  # distill(model, lists, ...)
    groups = read_jsonl(paths.reranker_train_groups)
    hidden_queries = _hidden_queries(paths)
    _assert_nothing_hidden(_cells(given), [c for g in groups for c in g["pos_ids"] + g["neg_ids"]], hidden_queries)
    _assert_nothing_hidden(
        [x["query"] for x in lists] + [t for x in lists for t in x["docs"]],
        [c for x in lists for c in x["doc_ids"]],
        hidden_queries,
    )
    assert read_jsonl(paths.reranker_distill_lists) == lists  # the file holds what the warm start trained on
    relevant = {p["query_id"]: p["positive_doc_ids"] for p in read_jsonl(paths.train)}
    kept, dropped, removed = _expected(open_groups, relevant)
    assert groups == kept  # the same groups as without a level, less what the rule takes out
    assert len(given) == sum(len(g["pos"]) + len(g["neg"]) for g in kept)  # bce: one row per (query, passage)

    m = read_json(paths.metrics("train_reranker"))
    excluded = m["train"]["access_excluded"]
    assert excluded["groups_dropped"] == dropped == {"confidential": 6, "restricted": 3}
    assert excluded["negatives_removed"] == removed and sum(removed.values()) > 0
    assert excluded["groups_in"] == len(open_groups) and excluded["groups_kept"] == len(kept)
    assert excluded["distill"]["lists_in"] == len(open_lists) and excluded["distill"]["lists_kept"] == len(lists)
    assert sum(excluded["distill"]["lists_dropped"].values()) == 9  # the lists of the 9 hidden questions
    assert f"9 groups (confidential 6, restricted 3) and {sum(removed.values())} negatives (" in summary["read"]
    assert m["effective"]["pos_weight"] == round(sum(len(g["neg"]) for g in kept) / len(kept), 4)


def test_train_reranker_late_interaction_trains_on_the_filtered_groups(tmp_path, tiny_embedder_path, monkeypatch):
    """The default kind builds its own rows from the groups: they hold no hidden text either."""
    section = {**RERANKER, "kind": "late_interaction", "max_access_level": "internal"}
    paths, params = _stage(tmp_path, tiny_embedder_path, train_reranker=section)
    rows = _spy(monkeypatch, late_interaction, "groups_to_rows")

    run_train_reranker(params["model"], params["train_reranker"], paths, access_p=params["access"])

    (args, _, (dataset, _n)), = rows  # fmt: skip
    assert args[0] == read_jsonl(paths.reranker_train_groups)
    _assert_nothing_hidden(
        _cells(dataset), [c for g in args[0] for c in g["pos_ids"] + g["neg_ids"]], _hidden_queries(paths)
    )
    m = read_json(paths.metrics("train_reranker"))
    assert m["train"]["access_excluded"]["groups_dropped"] == {"confidential": 6, "restricted": 3}


# ----------------------------------------------------------------------------------------------- refusals
def _run_stage(stage: str, params: dict, paths: Paths) -> None:
    if stage == "train_embedder":
        run_train_embedder(params["model"], params[stage], paths, bm25_p=params["bm25"], access_p=params["access"])
    else:
        run_train_reranker(params["model"], params[stage], paths, access_p=params["access"])


@pytest.mark.parametrize("stage", ["train_embedder", "train_reranker"])
def test_a_level_off_the_scale_stops_the_stage_with_the_key_the_value_and_the_levels(
    tmp_path, tiny_embedder_path, stage
):
    paths, params = _stage(tmp_path, tiny_embedder_path, **{stage: {"max_access_level": "secret"}})
    with pytest.raises(AccessError) as err:
        _run_stage(stage, params, paths)
    message = str(err.value)
    assert f"params.yaml {stage}.max_access_level = 'secret' is not on the access scale" in message
    assert "public, internal, confidential, restricted" in message and "leave it empty" in message
    assert not paths.reranker_train_groups.exists()  # stopped before any work was written

    with pytest.raises(TrainConfigError if stage == "train_embedder" else ValueError) as err:
        (EmbedderTrainConfig if stage == "train_embedder" else RerankerTrainConfig).from_params(
            {**params[stage], "max_access_level": 3}
        )
    assert f"{stage}.max_access_level = 3 is not a text" in str(err.value)
    assert "Model weights can leak the text they were trained on" in str(err.value)


@pytest.mark.parametrize("stage", ["train_embedder", "train_reranker"])
def test_a_level_that_leaves_no_training_group_stops_the_stage_and_says_how_to_fix_it(
    tmp_path, tiny_embedder_path, stage
):
    paths, params = _stage(tmp_path, tiny_embedder_path, **{stage: {"max_access_level": "public", "max_steps": 1}})
    write_jsonl(paths.documents, [{"doc_id": d, "metadata": {"access_level": "internal"}} for d in LABELS])
    with pytest.raises(AccessError) as err:
        _run_stage(stage, params, paths)
    message = str(err.value)
    assert f"{stage}.max_access_level = 'public' leaves no training group: all 22 are about documents above public" in (
        message
    )
    assert f"Raise {stage}.max_access_level" in message and "leave it empty to train on every level" in message
