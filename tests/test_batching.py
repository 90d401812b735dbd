"""Document-disjoint batches: no query sees a chunk of its own relevant document as an in-batch negative."""

from __future__ import annotations

import random

import pytest
from conftest import shipped_params

from ragtune.train.batching import (
    DocumentDisjointBatchSampler,
    batch_report,
    count_conflicts,
    group_row_keys,
    plan_batches,
    row_keys,
)
from ragtune.train.embedder.config import EmbedderTrainConfig
from ragtune.train.embedder.trainer import build_trainer, column_prompts, groups_to_dataset


def _groups(n_docs: int, per_doc: int) -> tuple[list[dict], dict[str, str]]:
    """``per_doc`` questions on each of ``n_docs`` documents (3 chunks each); each question's negative is a chunk
    of the next document, so random batches are full of in-batch false negatives."""
    chunk_docs = {f"D{d}#{c}": f"D{d}" for d in range(n_docs) for c in range(3)}
    groups = []
    for d in range(n_docs):
        for q in range(per_doc):
            nxt = (d + 1) % n_docs
            groups.append(
                {
                    "query": f"câu hỏi {q} về tài liệu {d}",
                    "pos": [f"tài liệu {d} đoạn {q % 3}"],
                    "pos_ids": [f"D{d}#{q % 3}"],
                    "neg": [f"tài liệu {nxt} đoạn {q % 3}"],
                    "neg_ids": [f"D{nxt}#{q % 3}"],
                }
            )
    return groups, chunk_docs


def test_batches_keep_each_row_away_from_its_relevant_documents():
    groups, chunk_docs = _groups(n_docs=24, per_doc=2)  # 48 rows in 6 batches of 8: a conflict-free plan exists
    keys = group_row_keys(groups, 1, chunk_docs)
    order = list(range(len(keys)))
    random.Random(0).shuffle(order)
    random_batches = [order[i : i + 8] for i in range(0, len(order), 8)]
    assert count_conflicts(keys, random_batches) > 0  # the problem is real for the default sampler
    batches, conflicted = plan_batches(keys, order, batch_size=8, drop_last=False)
    assert conflicted == 0 and count_conflicts(keys, batches) == 0
    assert sorted(i for b in batches for i in b) == list(range(48))  # every row exactly once
    assert [len(b) for b in batches] == [8] * 6  # the default sampler's batch count and sizes


def test_batch_count_matches_the_default_sampler_and_unavoidable_conflicts_are_counted():
    groups, chunk_docs = _groups(n_docs=3, per_doc=7)  # 21 rows; a document has 7 questions but there are 3 batches
    keys = group_row_keys(groups, 1, chunk_docs)
    batches, conflicted = plan_batches(keys, list(range(21)), batch_size=8, drop_last=False)
    assert len(batches) == 3 and max(map(len, batches)) <= 8  # the default sampler's count, no batch oversized
    assert sorted(i for b in batches for i in b) == list(range(21))
    assert conflicted > 0 and count_conflicts(keys, batches) > 0  # placed, and said so
    dropped, _ = plan_batches(keys, list(range(21)), batch_size=8, drop_last=True)
    assert [len(b) for b in dropped] == [8, 8]


def test_ddp_gathered_batches_are_disjoint_and_only_the_last_is_short():
    """Under DDP one step gathers ``world`` consecutive batches: they are planned as one, and accelerate's shard
    needs every batch but the last full (it skips a step whose last batch is short)."""
    groups, chunk_docs = _groups(n_docs=92, per_doc=1)  # 92 rows, batches of 8 → 12 batches, 6 gathered pairs
    keys = group_row_keys(groups, 1, chunk_docs)
    order = list(range(len(keys)))
    random.Random(1).shuffle(order)
    single, _ = plan_batches(keys, order, batch_size=8, drop_last=False)
    assert count_conflicts(keys, single, group_size=2) > 0  # planned per batch, gathered pairs still clash
    batches, conflicted = plan_batches(keys, order, batch_size=8, drop_last=False, group_size=2)
    assert conflicted == 0 and count_conflicts(keys, batches, group_size=2) == 0
    assert [len(b) for b in batches] == [8] * 11 + [4]
    assert sorted(i for b in batches for i in b) == list(range(92))
    report = batch_report(batches, keys, group_size=2)
    assert report["gathered_batches"] == 6 and report["in_batch_false_negatives"] == 0


