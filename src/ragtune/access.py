"""Access levels and metadata filters: which chunks a caller may see, and which of those a request asks for.

**The access scale** (``access:`` in params.yaml) orders the levels lowest first; a caller at level L may see every
chunk at L or below. The index stage ranks each document's ``metadata.access_level`` on the scale (a document with
no label gets ``access.unlabeled``, so a corpus without labels works unchanged) and writes the scale into the index
manifest, so search and serve need only ``models/``. A label that is not on the scale stops the index stage: guessing
a level for it could publish a restricted document.

**Fail closed**: a search that names no level is answered at the lowest level.

**Filters** narrow the allowed chunks by ``doc_id``, ``department``, ``document_type`` or ``tags``: a value or a list
of values (any of them); a ``tags`` filter matches a document whose tags share any value. Unlike the level, a filter
is the caller's own choice of what to see, not a permission, so it only masks candidates (see ``ragtune.search``).

**Training** (:class:`TrainingAccess`): ``train_embedder.max_access_level`` and ``train_reranker.max_access_level``
keep the documents above a level out of what the trainers see, because model weights can leak the text they were
trained on; empty (the default) trains on every level.

Labels, levels and filter values are compared in one folded form (:func:`fold`: case, spacing, Unicode form and
Vietnamese tone placement do not matter), because ingest normalises metadata text (NFC, tone style) while params and
requests are typed by people; ``doc_id`` is an identifier and matches exactly.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ragtune.errors import UserError
from ragtune.io import read_jsonl
from ragtune.text import normalize_tone_marks

FILTER_FIELDS = ("doc_id", "department", "document_type", "tags")
LEVEL_KEY = "access_level"  # the metadata key ingest fills from the sources' access_level column


class AccessError(UserError, ValueError):
    """An access level that is not on the scale (in params, on a document, or in a request), or a scale that cannot
    be used; the message lists the levels and says what to change."""


class FilterError(UserError, ValueError):
    """A metadata filter that cannot be applied: ``field`` is the filter's key (``""``: the filters object itself)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"filters.{field}: {reason}" if field else f"filters: {reason}")
        self.field = field
        self.reason = reason


def fold(value: Any) -> str:
    """The form labels and filter values are compared in: NFC, one tone placement (hòa = hoà), single spaces,
    case-folded. ``" Internal "``, ``"INTERNAL"`` and ``"internal"`` are one level."""
    text = unicodedata.normalize("NFC", " ".join(str(value).split()))
    return normalize_tone_marks(text, "old").casefold()


def _label(metadata: Mapping[str, Any]) -> Any:
    """A document's access label, or None when it has none (absent, null or blank)."""
    value = metadata.get(LEVEL_KEY)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return value


@dataclass(frozen=True)
class AccessScale:
    """The ordered access levels, lowest first, and the level of a document without a label."""

    levels: tuple[str, ...]
    unlabeled: str
    _ranks: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ranks: dict[str, int] = {}
        for i, level in enumerate(self.levels):
            key = fold(level)
            if not key:
                raise AccessError(f"params.yaml access.levels[{i}] is empty: name every level")
            if key in ranks:
                raise AccessError(
                    f"params.yaml access.levels lists {level!r} twice (levels match case- and space-insensitively): "
                    "keep one"
                )
            ranks[key] = i
        if not ranks:
            raise AccessError("params.yaml access.levels is empty: list at least one level, lowest first")
        if fold(self.unlabeled) not in ranks:
            raise AccessError(
                f"params.yaml access.unlabeled = {self.unlabeled!r} is not on the scale: set it to one of "
                f"{', '.join(self.levels)} (access.levels)"
            )
        object.__setattr__(self, "_ranks", ranks)

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> AccessScale:
        """From the ``access:`` params section (already type-checked by its schema) or the manifest's copy of it."""
        return cls(tuple(str(x) for x in params["levels"]), str(params["unlabeled"]))

    def to_manifest(self) -> dict[str, Any]:
        return {"levels": list(self.levels), "unlabeled": self.unlabeled}

    @property
    def lowest(self) -> str:
        return self.levels[0]

    def rank(self, level: str | None) -> int:
        """The rank of a caller's level (0 = lowest); no level is the lowest (fail closed)."""
        if level is None:
            return 0
        rank = self._ranks.get(fold(level)) if isinstance(level, str) else None
        if rank is None:
            raise AccessError(
                f"unknown access level {level!r}: use one of {', '.join(self.levels)} (lowest first, case does not "
                "matter)"
            )
        return rank

    def name(self, level: str | None) -> str:
        """The level a caller is answered at, as the scale spells it (``" Internal "`` → ``"internal"``; no level →
        the lowest), for responses and logs."""
        return self.levels[self.rank(level)]

    def document_ranks(self, documents: Sequence[Mapping[str, Any]]) -> tuple[dict[str, int], int]:
        """``({doc_id: rank}, number of unlabeled documents)``. Every off-scale label is reported at once, with the
        document ids, the values and the two fixes: a guessed level could publish a restricted document."""
        ranks: dict[str, int] = {}
        unlabeled = 0
        bad: list[tuple[str, Any]] = []
        default = self._ranks[fold(self.unlabeled)]
        for doc in documents:
            label = _label(doc.get("metadata") or {})
            if label is None:
                ranks[doc["doc_id"]] = default
                unlabeled += 1
            elif (rank := self._ranks.get(fold(label))) is not None:
                ranks[doc["doc_id"]] = rank
            else:
                bad.append((doc["doc_id"], label))
        if bad:
            shown = "; ".join(f"document {d} has access_level {v!r}" for d, v in bad[:5])
            more = f" (and {len(bad) - 5} more documents)" if len(bad) > 5 else ""
            values = sorted({str(v) for _, v in bad})
            raise AccessError(
                f"{shown}{more}: not on the access scale {', '.join(self.levels)} (params.yaml access.levels, lowest "
                f"first). Add {', '.join(map(repr, values))} to access.levels at its place in the order, or fix the "
                "document's label in the source data"
            )
        return ranks, unlabeled


