"""Training batches without in-batch false negatives.

MultipleNegativesRankingLoss scores every query against every passage in its batch, and every passage that is not
the query's own positive counts as a negative. sentence-transformers' ``NO_DUPLICATES`` sampler only keeps
*identical texts* apart. On an organisation's corpus of a few dozen to a few thousand documents, another row's
positive or hard negative is often a different chunk of *this* query's relevant document: on the shipped sample
(184 questions over 67 documents) a random batch of 16 held ~9 such pairs, touching 7 of its 16 queries. The loss
then pushes the query away from a document that answers it, the same mistake the negatives stage refuses to make
for mined negatives ("chunks of a positive document are never negatives").

``DocumentDisjointBatchSampler`` builds each epoch's batches so that no row shows another row a passage from that
row's relevant documents (or an identical text, or an identical query). Batch count and sizes are those of the
default sampler, so the schedule and resume arithmetic of the Trainer are unchanged. When a row cannot be placed
without a conflict (a document with more questions than there are batches), it is placed where it conflicts
least, and the count is reported: never silently.

Under DDP (``torchrun``), MNRL gathers every process's passages as negatives for every query, and accelerate hands
process ``p`` batch ``step·world + p``: the ``world`` consecutive batches of one step form one gathered batch. The
sampler then plans with ``group_size = world``, so the disjointness holds across the gathered batch too, and only
the last batch may be short (accelerate skips a step whose last batch is short).
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sentence_transformers.base.sampler import DefaultBatchSampler

from ragtune.train.rows import training_rows

SCAN_WINDOW = 256  # open batches tried per row before the repair step: bounds the cost on big corpora
REPAIR_WINDOW = 32  # full batches (and open targets) the repair step tries for a row that fits nowhere


@dataclass(frozen=True)
class RowKeys:
    """What one training row *owns* (its query, its relevant documents, its positive text) and what it *shows*
    the other rows of its batch as candidates (its query, the documents and texts of its positive and negatives).
    Two rows conflict when one shows something the other owns."""

    owned: frozenset[str]
    shown: frozenset[str]


def _text_key(text: str) -> str:
    return "text:" + hashlib.blake2b(text.encode("utf-8"), digest_size=12).hexdigest()


def row_keys(
    query: str,
    positive: str,
    negatives: Sequence[str],
    positive_docs: Sequence[str] = (),
    shown_docs: Sequence[str] = (),
) -> RowKeys:
    """Keys of one row: texts always, documents when they are known."""
    q = _text_key(query)
    return RowKeys(
        owned=frozenset([q, _text_key(positive), *(f"doc:{d}" for d in positive_docs)]),
        shown=frozenset([q, _text_key(positive), *map(_text_key, negatives), *(f"doc:{d}" for d in shown_docs)]),
    )


def group_row_keys(
    groups: Sequence[Mapping[str, Any]],
    n_hard_negatives: int,
    chunk_docs: Mapping[str, str],
    positives: str = "first",
) -> list[RowKeys]:
    """Keys for the rows ``training.groups_to_dataset`` makes from the same groups (``rows.training_rows``).

    A row's relevant documents are those of all its group's positive chunks (``pos_ids``), not only the one the
    row trains on; its shown documents are those of its own positive and the ``n_hard_negatives`` negatives it
    trains on. Ids missing from ``chunk_docs`` (groups from another tool) fall back to text keys alone.
    """
    keys = []
    rows, _ = training_rows(groups, n_hard_negatives, positives)
    for g, p in rows:
        pos_ids = list(g.get("pos_ids") or [])
        neg_ids = list(g.get("neg_ids") or [])[:n_hard_negatives]
        positive_docs = [chunk_docs[c] for c in pos_ids if c in chunk_docs]
        shown_docs = [chunk_docs[c] for c in pos_ids[p : p + 1] + neg_ids if c in chunk_docs]
        keys.append(row_keys(g["query"], g["pos"][p], g["neg"][:n_hard_negatives], positive_docs, shown_docs))
    return keys


def dataset_row_keys(dataset: Any) -> list[RowKeys]:
    """Text-only keys from an ``(anchor, positive, negative_*)`` dataset: what NO_DUPLICATES guarantees, as keys."""
    neg_cols = [c for c in dataset.column_names if c.startswith("negative")]
    return [
        row_keys(row["anchor"], row["positive"], [row[c] for c in neg_cols])
        for row in dataset.select_columns(["anchor", "positive", *neg_cols])
    ]


def batch_count(n_rows: int, batch_size: int, drop_last: bool) -> int:
    """The default sampler's number of batches: the document-disjoint plan keeps it, so the schedule is unchanged."""
    return n_rows // batch_size if drop_last else math.ceil(n_rows / batch_size)


