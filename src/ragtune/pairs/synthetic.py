"""Self-supervised (query, positive) pairs from a document's own structure (title, headings, sentences), and the
rules that keep them from outvoting labels or leaking held-out questions."""

from __future__ import annotations

import random
import re
from collections import Counter, defaultdict
from collections.abc import Collection, Sequence
from typing import Any

from ragtune.pairs.split import query_key

_SENT = re.compile(r"(?<=[.!?…])\s+")


def synthetic_pairs(
    documents: Sequence[dict[str, Any]],
    chunks: Sequence[dict[str, Any]],
    per_doc: dict[str, int],
    max_pairs: int,
    seed: int,
    ict_keep_sentence: float = 0.1,
    min_anchor_words: int = 3,
) -> tuple[list[dict[str, Any]], Counter]:
    """Self-supervised (query, positive) pairs for corpora with few or no labels.

    - ``title``: a document's title → its first chunk;
    - ``heading``: a section heading → the first chunk of that section;
    - ``ict``: inverse cloze task (Lee et al., 2019): a sentence → the rest of its chunk. The sentence is removed
      from the positive (kept with probability ``ict_keep_sentence``), so the model learns context, not copy.

    Anchors that are shared by several documents (e.g. "Phạm vi điều chỉnh" heads article 1 of every law) are
    ambiguous: they would put true positives among in-batch negatives, so they are dropped and counted. So are
    anchors shorter than ``min_anchor_words`` words ("Mục đích" says nothing about which document it heads).
    """
    rng = random.Random(seed)
    counts: Counter = Counter()
    by_doc: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for c in chunks:
        by_doc[c["doc_id"]].append(c)
    # Ambiguity is judged over the whole corpus, before sampling: "Mục đích" heads a section in many documents,
    # so it must never become an anchor even if only one of those documents is sampled.
    docs_per_text: dict[str, set[str]] = defaultdict(set)
    for doc in documents:
        docs_per_text[query_key(doc.get("title") or "")].add(doc["doc_id"])
        for c in by_doc.get(doc["doc_id"], []):
            if c["section"]:
                docs_per_text[query_key(c["section"])].add(doc["doc_id"])

    def usable(anchor: str) -> bool:
        key = query_key(anchor)
        if len(key.split()) < min_anchor_words:
            counts["dropped_short_anchor"] += 1
            return False
        if len(docs_per_text.get(key, ())) > 1:
            counts["dropped_ambiguous_anchor"] += 1
            return False
        return True

    candidates: list[dict[str, Any]] = []
    for doc in documents:
        doc_chunks = by_doc.get(doc["doc_id"], [])
        if not doc_chunks:
            continue
        title = doc.get("title") or ""
        if per_doc.get("title", 0) > 0 and title and title != doc["doc_id"] and usable(title):
            candidates.append(_anchor_pair(doc, doc_chunks[0], title, "title"))
        n_head = per_doc.get("heading", 0)
        if n_head > 0:
            heads, seen_sections = [], set()
            for c in doc_chunks:
                sec = c["section"]
                if sec and sec not in seen_sections and sec != title:
                    seen_sections.add(sec)
                    if usable(sec):
                        heads.append(_anchor_pair(doc, c, sec, "heading"))
            # at most n_head heading pairs per document, chosen reproducibly
            candidates.extend(heads if len(heads) <= n_head else rng.sample(heads, n_head))
        for _ in range(per_doc.get("ict", 0)):
            c = rng.choice(doc_chunks)
            body = c["text"]
            # The query sentence comes from the body only: a sentence glued to the title/heading prefix lines
            # would teach the model to match document names, not content.
            lines = _without_lines(body, {title, c["section"] or ""})
            sentences = [s for line in lines for s in _SENT.split(line) if len(s.split()) >= 8]
            if len(sentences) < 2:
                counts["ict_skipped_short_chunk"] += 1
                continue
            sentence = rng.choice(sentences)
            rest = body if rng.random() < ict_keep_sentence else " ".join(body.replace(sentence, " ").split())
            pair = _pair(doc, c, sentence, "ict")
            pair["positive_texts"] = [rest]
            candidates.append(pair)

    docs_per_anchor: dict[str, set[str]] = defaultdict(set)
    for p in candidates:
        docs_per_anchor[query_key(p["query"])].add(p["positive_doc_ids"][0])
    kept, seen = [], set()
    for p in candidates:
        key = query_key(p["query"])
        if len(docs_per_anchor[key]) > 1:
            counts["dropped_ambiguous_anchor"] += 1
            continue
        if (key, p["positive_chunk_ids"][0]) in seen:
            counts["dropped_duplicate"] += 1
            continue
        seen.add((key, p["positive_chunk_ids"][0]))
        kept.append(p)
    if len(kept) > max_pairs:
        counts["dropped_over_max_pairs"] += len(kept) - max_pairs
        kept = rng.sample(kept, max_pairs)
    kept.sort(key=lambda p: (p["kind"], p["positive_chunk_ids"][0], p["query"]))
    for i, p in enumerate(kept):
        p["query_id"] = f"syn-{p['kind']}-{i:06d}"
    counts.update(p["kind"] for p in kept)
    return kept, counts