# ------------------------------------------------------------------------------------------------------ filters
def parse_filters(filters: Mapping[str, Any] | None) -> dict[str, frozenset[str]]:
    """``{field: value | [values]}`` → ``{field: folded values}`` (``doc_id`` exact); ``{}`` for no filter.

    An unknown field or a value that is not a text (or a non-empty list of texts) is refused: a filter that is
    silently dropped returns documents the caller excluded."""
    if filters is None:
        return {}
    if not isinstance(filters, Mapping):
        raise FilterError("", f"must be an object of field: value, with the fields {', '.join(FILTER_FIELDS)}")
    out: dict[str, frozenset[str]] = {}
    for name, value in filters.items():
        if name not in FILTER_FIELDS:
            hint = " (the caller's level is the access_level field, not a filter)" if name == LEVEL_KEY else ""
            raise FilterError(str(name), f"unknown filter field{hint}; filter on one of {', '.join(FILTER_FIELDS)}")
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
            raise FilterError(name, "must be a text or a non-empty list of texts (a list matches any of its values)")
        if any(not v.strip() for v in values):
            raise FilterError(name, "has an empty value: give the value to match")
        out[name] = frozenset(values if name == "doc_id" else (fold(v) for v in values))
    return out


def _values(chunk: Mapping[str, Any], name: str) -> list[str]:
    """A chunk's values of one filter field, as filters compare them."""
    if name == "doc_id":
        return [chunk["doc_id"]]
    value = (chunk.get("metadata") or {}).get(name)
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    return [fold(v) for v in items if v is not None and str(v).strip()]


@dataclass
class MetadataIndex:
    """Chunk positions by filter field and value, built per field on first use: a filter's mask costs a few array
    writes per value instead of a pass over every chunk's metadata per request."""

    chunks: Sequence[Mapping[str, Any]]
    _by_field: dict[str, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)

    def _positions(self, name: str) -> dict[str, np.ndarray]:
        if name not in self._by_field:
            found: dict[str, list[int]] = {}
            for i, chunk in enumerate(self.chunks):
                for v in set(_values(chunk, name)):
                    found.setdefault(v, []).append(i)
            self._by_field[name] = {v: np.array(p, dtype=np.int64) for v, p in found.items()}
        return self._by_field[name]

    def mask(self, filters: Mapping[str, frozenset[str]]) -> np.ndarray | None:
        """Which chunks match every field's filter (any of its values); None when there is no filter."""
        if not filters:
            return None
        keep = np.ones(len(self.chunks), dtype=bool)
        for name, values in filters.items():
            positions = self._positions(name)
            hit = np.zeros(len(self.chunks), dtype=bool)
            for v in values:
                if v in positions:
                    hit[positions[v]] = True
            keep &= hit
        return keep


