"""Token-aware chunking that respects section and sentence boundaries.

Why token-aware: the embedder truncates at ``max_seq_length`` tokens, so a chunk measured in characters can
silently lose its tail (Vietnamese averages ~3.5 characters per XLM-R token, but tables and codes run far
denser). Chunks are measured with the *embedder's own tokenizer*, and the configured size is checked against the
model's limit before anything is written.

Why boundaries: a chunk that starts mid-sentence or mixes two sections is a worse retrieval unit and a worse
training positive. Sections are packed whole while they fit; a long section is split between sentences, with
``overlap_tokens`` of trailing sentences repeated so an answer that straddles the cut is found from either side.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ragtune.io import JsonlSink, count_lines, dumps, iter_jsonl, require_records, write_json
from ragtune.parallel import batched, ordered_map, pool_size
from ragtune.params import ParamsError

if TYPE_CHECKING:
    from ragtune.paths import Paths

# Documents per task of the chunk stage's worker pool, and per tokenizer round trip (Chunker.chunk_documents).
CHUNK_BATCH = 1024
# The chunk stage chunks in a pool of worker processes from this many documents on: each worker loads the tokenizer
# (1-3 s), which a small corpus would not win back. Every document is chunked on its own, so the bytes are the same.
PARALLEL_MIN_DOCS = 20_000

# Section headings: Markdown (ingest renders DOCX/HTML/PDF headings this way) and Vietnamese legal structure.
_HEADING = re.compile(r"^(#{1,6}\s+\S.*|(?:Chương|CHƯƠNG|Mục|MỤC|Phần|PHẦN|Điều|ĐIỀU)\s+[\dIVXLCM]+[\.:]?(?:\s.*)?)$")
# Sentence end: . ! ? … (optionally followed by closing quotes/brackets) then whitespace and an upper-case letter,
# digit, quote or list marker. Abbreviations like "TP. HCM" are split at worst into two units, never mid-word.
_SENT_END = re.compile(r"(?<=[.!?…])[\"”’)\]]*\s+(?=[\"“(\[\-–•*0-9A-ZÀ-Ỹ])")


@dataclass
class Unit:
    """A sentence or heading line with its character span in the document text."""

    text: str
    start: int
    end: int
    heading: bool = False
    n_tokens: int = 0


@dataclass
class Section:
    heading: str
    units: list[Unit] = field(default_factory=list)


@dataclass
class Chunk:
    chunk_id: str
    doc_id: str
    title: str
    section: str
    text: str
    n_tokens: int
    char_start: int
    char_end: int

    def to_record(self) -> dict[str, Any]:
        return self.__dict__.copy()


def split_units(text: str) -> list[Section]:
    """Split a document into sections of sentence units, keeping character offsets into ``text``."""
    sections: list[Section] = [Section(heading="")]
    pos = 0
    for line in text.split("\n"):
        line_start = pos
        pos += len(line) + 1
        stripped = line.strip()
        if not stripped:
            continue
        offset = line_start + (len(line) - len(line.lstrip()))
        if _HEADING.match(stripped) and len(stripped) <= 200:
            heading = stripped.lstrip("#").strip()
            sections.append(Section(heading=heading, units=[Unit(stripped, offset, offset + len(stripped), True)]))
            continue
        cursor = 0
        for m in _SENT_END.finditer(stripped):
            piece = stripped[cursor : m.start()].strip()
            if piece:
                s = offset + stripped.index(piece, cursor)
                sections[-1].units.append(Unit(piece, s, s + len(piece)))
            cursor = m.end()
        piece = stripped[cursor:].strip()
        if piece:
            s = offset + stripped.index(piece, cursor)
            sections[-1].units.append(Unit(piece, s, s + len(piece)))
    return [s for s in sections if s.units]


class Chunker:
    """Packs sentence units into chunks of at most ``max_tokens`` tokens (prefix included).

    ``count_tokens`` is the embedder tokenizer's length function (without special tokens); ``split_tokens``
    cuts a single over-long unit (a table row, a code block) into token windows.
    """

    def __init__(
        self,
        count_tokens: Callable[[list[str]], list[int]],
        split_tokens: Callable[[str, int], list[tuple[int, int]]],
        max_tokens: int = 256,
        overlap_tokens: int = 32,
        prepend_title: bool = True,
        verify: Callable[[list[str]], list[int]] | None = None,
    ):
        if overlap_tokens >= max_tokens // 2:
            raise ParamsError(
                f"chunk.overlap_tokens ({overlap_tokens}) must be less than half of chunk.max_tokens "
                f"({max_tokens}); otherwise consecutive chunks are mostly the same text."
            )
        self._count_tokens = count_tokens
        self.split_tokens = split_tokens
        self.max_tokens = max_tokens
        self.overlap_tokens = overlap_tokens
        self.prepend_title = prepend_title
        # Token counts already measured in this batch of documents (see chunk_documents): the tokenizer is called
        # once per batch, not five times per document (50,000 calls per 10,000 documents cost 37 s of a 40 s stage).
        self._memo: dict[str, int] = {}
        # ``count_tokens`` may be a fast estimate that is exact for word-additive tokenizers (hf_token_functions);
        # ``verify`` is then the exact count, run on the texts where an error would matter (see _verify_batch).
        self.verify = verify
        self._checked_docs = 0

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Token counts, from this batch's memo where known; the rest in one tokenizer call."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._memo))
        if missing:
            self._memo.update(zip(missing, self._count_tokens(missing), strict=True))
        return [self._memo[t] for t in texts]

    def _fits(self, text: str, deferred: list[str] | None) -> bool:
        """Whether a rendered chunk fits ``max_tokens``. With ``deferred``, assume it does and note the text: the
        batch counts every noted text in one call afterwards and re-chunks, exactly, any document that was wrong."""
        if deferred is None:
            return self.count_tokens([text])[0] <= self.max_tokens
        deferred.append(text)
        return True

    def _prefix(self, title: str, section: str, continuation: bool) -> str:
        parts = []
        if self.prepend_title and title:
            parts.append(title)
        if continuation and section:
            parts.append(section)
        return "\n".join(parts)

    def chunk_document(
        self,
        doc_id: str,
        title: str,
        text: str,
        sections: list[Section] | None = None,
        deferred: list[str] | None = None,
    ) -> list[Chunk]:
        """One document's chunks. ``sections`` are :func:`split_units` of ``text`` when the caller already has them;
        ``deferred`` collects the fit checks to be verified later (:meth:`_fits`); chunk_documents uses both."""
        if title.strip().casefold() == doc_id.strip().casefold():
            # An id is not a title: prepended, it would embed every chunk as "<id>\n<text>" and train the model
            # to match identifiers. Ingest already writes "" for such titles; this guards older documents.jsonl.
            title = ""
        sections = split_units(text) if sections is None else sections
        units = [u for s in sections for u in s.units]
        for u, n in zip(units, self.count_tokens([u.text for u in units]), strict=True):
            u.n_tokens = n
        title_tokens = self.count_tokens([title])[0] + 1 if (self.prepend_title and title) else 0
        budget = self.max_tokens - title_tokens
        if budget < self.max_tokens // 2:
            # A very long title would eat the chunk; fall back to no title prefix for this document.
            title_tokens, budget = 0, self.max_tokens
        use_title = title_tokens > 0

        head_tokens = dict(
            zip([s.heading for s in sections], self.count_tokens([s.heading for s in sections]), strict=True)
        )
        # a unit must fit a chunk even as a continuation (prefix = title + section heading)
        unit_limit = max(budget // 2, budget - max(head_tokens.values(), default=0) - 2)
        # Units with their section heading, over-long units split into token windows.
        flat: list[tuple[str, Unit]] = []
        for sec in sections:
            for u in sec.units:
                if u.n_tokens <= unit_limit:
                    flat.append((sec.heading, u))
                    continue
                for a, b in self.split_tokens(u.text, unit_limit):
                    piece = u.text[a:b].strip()
                    if piece:
                        s = u.start + a
                        flat.append((sec.heading, Unit(piece, s, s + len(piece), False, self.count_tokens([piece])[0])))

        def render(parts: list[tuple[str, Unit]]) -> str:
            first_head, first_unit = parts[0]
            continuation = not first_unit.heading and bool(first_head)
            prefix = self._prefix(title if use_title else "", first_head, continuation)
            body = "\n".join(u.text for _, u in parts)
            return f"{prefix}\n{body}" if prefix else body

        def section_tokens_from(i: int) -> int:
            head = flat[i][0]
            total = 0
            for h, u in flat[i:]:
                if h != head:
                    break
                total += u.n_tokens + 1
            return total

        chunks: list[list[tuple[str, Unit]]] = []
        current: list[tuple[str, Unit]] = []
        used = 0
        fresh = 0  # units in `current` that are not overlap carried from the previous chunk

        def start_cost(head: str, unit: Unit) -> int:
            # a chunk that starts mid-section repeats the section heading in its prefix
            return head_tokens.get(head, 0) + 1 if head and not unit.heading else 0

        i = 0
        while i < len(flat):
            head, unit = flat[i]
            cost = unit.n_tokens + 1 + (start_cost(head, unit) if not current else 0)
            # At a section start, only keep packing if the whole section fits (respect section boundaries).
            whole_section_fits = used + section_tokens_from(i) <= budget
            fits = used + cost <= budget and (not unit.heading or not fresh or whole_section_fits)
            if fits:
                current.append((head, unit))
                used += cost
                fresh += 1
                i += 1
                continue
            if not fresh:
                if current:  # only overlap so far and the next unit does not fit beside it: drop the overlap
                    current, used = [], 0
                    continue
                current.append((head, unit))  # a single unit over budget even after splitting: emit alone
                fresh, i = 1, i + 1
            # The per-unit sums are estimates (tokenizers merge across joins); trim to the exact limit.
            while fresh > 1 and not self._fits(render(current), deferred):
                current.pop()
                fresh -= 1
                i -= 1
            chunks.append(current)
            # overlap: trailing sentences of the same section, up to overlap_tokens
            carry: list[tuple[str, Unit]] = []
            carry_tokens = 0
            if i < len(flat) and not flat[i][1].heading:
                for h, u in reversed(current):
                    if u.heading or h != flat[i][0] or carry_tokens + u.n_tokens + 1 > self.overlap_tokens:
                        break
                    carry.insert(0, (h, u))
                    carry_tokens += u.n_tokens + 1
            if carry:
                carry_tokens += start_cost(carry[0][0], carry[0][1])
            current, used, fresh = carry, carry_tokens, 0
        if fresh:
            while fresh > 1 and not self._fits(render(current), deferred):
                # rare: the tail over-ran on exact count; emit it in two pieces
                tail = [current.pop()]
                fresh -= 1
                chunks.append(current)
                current, fresh = tail, 1
            chunks.append(current)

        out: list[Chunk] = []
        for n, parts in enumerate(chunks):
            out.append(
                Chunk(
                    chunk_id=f"{doc_id}#{n:04d}",
                    doc_id=doc_id,
                    title=title,
                    section=parts[0][0],
                    text=render(parts),
                    n_tokens=0,
                    char_start=parts[0][1].start,
                    char_end=parts[-1][1].end,
                )
            )
        if deferred is None:
            for c, n in zip(out, self.count_tokens([c.text for c in out]), strict=True):
                c.n_tokens = n
        return out

    def chunk_documents(
        self, documents: Iterable[dict[str, Any]], batch_size: int = CHUNK_BATCH, first_index: int = 0
    ) -> Iterator[Chunk]:
        """Every document's chunks, in order, the same as :meth:`chunk_document` one by one, with the tokenizer
        called a few times per ``batch_size`` documents instead of about five times per document.

        Per batch: one call counts every unit, title and heading; each document is chunked assuming every packed
        chunk fits (the per-unit sums are estimates); one call counts the chunks; a document where a chunk that
        would have been checked does not fit is chunked again with exact checks. Memory holds one batch.
        ``first_index`` is the first document's place in the corpus (a worker chunking one batch of a larger
        stream): the verification sample (:meth:`_verify_batch`) is chosen by that place."""
        self._checked_docs = first_index
        for batch in batched(documents, batch_size):
            self._memo.clear()
            prepared = []
            for doc in batch:
                title = doc.get("title") or ""
                sections = split_units(doc["text"])
                prepared.append((doc, title, sections))
            self.count_tokens(
                list(dict.fromkeys(
                    [u.text for _, _, secs in prepared for s in secs for u in s.units]
                    + [t for _, t, _ in prepared]
                    + [s.heading for _, _, secs in prepared for s in secs]
                ))
            )  # fmt: skip
            results = []
            for doc, title, sections in prepared:
                deferred: list[str] = []
                chunks = self.chunk_document(doc["doc_id"], title, doc["text"], sections, deferred)
                results.append((doc, title, sections, chunks, deferred))
            self.count_tokens([t for *_, chunks, deferred in results for t in [*deferred, *(c.text for c in chunks)]])
            final = []
            for doc, title, sections, chunks, deferred in results:
                if any(self._memo[t] > self.max_tokens for t in deferred):
                    chunks = self.chunk_document(doc["doc_id"], title, doc["text"], sections)
                for c, n in zip(chunks, self.count_tokens([c.text for c in chunks]), strict=True):
                    c.n_tokens = n
                final.append(chunks)
            if self.verify is not None:
                self._verify_batch(prepared, final)
            for chunks in final:
                yield from chunks
        self._memo.clear()

    def _verify_batch(self, prepared: list[Any], results: list[list[Chunk]]) -> None:
        """Check the fast counts against the tokenizer on a sample: every unit and chunk of the first 256 documents,
        then of every 50th document (about 3% of the tokenizer's work). Additivity is a property of the tokenizer's
        pre-tokenizer (:func:`splits_on_whitespace`), so this is a guard against a normalizer that joins words, not
        a proof; a difference raises :class:`TokenCountMismatch` and the stage chunks again with exact counts."""
        offset = self._checked_docs
        self._checked_docs += len(prepared)
        sampled = [i for i in range(len(prepared)) if offset + i < 256 or (offset + i) % 50 == 0]
        texts = [u.text for i in sampled for s in prepared[i][2] for u in s.units]
        texts += [c.text for i in sampled for c in results[i]]
        texts = list(dict.fromkeys(texts))
        assert self.verify is not None
        for text, exact in zip(texts, self.verify(texts), strict=True):
            if self._memo[text] != exact:
                raise TokenCountMismatch(
                    f"token count of a text: {self._memo[text]} by words, {exact} by the tokenizer ({text[:80]!r})"
                )


class TokenCountMismatch(RuntimeError):
    """The word-additive token count differed from the tokenizer's: chunk again with exact counts."""


def splits_on_whitespace(tokenizer: Any) -> bool:
    """Whether a fast tokenizer's pre-tokenizer cuts at whitespace before anything else (XLM-R/e5's
    WhitespaceSplit + Metaspace, BERT's, Whitespace): its model then never sees two words at once, so a text's token
    count is the sum of its words' counts, provided the normalizer keeps words apart (checked as we go)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    pre = repr(getattr(backend, "pre_tokenizer", None))
    first = pre.removeprefix("Sequence(pretokenizers=[")
    return first.startswith(("WhitespaceSplit(", "Whitespace(", "BertPreTokenizer(")) or (
        first.startswith("Metaspace(") and "split=True" in first
    )


class WordCounts:
    """Token counts summed over whitespace-separated words, each distinct word tokenized once: a corpus of a million
    documents has a few hundred thousand distinct words, so chunking stops being bound by the tokenizer (it was 90%
    of the chunk stage). Exact for tokenizers that :func:`splits_on_whitespace`; :class:`Chunker` verifies it."""

    def __init__(self, tokenizer: Any):
        self.backend = tokenizer.backend_tokenizer
        self.words: dict[str, int] = {}

    def count(self, texts: list[str]) -> list[int]:
        split = [t.split() for t in texts]
        new = list(dict.fromkeys(w for words in split for w in words if w not in self.words))
        if new:
            counts = (len(e) for e in self.backend.encode_batch(new, add_special_tokens=False))
            self.words.update(zip(new, counts, strict=True))
        words = self.words
        return [sum(words[w] for w in ws) for ws in split]


CountFn = Callable[[list[str]], list[int]]
SplitFn = Callable[[str, int], list[tuple[int, int]]]


def hf_token_functions(tokenizer: Any, word_additive: bool = False) -> tuple[CountFn, SplitFn, CountFn]:
    """Token counting, splitting and exact counting backed by a Hugging Face fast tokenizer. With ``word_additive``
    (and a tokenizer that :func:`splits_on_whitespace`) the first is :class:`WordCounts`, checked against the third.

    Both measure whole documents and units on purpose, so inputs longer than the model's limit are normal here:
    ``verbose=False`` silences transformers' "Token indices sequence length is longer than the specified maximum
    sequence length" for these calls only (without padding or truncation it is the only message that flag
    gates), and leaves the tokenizer's own one-time warning armed for real model inputs.
    """

    def count(texts: list[str]) -> list[int]:
        if not texts:
            return []
        enc = tokenizer(texts, add_special_tokens=False, verbose=False)
        return [len(ids) for ids in enc["input_ids"]]

    def split(text: str, max_tokens: int) -> list[tuple[int, int]]:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        offsets = enc["offset_mapping"]
        spans = []
        for start in range(0, len(offsets), max_tokens):
            window = offsets[start : start + max_tokens]
            spans.append((window[0][0], window[-1][1]))
        return spans

    if word_additive and splits_on_whitespace(tokenizer):
        return WordCounts(tokenizer).count, split, count
    return count, split, count


def chunk_corpus(documents: Iterable[dict[str, Any]], chunker: Chunker) -> list[dict[str, Any]]:
    """Every document's chunk records, in a list (small corpora: out-of-domain sets, tests)."""
    return [c.to_record() for c in chunker.chunk_documents(documents)]