def cap_synthetic(
    synthetic: list[dict[str, Any]], n_labeled: int, max_per_labeled: float, seed: int
) -> tuple[list[dict[str, Any]], int]:
    """Keep at most ``max_per_labeled`` synthetic pairs per labeled training question; returns (kept, dropped).

    Why: on ALQAC (40 labeled questions, 2,247 articles) 4,061 synthetic pairs made 99% of the training batches,
    and the fine-tuned model fell 10.7 NDCG@10 points below its base. The labeled questions are the task; the
    synthetic ones are a regulariser and must not outvote them. ``max_per_labeled <= 0`` or no labels: no cap.
    """
    if max_per_labeled <= 0 or n_labeled == 0:
        return synthetic, 0
    limit = int(max_per_labeled * n_labeled)
    if len(synthetic) <= limit:
        return synthetic, 0
    keep = sorted(random.Random(seed).sample(range(len(synthetic)), limit))
    return [synthetic[i] for i in keep], len(synthetic) - limit


def use_synthetic(enabled: bool | str, n_labeled_train: int, min_labeled_train: int) -> bool:
    """Whether to add self-supervised pairs: ``auto`` adds them only when labels are scarce.

    Measured on the shipped sample (184 labeled training questions): adding 400 title/heading/ICT pairs cut the
    fine-tuned model's test NDCG@10 gain from +4.9 to +0.8 points, because they teach topical similarity while the
    labeled questions teach fact lookup. With few or no labels they are the only signal there is.
    """
    if enabled == "auto":
        return n_labeled_train < min_labeled_train
    if isinstance(enabled, bool):
        return enabled
    raise ValueError(f"pairs.synthetic.enabled must be true, false or auto (got {enabled!r})")


def _anchor_pair(doc: dict[str, Any], chunk: dict[str, Any], anchor: str, kind: str) -> dict[str, Any]:
    """A title/heading pair whose positive text no longer contains the anchor line.

    Chunks carry their title (and a continued section's heading) as a prefix line, so "title → its chunk" would
    be a copy task the model solves by string matching. Removing the line makes it learn what the text is about.
    """
    pair = _pair(doc, chunk, anchor, kind)
    kept = _without_lines(chunk["text"], {anchor})
    if len(kept) < chunk["text"].count("\n") + 1 and any(line.strip() for line in kept):
        pair["positive_texts"] = ["\n".join(kept)]
    return pair


def _without_lines(text: str, drop: set[str]) -> list[str]:
    """The lines of ``text``, minus those equal (after stripping) to a non-empty string in ``drop``."""
    drop = {d.strip() for d in drop} - {""}
    return [line for line in text.split("\n") if line.strip() not in drop]


def _pair(doc: dict[str, Any], chunk: dict[str, Any], query: str, kind: str) -> dict[str, Any]:
    return {
        "query": query.strip(),
        "positive_doc_ids": [doc["doc_id"]],
        "positive_chunk_ids": [chunk["chunk_id"]],
        "kind": kind,
    }


def training_synthetic(
    documents: Sequence[dict[str, Any]],
    chunks: Sequence[dict[str, Any]],
    splits: dict[str, list[dict[str, Any]]],
    pairs_params: dict[str, Any],
    held_out_chunks: Collection[str] = frozenset(),
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The synthetic pairs the pairs stage writes, and their counts (drops by reason, kept pairs by kind).

    None when ``pairs.synthetic.enabled`` says not to (:func:`use_synthetic`); else :func:`synthetic_pairs`, minus
    any pair whose question is a dev or test question, minus any pair whose positive is one of ``held_out_chunks``
    (the chunks of a synthetic held-out split: the model must not see them as positives), capped by
    :func:`cap_synthetic`.
    """
    syn_p = pairs_params["synthetic"]
    if not use_synthetic(syn_p["enabled"], len(splits["train"]), int(syn_p["min_labeled_train"])):
        return [], {}
    synthetic, syn_counts = synthetic_pairs(
        documents,
        chunks,
        per_doc=dict(syn_p["per_doc"]),
        max_pairs=int(syn_p["max_pairs"]),
        seed=int(pairs_params["seed"]),
        ict_keep_sentence=float(syn_p["ict_keep_sentence"]),
    )
    # A held-out question must never be a training anchor, even by coincidence.
    heldout = {query_key(q["query"]) for s in ("dev", "test") for q in splits[s]}
    before = len(synthetic)
    synthetic = [s for s in synthetic if query_key(s["query"]) not in heldout]
    syn_counts["dropped_equal_to_heldout_query"] = before - len(synthetic)
    if held_out_chunks:
        before, held = len(synthetic), set(held_out_chunks)
        synthetic = [s for s in synthetic if held.isdisjoint(s["positive_chunk_ids"])]
        syn_counts["dropped_from_held_out_chunk"] = before - len(synthetic)
    synthetic, capped = cap_synthetic(
        synthetic, len(splits["train"]), float(syn_p["max_per_labeled"]), int(pairs_params["seed"])
    )
    syn_counts["dropped_over_max_per_labeled"] = capped
    for kind in ("title", "heading", "ict"):  # kept pairs by kind, after every drop
        syn_counts[kind] = sum(1 for s in synthetic if s["kind"] == kind)
    return synthetic, syn_counts