# ------------------------------------------------------------------------------------------------------ training
@dataclass(frozen=True)
class TrainingAccess:
    """The documents a trainer may learn from: those at ``max_level`` or below (``<stage>.max_access_level``).

    Why: model weights can leak the text they were trained on (a passage recited, a fact answered from memory), and
    the shipped models answer every caller, whatever its level. The index hides a restricted chunk from a caller
    below its level; only training can keep its text out of the weights. Both training stages pass what their
    trainer will see through :meth:`groups`, so the rule is written once:

    * a group whose question is relevant to a document above the level (its positive chunks, and for the reranker
      the pair's ``positive_doc_ids``) is dropped whole: the question may have been written from that text
      (generated and self-supervised questions are; a labeled one may quote it);
    * a negative from a document above the level is removed from ``neg`` (and ``neg_ids``, ``neg_sources``); the
      others keep their order. A group left short of negatives then meets its stage's own rule for short groups.

    :meth:`lists` does the same for the cross-encoder's distillation lists (the teacher's candidates).

    **Dev evaluation keeps the whole corpus.** Scoring dev updates no weight: it ranks checkpoints, picks the best
    one, and decides the merge and what ships. What it can pass on to the weights is that choice among a handful of
    trained models, never a text; and dev scores stay comparable with the evaluate stage's, which ranks the whole
    corpus. Hiding restricted documents from dev would also score a question about one as a miss, which says nothing
    about the model.

    A document not in documents.jsonl gets ``access.unlabeled``, as in the index. A chunk id that chunks.jsonl does
    not hold cannot be placed on the scale, and is an error (fail closed), not a guess.
    """

    key: str  # the params key, for messages: train_embedder.max_access_level
    scale: AccessScale
    max_level: str
    max_rank: int
    doc_ranks: Mapping[str, int]
    chunk_docs: Mapping[str, str]

    @property
    def excluded_levels(self) -> tuple[str, ...]:
        return self.scale.levels[self.max_rank + 1 :]

    def _per_level(self) -> dict[str, int]:
        return dict.fromkeys(self.excluded_levels, 0)

    def doc_rank(self, doc_id: str) -> int:
        return self.doc_ranks.get(doc_id, self.scale.rank(self.scale.unlabeled))

    def chunk_rank(self, chunk_id: str, where: str) -> int:
        """The rank of a chunk's document; ``where`` names the record, for the error."""
        doc = self.chunk_docs.get(chunk_id)
        if doc is None:
            raise AccessError(
                f"{where} names chunk {chunk_id!r}, which chunks.jsonl does not hold, so its access level is unknown "
                f"and {self.key} cannot be applied: re-run the stages that made it (dvc repro)"
            )
        return self.doc_rank(doc)

    def _question_rank(self, chunk_ids: Sequence[str], doc_ids: Sequence[str], where: str) -> int:
        """The highest level the question is relevant to (-1: none known)."""
        ranks = [self.chunk_rank(c, where) for c in chunk_ids] + [self.doc_rank(d) for d in doc_ids]
        return max(ranks, default=-1)

    def _visible(self, chunk_ids: Sequence[str], where: str, removed: dict[str, int]) -> list[int]:
        """Positions of the chunks at or below the level; each one above it is counted in ``removed`` by level."""
        keep = []
        for i, cid in enumerate(chunk_ids):
            rank = self.chunk_rank(cid, where)
            if rank > self.max_rank:
                removed[self.scale.levels[rank]] += 1
            else:
                keep.append(i)
        return keep

    def documents_excluded(self) -> dict[str, int]:
        """Documents above the level, per level."""
        out = self._per_level()
        for rank in self.doc_ranks.values():
            if rank > self.max_rank:
                out[self.scale.levels[rank]] += 1
        return out

    def groups(
        self,
        groups: Sequence[dict[str, Any]],
        *,
        min_negatives: int,
        relevant_docs: Mapping[str, Sequence[str]] | None = None,
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The groups the trainer may see, and the counts for the stage's metrics (``train.access_excluded``).

        ``groups``: ``{"query", "pos", "neg", "pos_ids", "neg_ids", ...}`` (the negatives stage's, or the reranker's
        own). ``relevant_docs``: query id → every document its question is relevant to, where a group's ``pos_ids``
        hold fewer (the reranker keeps one positive per question). ``min_negatives``: what the stage needs per group;
        groups the removal leaves below it (having had enough) are counted, and the stage's own rule decides.
        """
        kept: list[dict[str, Any]] = []
        dropped, removed, short = self._per_level(), self._per_level(), 0
        for g in groups:
            where = f"the training group of query {g.get('query_id', g.get('query'))!r}"
            if "pos_ids" not in g or "neg_ids" not in g or len(g["neg_ids"]) != len(g["neg"]):
                raise AccessError(
                    f"{where} has no pos_ids/neg_ids aligned with pos/neg, so {self.key} cannot tell which documents "
                    "its texts come from: re-run the stage that wrote it (dvc repro)"
                )
            docs = (relevant_docs or {}).get(g.get("query_id", ""), ())
            top = self._question_rank(g["pos_ids"], docs, where)
            if top > self.max_rank:
                dropped[self.scale.levels[top]] += 1
                continue
            keep = self._visible(g["neg_ids"], where, removed)
            if len(keep) < len(g["neg_ids"]):
                short += len(keep) < min_negatives <= len(g["neg_ids"])
                g = {**g, **{k: [g[k][i] for i in keep] for k in ("neg", "neg_ids", "neg_sources") if k in g}}
            kept.append(g)
        counts = {
            **self._header(),
            "groups_in": len(groups),
            "groups_kept": len(kept),
            "groups_dropped": dropped,
            "negatives_removed": removed,
            "groups_left_short_of_negatives": short,
        }
        return kept, counts

    def lists(
        self, lists: Sequence[dict[str, Any]], *, relevant_docs: Mapping[str, Sequence[str]]
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The cross-encoder's distillation lists (``{"query", "docs", "labels", "query_id", "doc_ids", ...}``) the
        trainer may see, by the rule of :meth:`groups`: a list whose question is relevant to a document above the
        level is dropped; a candidate above it leaves the list (the teacher's softmax is over the rest); a list left
        with fewer than 2 candidates ranks nothing and is dropped too. Returns the lists and their counts."""
        kept: list[dict[str, Any]] = []
        dropped, removed, too_short = self._per_level(), self._per_level(), 0
        for x in lists:
            where = f"the distillation list of query {x['query_id']!r}"
            top = self._question_rank((), relevant_docs.get(x["query_id"], ()), where)
            if top > self.max_rank:
                dropped[self.scale.levels[top]] += 1
                continue
            keep = self._visible(x["doc_ids"], where, removed)
            if len(keep) < 2:
                too_short += 1
                continue
            if len(keep) < len(x["doc_ids"]):
                x = {**x, **{k: [x[k][i] for i in keep] for k in ("docs", "labels", "doc_ids")}}
            kept.append(x)
        counts = {
            "lists_in": len(lists),
            "lists_kept": len(kept),
            "lists_dropped": dropped,
            "candidates_removed": removed,
            "lists_dropped_under_two_candidates": too_short,
        }
        return kept, counts

    def _header(self) -> dict[str, Any]:
        return {
            "max_access_level": self.max_level,
            "levels_excluded": list(self.excluded_levels),
            "documents_excluded": self.documents_excluded(),
        }

    def summary(self, counts: Mapping[str, Any]) -> str:
        """The stage summary's words for :meth:`groups`' counts, per level: ``9 groups (confidential 6, restricted 3)
        and 2 negatives (confidential 2) above internal left out (train_embedder.max_access_level)``."""

        def part(name: str, per_level: Mapping[str, int]) -> str:
            levels = ", ".join(f"{level} {n}" for level, n in per_level.items() if n)
            return f"{sum(per_level.values())} {name}" + (f" ({levels})" if levels else "")

        groups, negatives = part("groups", counts["groups_dropped"]), part("negatives", counts["negatives_removed"])
        return f"{groups} and {negatives} above {self.max_level} left out ({self.key})"

    def require_groups(self, counts: Mapping[str, Any]) -> None:
        """Stop when the exclusion left no training group of the ones there were: training on nothing is no model."""
        if counts["groups_in"] and not counts["groups_kept"]:
            raise AccessError(
                f"{self.key} = {self.max_level!r} leaves no training group: all {counts['groups_in']} are about "
                f"documents above {self.max_level} ({', '.join(self.excluded_levels)}). Raise {self.key} (levels, "
                f"lowest first: {', '.join(self.scale.levels)}), leave it empty to train on every level, or add "
                f"training questions about documents at {self.max_level} or below"
            )


def training_access(
    key: str,
    max_level: str | None,
    access: Mapping[str, Any],
    documents: Sequence[Mapping[str, Any]] | str | Path,
    chunks: Sequence[Mapping[str, Any]],
) -> TrainingAccess | None:
    """The rule a trainer's ``max_access_level`` (params key ``key``) sets, or None for an empty one (every level
    trains, as before). ``access``: the ``access:`` params section; ``documents``: documents.jsonl's records, or its
    path (read once the level is known to be on the scale); ``chunks``: chunks.jsonl's records. A level off the
    scale stops the stage with the key, the value and the levels; so does a document label off it, as in the index
    stage. The stages call it first, before minutes of work."""
    if max_level is None:
        return None
    scale = AccessScale.from_params(access)
    try:
        max_rank = scale.rank(max_level)
    except AccessError:
        raise AccessError(
            f"params.yaml {key} = {max_level!r} is not on the access scale: set it to one of "
            f"{', '.join(scale.levels)} (access.levels, lowest first; case does not matter), or leave it empty to "
            "train on every level"
        ) from None
    if isinstance(documents, str | Path):
        documents = read_jsonl(documents)
    doc_ranks, _ = scale.document_ranks(documents)
    return TrainingAccess(
        key=key,
        scale=scale,
        max_level=scale.levels[max_rank],
        max_rank=max_rank,
        doc_ranks=doc_ranks,
        chunk_docs={c["chunk_id"]: c["doc_id"] for c in chunks},
    )