def check_fits(
    tokens: int,
    prompt_tokens: int,
    special_tokens: int,
    limit: int,
    limit_key: str,
    *,
    measured: str,
    truncated_by: str,
    hint: str,
) -> None:
    """Refuse chunks that ``limit`` (the value of the param ``limit_key``) would cut: a chunk's ``tokens`` plus the
    passage prompt plus the tokenizer's special tokens must fit, or the end of the chunk is dropped silently.

    Two limits are checked with it, and the message names the key to change and the value that fits:
    ``model.max_seq_length`` against ``chunk.max_tokens`` before chunking (what the embedder reads when it indexes
    and evaluates), and ``train_embedder.max_seq_length`` against the longest chunk written (training truncates
    there, and the shipped model keeps that length). The second check is on the chunks' real lengths, not on
    ``chunk.max_tokens``: chunks end at sentence boundaries, so the sample's longest is 247 tokens under
    ``max_tokens: 256`` and fits 256 with the 2-token prompt and 2 special tokens, while ``max_tokens`` + 4 would not.
    ``measured`` says what ``tokens`` is, ``truncated_by`` who cuts, ``hint`` qualifies the raise.
    """
    need = tokens + prompt_tokens + special_tokens
    if need > limit:
        raise ParamsError(
            f"{limit_key}={limit} would cut chunks: {measured} {tokens} tokens, {need} with the passage prompt "
            f"({prompt_tokens}) and {special_tokens} special tokens, and {truncated_by} truncates the rest silently. "
            f"Lower chunk.max_tokens to ≤ {limit - prompt_tokens - special_tokens} or raise {limit_key} to ≥ "
            f"{need}{hint}."
        )