def test_keys_cover_identical_texts_and_fall_back_to_texts_without_ids():
    a = row_keys("q1", "shared passage", ["n1"])
    b = row_keys("q2", "p2", ["shared passage"])
    assert count_conflicts([a, b], [[0, 1]]) == 1  # b shows a's positive text as a negative
    same_query = [row_keys("q", "p1", ["n1"]), row_keys("q", "p2", ["n2"])]
    assert count_conflicts(same_query, [[0, 1]]) == 2
    groups, _ = _groups(n_docs=2, per_doc=2)
    no_ids = group_row_keys(groups, 1, chunk_docs={})  # groups from another tool: no chunk → document map
    assert all(not any(k.startswith("doc:") for k in key.owned | key.shown) for key in no_ids)


def test_rows_short_of_negatives_are_skipped_like_groups_to_dataset():
    groups, chunk_docs = _groups(n_docs=4, per_doc=2)
    groups[3]["neg"], groups[3]["neg_ids"] = [], []
    ds, dropped = groups_to_dataset(groups, 1)
    keys = group_row_keys(groups, 1, chunk_docs)
    assert len(keys) == len(ds) == 7 and dropped == 1
    with pytest.raises(ValueError, match="same groups"):
        DocumentDisjointBatchSampler(ds, 4, False, keys=keys[:-1])


def test_rows_of_one_multi_document_question_never_share_a_batch():
    """positives: all gives a question naming two documents two rows; in one batch each row's positive would be
    the other's in-batch negative, so the keys must keep them apart, and stay aligned with the dataset's rows."""
    groups, chunk_docs = _groups(n_docs=12, per_doc=2)
    for g in groups[::4]:  # every fourth question also names the previous document
        prev = (int(g["pos_ids"][0][1:].split("#")[0]) - 1) % 12
        g["pos"].append(f"tài liệu {prev} đoạn 2")
        g["pos_ids"].append(f"D{prev}#2")
    ds, _ = groups_to_dataset(groups, 1, "all")
    keys = group_row_keys(groups, 1, chunk_docs, "all")
    assert len(keys) == len(ds) == 30
    twins = [(i, i + 1) for i in range(len(ds) - 1) if ds["anchor"][i] == ds["anchor"][i + 1]]
    assert len(twins) == 6
    for i, j in twins:
        second_doc = "doc:" + groups[4 * twins.index((i, j))]["pos_ids"][1].split("#")[0]
        assert second_doc in keys[i].owned and second_doc in keys[j].owned  # both rows own both documents
        assert second_doc in keys[j].shown and second_doc not in keys[i].shown  # each shows its own positive
    batches, conflicted = plan_batches(keys, list(range(len(ds))), batch_size=4, drop_last=False)
    assert conflicted == 0 and count_conflicts(keys, batches) == 0
    assert not any(i in b and j in b for b in batches for i, j in twins)


def test_the_trainer_draws_disjoint_batches_reproducibly(tiny_embedder_path, tmp_path):
    from sentence_transformers import SentenceTransformer

    groups, chunk_docs = _groups(n_docs=24, per_doc=2)
    cfg = EmbedderTrainConfig.from_params(shipped_params("train_embedder", batch_size=8, n_hard_negatives=1, seed=3))
    assert cfg.batch_sampler == "document_disjoint"  # the shipped setting
    ds, _ = groups_to_dataset(groups, 1)
    keys = group_row_keys(groups, 1, chunk_docs)
    model = SentenceTransformer(str(tiny_embedder_path), device="cpu")

    def epoch_batches(out: str, epoch: int) -> list[list[int]]:
        trainer = build_trainer(model, cfg, ds, None, tmp_path / out, column_prompts(1, "", ""), batch_keys=keys)
        sampler = trainer.get_train_dataloader().batch_sampler
        sampler.set_epoch(epoch)
        return [list(b) for b in sampler]

    first = epoch_batches("a", 0)
    assert batch_report(first, keys)["in_batch_false_negatives"] == 0 and len(first) == 6
    assert epoch_batches("b", 0) == first  # a resumed run sees the same batches
    assert epoch_batches("c", 1) != first  # and each epoch reshuffles