def plan_batches(
    keys: Sequence[RowKeys], order: Sequence[int], batch_size: int, drop_last: bool, group_size: int = 1
) -> tuple[list[list[int]], int]:
    """Pack rows (in ``order``) into the default sampler's number of batches, first fit without conflicts.

    A row that fits no open batch is swapped into a full one whose displaced row fits an open batch (one repair
    step); only if that fails too is it placed where it conflicts least. Returns the batches and the number of
    rows placed with a conflict. Rows that do not fit at all (``drop_last`` with a remainder) are left out, as
    the default sampler would leave them out.

    ``group_size`` > 1 (DDP world size): conflicts are checked across each run of ``group_size`` consecutive
    batches (one gathered batch), and every batch but the last is filled to exactly ``batch_size``.
    """
    n_batches = batch_count(len(order), batch_size, drop_last)
    capacity = [batch_size] * n_batches
    if group_size > 1 and n_batches:  # accelerate needs full batches; the remainder goes to the last one
        capacity[-1] = min(batch_size, len(order) - batch_size * (n_batches - 1))
    batches: list[list[int]] = [[] for _ in range(n_batches)]
    # the batches of one gathered group share one pair of counters (Counter's -= is in place), so every check
    # below sees the whole group through its batch index
    group_counters = [(Counter[str](), Counter[str]()) for _ in range(math.ceil(n_batches / group_size))]
    owned = [group_counters[b // group_size][0] for b in range(n_batches)]
    shown = [group_counters[b // group_size][1] for b in range(n_batches)]
    open_batches = list(range(n_batches))
    full_batches: list[int] = []

    def fits(row: int, b: int, without: int | None = None) -> bool:
        k, o, s = keys[row], owned[b], shown[b]
        if without is None:
            return not any(x in o for x in k.shown) and not any(x in s for x in k.owned)
        w = keys[without]
        return all(o[x] <= (x in w.owned) for x in k.shown) and all(s[x] <= (x in w.shown) for x in k.owned)

    def clash(row: int, b: int) -> int:
        k, o, s = keys[row], owned[b], shown[b]
        return sum(x in s for x in k.owned) + sum(x in o for x in k.shown)

    def enter(row: int, b: int) -> None:
        batches[b].append(row)
        owned[b].update(keys[row].owned)
        shown[b].update(keys[row].shown)

    def leave(row: int, b: int) -> None:
        batches[b].remove(row)
        owned[b] -= Counter(keys[row].owned)
        shown[b] -= Counter(keys[row].shown)

    def add(row: int, b: int) -> None:
        enter(row, b)
        if len(batches[b]) == capacity[b]:
            open_batches.remove(b)
            full_batches.append(b)

    def swap_in(row: int) -> bool:
        for f in full_batches[-REPAIR_WINDOW:]:
            for other in batches[f]:
                if not fits(row, f, without=other):
                    continue
                target = next((b for b in open_batches[:REPAIR_WINDOW] if fits(other, b)), None)
                if target is None:
                    continue
                leave(other, f)
                enter(row, f)  # f stays full
                add(other, target)
                return True
        return False

    conflicted = 0
    for row in order:
        if not open_batches:
            break
        window = open_batches[:SCAN_WINDOW]
        target = next((b for b in window if fits(row, b)), None)
        if target is not None:
            add(row, target)
        elif not swap_in(row):
            conflicted += 1
            add(row, min(window, key=lambda b: clash(row, b)))
    return [b for b in batches if b], conflicted


def conflicts(
    keys: Sequence[RowKeys], batches: Sequence[Sequence[int]], group_size: int = 1
) -> Iterator[tuple[int, int]]:
    """Ordered row pairs (a, b) in one batch where b shows a something a owns: in-batch false negatives.

    With ``group_size`` > 1, each run of that many consecutive batches counts as one (DDP's gathered batch)."""
    for start in range(0, len(batches), group_size):
        rows = [r for batch in batches[start : start + group_size] for r in batch]
        for a in rows:
            for b in rows:
                if a != b and not keys[a].owned.isdisjoint(keys[b].shown):
                    yield a, b


def count_conflicts(keys: Sequence[RowKeys], batches: Sequence[Sequence[int]], group_size: int = 1) -> int:
    """How many in-batch false negatives the batches hold (see :func:`conflicts`)."""
    return sum(1 for _ in conflicts(keys, batches, group_size))


class DocumentDisjointBatchSampler(DefaultBatchSampler):
    """A sentence-transformers batch sampler that keeps each row's relevant documents out of its batch-mates.

    Pass it to ``SentenceTransformerTrainingArguments(batch_sampler=...)`` as
    ``functools.partial(DocumentDisjointBatchSampler, keys=...)``. Each epoch reshuffles with ``seed + epoch``,
    so a resumed run sees the same batches as an uninterrupted one.
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        drop_last: bool,
        valid_label_columns: list[str] | None = None,
        generator: Any = None,
        seed: int = 0,
        *,
        keys: Sequence[RowKeys],
        group_size: int | None = None,
    ) -> None:
        super().__init__(
            dataset,
            batch_size=batch_size,
            drop_last=drop_last,
            valid_label_columns=valid_label_columns,
            generator=generator,
            seed=seed,
        )
        if len(keys) != len(dataset):
            raise ValueError(
                f"{len(keys)} row keys for a dataset of {len(dataset)} rows: build both from the same groups"
            )
        self.keys = list(keys)
        self.group_size = group_size or gathered_batches()

    def plan(self, epoch: int) -> list[list[int]]:
        """The batches of one epoch (deterministic in seed and epoch)."""
        import torch

        generator = torch.Generator()
        generator.manual_seed(self.seed + epoch)
        order = torch.randperm(len(self.keys), generator=generator).tolist()
        batches, _ = plan_batches(self.keys, order, self.batch_size, self.drop_last, self.group_size)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.plan(self.epoch)

    def __len__(self) -> int:
        return batch_count(len(self.keys), self.batch_size, self.drop_last)


def gathered_batches() -> int:
    """How many consecutive batches one optimizer step gathers: the DDP world size (1 without DDP)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def batch_report(batches: Sequence[Sequence[int]], keys: Sequence[RowKeys], group_size: int = 1) -> dict[str, int]:
    """In-batch false negatives in one epoch's batches, for the metrics: the sampler's work made visible.

    ``group_size``: the DDP world size, whose consecutive batches are gathered into one (see the module doc)."""
    pairs = list(conflicts(keys, batches, group_size))
    return {
        "batches": len(batches),
        "gathered_batches": math.ceil(len(batches) / group_size),
        "in_batch_false_negatives": len(pairs),
        "rows_with_in_batch_false_negatives": len({a for a, _ in pairs}),
    }