def check_fits_model(max_tokens: int, model_max_seq_length: int, prompt_tokens: int, special_tokens: int) -> None:
    """Refuse a ``chunk.max_tokens`` the embedder would truncate at ``model.max_seq_length`` (checked before
    chunking: every chunk may be that long)."""
    check_fits(
        max_tokens,
        prompt_tokens,
        special_tokens,
        model_max_seq_length,
        "model.max_seq_length",
        measured="chunk.max_tokens allows",
        truncated_by="the embedder",
        hint=" (if the model supports it)",
    )


def check_fits_training(longest_chunk: int, prompt_tokens: int, special_tokens: int, max_seq_length: int) -> None:
    """Refuse chunks whose longest training would cut at ``train_embedder.max_seq_length`` (checked after chunking,
    on the real lengths)."""
    check_fits(
        longest_chunk,
        prompt_tokens,
        special_tokens,
        max_seq_length,
        "train_embedder.max_seq_length",
        measured="the longest chunk has",
        truncated_by="training (and the shipped model, which keeps this length)",
        hint=f" (to chunk.max_tokens + {prompt_tokens + special_tokens} for any corpus; at most the model's own "
        "limit, model.max_seq_length)",
    )


def passage_overhead(tokenizer: Any, model_params: dict[str, Any]) -> tuple[int, int]:
    """(passage prompt tokens, special tokens): what the embedder adds to every chunk it reads."""
    passage_prompt = model_params.get("passage_prompt") or "passage: "
    prompt_tokens = len(tokenizer(passage_prompt, add_special_tokens=False)["input_ids"])
    return prompt_tokens, tokenizer.num_special_tokens_to_add(pair=False)


