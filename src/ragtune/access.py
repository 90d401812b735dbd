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

Labels, levels and filter values are compared in one folded form (:func:`fold`: case, spacing, Unicode form and
Vietnamese tone placement do not matter), because ingest normalises metadata text (NFC, tone style) while params and
requests are typed by people; ``doc_id`` is an identifier and matches exactly.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ragtune.errors import UserError
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
