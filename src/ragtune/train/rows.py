"""Which training rows a list of hard-negative groups makes: read by both the dataset and the batch sampler.

``training.groups_to_dataset`` turns the rows into the Trainer's dataset and ``batching.group_row_keys`` turns the
same rows into the sampler's keys, so both must read them from one place. That place used to be ``training``, and
``batching`` imported it back from there while ``training`` imported the sampler: an import circle. This module
depends on nothing in ragtune, so both can import it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# Which labeled positives of a group become training rows: ``first`` = pos[0] only; ``all`` = one row per positive.
POSITIVES = ("first", "all")


def usable_group(group: dict[str, Any], n_hard_negatives: int) -> bool:
    """A group can make a training row: it has a positive and at least ``n_hard_negatives`` negatives."""
    return bool(group["pos"]) and len(group["neg"]) >= n_hard_negatives


def training_rows(
    groups: Sequence[dict[str, Any]], n_hard_negatives: int, positives: str = "first"
) -> tuple[list[tuple[dict[str, Any], int]], int]:
    """The training rows a list of groups makes, as ``(group, positive index)``, and how many groups were dropped.

    A group whose question names several relevant documents carries one positive chunk per document. ``first``
    trains on ``pos[0]`` alone, so the other labeled documents are never seen as positives; ``all`` makes one
    row per positive, each with the group's hard negatives (they are guarded against every positive's document).
    Rows of one group share their relevant documents, so the document-disjoint sampler never puts two of them in
    one batch, where each would be the other's false negative. ``training.groups_to_dataset`` and
    ``batching.group_row_keys`` both read the rows from here, so the dataset and the sampler's keys stay aligned.
    """
    if positives not in POSITIVES:
        raise ValueError(f"positives={positives!r}: choose one of {POSITIVES}")
    rows: list[tuple[dict[str, Any], int]] = []
    dropped = 0
    for g in groups:
        if not usable_group(g, n_hard_negatives):
            dropped += 1
            continue
        texts = g["pos"] if positives == "all" else g["pos"][:1]
        seen: set[str] = set()
        for i, text in enumerate(texts):
            if text not in seen:  # the same chunk listed twice is one positive, not two rows
                seen.add(text)
                rows.append((g, i))
    return rows, dropped