def chunker_for(
    tokenizer: Any, model_params: dict[str, Any], chunk_params: dict[str, Any], word_additive: bool = False
) -> Chunker:
    """The chunker the ``chunk:`` params describe over ``tokenizer``, its size checked against the model first
    (``word_additive``: count by words where the tokenizer allows it; the chunk stage does, and falls back)."""
    max_tokens = int(chunk_params["max_tokens"])
    check_fits_model(max_tokens, int(model_params["max_seq_length"]), *passage_overhead(tokenizer, model_params))
    count, split, exact = hf_token_functions(tokenizer, word_additive)
    return Chunker(
        count,
        split,
        max_tokens=max_tokens,
        overlap_tokens=int(chunk_params["overlap_tokens"]),
        prepend_title=bool(chunk_params["prepend_title"]),
        verify=exact if count is not exact else None,
    )


def build_chunker(model_params: dict[str, Any], chunk_params: dict[str, Any]) -> Chunker:
    """The chunker the ``chunk:`` and ``model:`` params describe, its size checked against the model first.

    The chunk stage and the forgetting check (which chunks out-of-domain sets) build it here, so both cut text the
    same way.
    """
    from ragtune.models import load_tokenizer

    tokenizer = load_tokenizer(model_params["embedder"], revision=model_params.get("revision"))
    return chunker_for(tokenizer, model_params, chunk_params)


