"""The leak-free train/dev/test split of labeled queries: fixed splits honoured, the rest drawn by a seeded shuffle,
and copies of a held-out question set aside (quarantined) so nothing held out is ever trained on."""

from __future__ import annotations

import random
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ragtune.params import ParamsError

SPLITS = ("train", "dev", "test")


def query_key(text: str) -> str:
    """Normalized query text used to detect the same question under different ids (case, spacing, punctuation)."""
    text = unicodedata.normalize("NFC", text).lower()
    return re.sub(r"[\W_]+", " ", text).strip()


@dataclass
class SplitPlan:
    """Labeled queries by split, where each split's questions came from, and the copies the leak guard set aside."""

    splits: dict[str, list[dict[str, Any]]]
    # per split: "fixed" (ingest said so), "drawn" (unassigned, placed by the seeded shuffle) and, for dev,
    # "carved_from_train" (fixed to train, moved to dev because no dev question was fixed)
    sources: dict[str, dict[str, int]]
    quarantine: list[dict[str, Any]]  # {"stage": "pairs", "kind": "query", "source", "reason", "record"}

    @property
    def quarantined(self) -> dict[str, int]:
        """Quarantined copies by reason; every reason is listed, so a 0 in the metrics is a checked 0."""
        counts = Counter(q["reason"] for q in self.quarantine)
        return {reason: counts[reason] for reason in QUARANTINE_REASONS}


QUARANTINE_REASONS = ("same_text_as_dev", "same_text_as_test")


def split_queries(queries: Sequence[dict[str, Any]], dev_ratio: float, test_ratio: float, seed: int) -> SplitPlan:
    """Split labeled queries into train/dev/test, honouring the split ingest fixed for a question (``split``).

    Queries with the same normalized text are one group and land in one split (so a test question can never
    reappear in training under another id). Then:

    * **Fixed** questions (``split`` is train/dev/test) stay in their split. When copies of one text are fixed
      to different splits, the most held-out split keeps it (test > dev > train) and every other copy of that
      text, fixed or unassigned, goes to ``quarantine`` as ``same_text_as_test``/``same_text_as_dev``: the
      user's held-out set stays exactly what they brought, and nothing of it is trained on. Unassigned copies of
      a fixed-train text join that train group.
    * **Unassigned** questions (``split`` null or absent) are drawn: the groups are sorted and shuffled with
      ``seed``; the first ``round(n * test_ratio)`` go to test, ``n`` counting unassigned groups alone.
    * **Dev**: with a fixed dev set, the next ``round(n * dev_ratio)`` unassigned groups join it. Without one,
      dev is carved from the train pool (fixed-train and drawn-train groups, never test): ``round(m *
      dev_ratio)`` groups, ``m`` counting unassigned and fixed-train groups; with no fixed-train group that is
      again the next unassigned groups.

    With nothing fixed this is exactly the plain seeded split (same groups in the same order, same sizes), so
    a corpus without fixed splits keeps byte-identical pair files. Sizes are rounded to whole groups;
    ``test_ratio=1`` evaluates on every unassigned query (e.g. to benchmark a base model).
    """
    if not 0 <= dev_ratio <= 1 or not 0 <= test_ratio <= 1 or dev_ratio + test_ratio > 1:
        raise ParamsError(
            f"pairs.dev_ratio={dev_ratio} and pairs.test_ratio={test_ratio} must be in [0, 1] and sum to ≤ 1."
        )
    by_key: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for q in queries:
        if q.get("split") is not None and q["split"] not in SPLITS:
            raise ValueError(
                f"query {q['query_id']!r} ({q.get('source', '?')}): split {q['split']!r} is not one of {SPLITS} "
                "or null. queries.jsonl is written by ingest, which normalises split names; re-run ingest."
            )
        by_key[query_key(q["query"])].append(q)
    # the split a text is fixed to: the most held-out split any of its copies is fixed to
    level: dict[str, str | None] = {}
    for k, copies in by_key.items():
        fixed = {q.get("split") for q in copies}
        level[k] = next((s for s in ("test", "dev", "train") if s in fixed), None)

    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    quarantine: list[dict[str, Any]] = []
    for q in queries:
        k = query_key(q["query"])
        held = level[k]
        if held in ("dev", "test") and q.get("split") != held:
            kept = next(x for x in by_key[k] if x.get("split") == held)
            record = {**q, "duplicate_of": kept["query_id"]}
            quarantine.append({"stage": "pairs", "kind": "query", "source": q.get("source", ""),
                               "reason": f"same_text_as_{held}", "record": record})  # fmt: skip
            continue
        groups[k].append(q)

    # Unassigned groups: sorted, then shuffled with the seed; test takes the first round(n × test_ratio).
    rng = random.Random(seed)
    drawn = sorted(k for k in groups if level[k] is None)
    rng.shuffle(drawn)
    n_test = round(len(drawn) * test_ratio)
    assignment: dict[str, str] = {k: s for k, s in level.items() if s is not None and k in groups}
    assignment.update(dict.fromkeys(drawn[:n_test], "test"))
    # Dev: the next unassigned groups of that order, or, when no dev question is fixed, a draw from the whole
    # train pool (fixed-train groups too; never test). The pool is shuffled afresh: dealing it from the first
    # order would favour one side, as test has already taken the unassigned groups at its top.
    pool = drawn[n_test:]
    carve = [] if any(level[k] == "dev" for k in groups) else sorted(k for k in groups if level[k] == "train")
    if carve:
        pool = sorted(pool + carve)
        rng.shuffle(pool)
    n_dev = min(round((len(drawn) + len(carve)) * dev_ratio), len(pool))
    assignment.update(dict.fromkeys(pool[:n_dev], "dev"))

    out: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    seen = set(drawn)
    for k in [*drawn, *sorted(k for k in groups if k not in seen)]:
        out[assignment.get(k, "train")].extend(groups[k])
    sources: dict[str, dict[str, int]] = {
        "train": {"fixed": 0, "drawn": 0},
        "dev": {"fixed": 0, "drawn": 0, "carved_from_train": 0},
        "test": {"fixed": 0, "drawn": 0},
    }
    for s in SPLITS:
        out[s].sort(key=lambda q: q["query_id"])
        for q in out[s]:
            own = q.get("split")
            sources[s]["drawn" if own is None else "fixed" if own == s else "carved_from_train"] += 1
    return SplitPlan(out, sources, quarantine)