class TokenStats:
    """Chunk-length statistics kept as a histogram of token counts (bounded by the chunk size, not the corpus)."""

    def __init__(self) -> None:
        self.hist: Counter[int] = Counter()

    def add(self, n_tokens: int) -> None:
        self.hist[n_tokens] += 1

    @property
    def n(self) -> int:
        return sum(self.hist.values())

    @property
    def max(self) -> int:
        return max(self.hist, default=0)

    @property
    def mean(self) -> float:
        return sum(k * v for k, v in self.hist.items()) / self.n if self.n else 0.0

    @property
    def median(self) -> float | int:
        """As :func:`statistics.median`: the middle value, or the mean of the two middle values."""
        n = self.n
        if not n:
            return 0
        middle = [(n - 1) // 2, n // 2]
        values, seen = [], 0
        for k in sorted(self.hist):
            while len(values) < 2 and middle[len(values)] < seen + self.hist[k]:
                values.append(k)
            seen += self.hist[k]
        return values[0] if n % 2 else (values[0] + values[1]) / 2

    def over(self, limit: int) -> int:
        return sum(v for k, v in self.hist.items() if k > limit)


# The chunker of a chunk-stage worker process (set once by _init_chunk_worker; in-process, the stage's own).
_worker_chunker: Chunker | None = None


def _init_chunk_worker(
    model_params: dict[str, Any], chunk_params: dict[str, Any], word_additive: bool, chunker: Chunker | None = None
) -> None:
    """Give this process its chunker: ``chunker`` when the stage chunks in-process, else one built from the params
    (a worker: chunkers hold tokenizer closures, which do not pickle)."""
    global _worker_chunker
    if chunker is None:
        from ragtune.models import load_tokenizer

        tokenizer = load_tokenizer(model_params["embedder"], revision=model_params.get("revision"))
        chunker = chunker_for(tokenizer, model_params, chunk_params, word_additive)
    _worker_chunker = chunker


def _chunk_batch(job: tuple[int, list[dict[str, Any]]]) -> list[tuple[str, int, str]]:
    """One batch's chunks as ``(doc_id, n_tokens, JSON line)``: serialized here, in the worker, because writing
    was most of what the parent process did."""
    first_index, documents = job
    assert _worker_chunker is not None
    chunks = _worker_chunker.chunk_documents(documents, first_index=first_index)
    return [(c.doc_id, c.n_tokens, dumps(c.to_record())) for c in chunks]


def _write_chunks(
    chunker: Chunker,
    paths: Paths,
    check: Callable[[TokenStats], None],
    worker_params: tuple[dict[str, Any], dict[str, Any], bool],
) -> tuple[int, TokenStats, int]:
    """Stream documents.jsonl through ``chunker`` into chunks.jsonl; ``(documents, token statistics, most chunks of
    one document)``. The file is published only if chunking finishes and ``check`` passes (JsonlSink).

    From :data:`PARALLEL_MIN_DOCS` documents on, batches of :data:`CHUNK_BATCH` documents are chunked by a pool of
    worker processes, each with a chunker built from ``worker_params`` (model params, chunk params, word_additive)
    like ``chunker``, and written in document order: the same bytes as chunking in-process."""
    from ragtune.console import track

    stats = TokenStats()
    per_doc_max = run = 0
    last_doc = None
    n_docs = count_lines(paths.documents)
    parallel = n_docs >= PARALLEL_MIN_DOCS
    read = [0]

    def documents() -> Iterator[dict[str, Any]]:
        for _, rec in iter_jsonl(paths.documents):
            read[0] += 1
            yield rec

    jobs = ((i * CHUNK_BATCH, batch) for i, batch in enumerate(batched(documents(), CHUNK_BATCH)))
    batches = ordered_map(
        _chunk_batch,
        jobs,
        parallel=parallel,
        initializer=_init_chunk_worker,
        initargs=worker_params if parallel else (*worker_params, chunker),
    )
    n_proc = pool_size(parallel)
    label = f"Chunking ({n_proc} processes)" if n_proc > 1 else "Chunking"
    with JsonlSink(paths.chunks) as out:
        for batch in track(batches, label, total=-(-n_docs // CHUNK_BATCH)):
            for doc_id, n_tokens, line in batch:
                out.write_line(line)
                stats.add(n_tokens)
                if doc_id != last_doc:
                    run, last_doc = 0, doc_id
                run += 1
                per_doc_max = max(per_doc_max, run)
        check(stats)
    return read[0], stats, per_doc_max


def run_chunk(
    model_params: dict[str, Any], chunk_params: dict[str, Any], train_max_seq_length: int, paths: Paths
) -> dict[str, str]:
    """The chunk stage: ``documents.jsonl`` → ``chunks.jsonl`` and ``metrics/chunk.json``, streamed: memory holds
    one batch of documents whatever the corpus size.

    Refuses chunks that training would cut at ``train_embedder.max_seq_length`` (the file is then not written): the
    limit is a training param, but the chunks are what break it, and this is the first stage that knows their
    lengths.
    """
    from ragtune.console import warn
    from ragtune.models import load_tokenizer

    # before the model loads: the file is streamed, not read whole, from here on
    require_records(paths.documents, "Run the ingest stage first; it fails when it keeps no document.")
    tokenizer = load_tokenizer(model_params["embedder"], revision=model_params.get("revision"))

    def fits_training(stats: TokenStats) -> None:
        check_fits_training(stats.max, *passage_overhead(tokenizer, model_params), train_max_seq_length)

    try:
        chunker = chunker_for(tokenizer, model_params, chunk_params, word_additive=True)
        docs, stats, per_doc_max = _write_chunks(chunker, paths, fits_training, (model_params, chunk_params, True))
    except TokenCountMismatch as exc:
        warn(f"{exc}; chunking again with the tokenizer's exact counts (slower)")
        chunker = chunker_for(tokenizer, model_params, chunk_params)
        docs, stats, per_doc_max = _write_chunks(chunker, paths, fits_training, (model_params, chunk_params, False))
    write_json(
        paths.metrics("chunk"),
        {
            "documents": docs,
            "chunks": stats.n,
            "chunks_per_doc_mean": round(stats.n / max(1, docs), 3),
            "chunks_per_doc_max": per_doc_max,
            "tokens_mean": round(stats.mean, 1) if stats.n else 0,
            "tokens_median": stats.median,
            "tokens_max": stats.max,
            "over_max_tokens": stats.over(int(chunk_params["max_tokens"])),
        },
    )
    return {"read": f"{docs} documents", "wrote": f"{stats.n} chunks (median {stats.median} tokens)"}
