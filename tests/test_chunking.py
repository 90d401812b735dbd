import pytest

from ragtune.chunking import (
    Chunker,
    check_fits_model,
    check_fits_training,
    hf_token_functions,
    run_chunk,
    split_units,
)
from ragtune.io import read_json, read_jsonl, write_jsonl
from ragtune.paths import Paths


def word_count(texts):
    return [len(t.split()) for t in texts]


def word_split(text, n):
    words = text.split()
    spans, pos = [], 0
    starts = []
    for w in words:
        i = text.index(w, pos)
        starts.append((i, i + len(w)))
        pos = i + len(w)
    for s in range(0, len(starts), n):
        win = starts[s : s + n]
        spans.append((win[0][0], win[-1][1]))
    return spans


DOC = """Mở đầu ngắn gọn về chính sách.

## Điều kiện áp dụng
Nhân viên chính thức được áp dụng. Nhân viên thử việc không được áp dụng. Thực tập sinh xem quy định riêng.

## Số ngày nghỉ
Mỗi năm có mười hai ngày phép. Thâm niên năm năm được cộng thêm một ngày. Phép không dùng hết được chuyển sang quý một năm sau. Quá hạn thì phép bị hủy. Trường hợp đặc biệt do giám đốc quyết định.
"""


def test_split_units_finds_sections_and_offsets():
    sections = split_units(DOC)
    assert [s.heading for s in sections] == ["", "Điều kiện áp dụng", "Số ngày nghỉ"]
    for s in sections:
        for u in s.units:
            assert DOC[u.start : u.end] == u.text


def test_legal_article_headings_are_sections():
    text = "Điều 1. Phạm vi điều chỉnh\nLuật này quy định về phòng, chống ma túy.\nĐiều 2. Giải thích từ ngữ\nChất ma túy là chất gây nghiện."
    assert [s.heading for s in split_units(text)] == ["Điều 1. Phạm vi điều chỉnh", "Điều 2. Giải thích từ ngữ"]


def test_chunks_respect_budget_sections_and_overlap():
    chunker = Chunker(word_count, word_split, max_tokens=36, overlap_tokens=12, prepend_title=True)
    chunks = chunker.chunk_document("pol-1", "Nghỉ phép", DOC)
    assert len(chunks) >= 3
    assert all(c.n_tokens <= 36 for c in chunks)
    assert [c.chunk_id for c in chunks] == [f"pol-1#{i:04d}" for i in range(len(chunks))]
    assert all(c.text.startswith("Nghỉ phép") for c in chunks)
    # the long section is split between sentences, never mid-sentence, with overlap inside the section
    long = [c for c in chunks if c.section == "Số ngày nghỉ"]
    assert len(long) >= 2
    assert any(s in long[1].text for s in long[0].text.split("\n")[-1:])
    # a continuation chunk carries its section heading in the prefix
    assert "Số ngày nghỉ" in long[1].text
    # every sentence of the document is in some chunk
    for sent in ["Nhân viên thử việc không được áp dụng.", "Quá hạn thì phép bị hủy."]:
        assert any(sent in c.text for c in chunks)


def test_small_sections_pack_together():
    chunker = Chunker(word_count, word_split, max_tokens=200, overlap_tokens=16)
    chunks = chunker.chunk_document("d", "T", DOC)
    assert len(chunks) == 1


def test_oversized_sentence_is_split_into_windows():
    text = " ".join(f"từ{i}" for i in range(100))
    chunks = Chunker(word_count, word_split, max_tokens=40, overlap_tokens=0, prepend_title=False).chunk_document(
        "d", "", text
    )
    assert len(chunks) >= 3 and all(c.n_tokens <= 40 for c in chunks)


def test_deterministic_ids(tiny_embedder_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_embedder_path))
    count, split, _ = hf_token_functions(tok)
    a = Chunker(count, split, max_tokens=32, overlap_tokens=8).chunk_document("x", "Tiêu đề", DOC)
    b = Chunker(count, split, max_tokens=32, overlap_tokens=8).chunk_document("x", "Tiêu đề", DOC)
    assert [c.to_record() for c in a] == [c.to_record() for c in b]
    assert all(c.n_tokens <= 32 for c in a)


def test_size_must_fit_model():
    check_fits_model(256, 512, 3, 2)
    check_fits_model(507, 512, 3, 2)  # exactly full
    with pytest.raises(ValueError) as err:
        check_fits_model(510, 512, 3, 2)
    assert "Lower chunk.max_tokens to ≤ 507 or raise model.max_seq_length to ≥ 515" in str(err.value)
    with pytest.raises(ValueError, match="overlap"):
        Chunker(word_count, word_split, max_tokens=64, overlap_tokens=40)


def test_a_title_that_is_only_the_id_is_not_prepended():
    chunker = Chunker(word_count, word_split, max_tokens=200, overlap_tokens=16)
    for doc_id in ("1", "d_topic_3100"):
        (chunk,) = chunker.chunk_document(doc_id, doc_id.upper(), "Mỗi năm có mười hai ngày phép.")
        assert chunk.text == "Mỗi năm có mười hai ngày phép." and chunk.title == ""
    (titled,) = chunker.chunk_document("d_topic_3100", "Nghỉ phép năm", "Mỗi năm có mười hai ngày phép.")
    assert titled.text == "Nghỉ phép năm\nMỗi năm có mười hai ngày phép."


def test_token_counting_does_not_warn_about_long_documents(tiny_embedder_path, caplog):
    """Measuring a document longer than the model's limit is the chunker's job, not a mistake worth a warning."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_embedder_path))
    tok.model_max_length = 16
    count, split, _ = hf_token_functions(tok)
    long = " ".join(["nhân viên được nghỉ phép năm"] * 20)
    assert count([long])[0] > 16 and len(split(long, 16)) > 1
    assert "Token indices sequence length" not in caplog.text
    tok([long])  # a real model input still warns: only the chunker's calls are silenced
    assert "Token indices sequence length" in caplog.text


def test_chunks_must_fit_the_training_truncation():
    """chunk.max_tokens was checked against model.max_seq_length (512) only, while training truncates at
    train_embedder.max_seq_length (256): the longest chunk + prompt + special tokens must fit, and the message says
    which key to change, and to what."""
    check_fits_training(247, 2, 2, 256)  # the sample: its longest chunk under max_tokens 256, e5's "passage: "
    check_fits_training(252, 2, 2, 256)  # exactly full
    check_fits_training(0, 2, 2, 256)  # no chunks
    with pytest.raises(ValueError):
        check_fits_training(253, 2, 2, 256)  # one token over
    with pytest.raises(ValueError) as err:
        check_fits_training(398, 2, 2, 256)  # chunk.max_tokens: 400, as the issue describes
    message = str(err.value)
    assert "lower chunk.max_tokens to ≤ 252 or raise train_embedder.max_seq_length to ≥ 402" in message.lower()
    assert "longest chunk has 398 tokens" in message and "passage prompt (2) and 2 special tokens" in message


def _chunk_inputs(root, tiny_embedder_path):
    """A tmp repo with the TOPICS documents (two sections each), and the model/chunk params the tiny repo uses."""
    from conftest import TOPICS, shipped_params

    docs = [
        {"doc_id": f"D{i}", "title": title, "text": f"{body}\n\n## Chi tiết\n{body} Mục {i} áp dụng cho mọi phòng ban."}
        for i, (title, body) in enumerate(TOPICS)
    ]
    paths = Paths(root)
    write_jsonl(paths.documents, docs)
    model_p = shipped_params("model", embedder=str(tiny_embedder_path), max_seq_length=128)
    return paths, docs, model_p, shipped_params("chunk", max_tokens=48, overlap_tokens=8)


def test_run_chunk_writes_chunks_and_metrics(tmp_path, tiny_embedder_path):
    paths, docs, model_p, chunk_p = _chunk_inputs(tmp_path, tiny_embedder_path)
    summary = run_chunk(model_p, chunk_p, 128, paths)
    chunks = read_jsonl(paths.chunks)
    assert {c["doc_id"] for c in chunks} == {d["doc_id"] for d in docs}
    assert set(chunks[0]) == {"chunk_id", "doc_id", "title", "section", "text", "n_tokens", "char_start", "char_end"}
    tokens = sorted(c["n_tokens"] for c in chunks)
    assert 0 < tokens[-1] <= 48
    metrics = read_json(paths.metrics("chunk"))
    assert metrics["documents"] == len(docs) and metrics["chunks"] == len(chunks)
    assert metrics["tokens_max"] == tokens[-1] and metrics["over_max_tokens"] == 0
    assert summary == {
        "read": f"{len(docs)} documents",
        "wrote": f"{len(chunks)} chunks (median {metrics['tokens_median']} tokens)",
    }


def test_run_chunk_refuses_chunks_training_would_cut(tmp_path, tiny_embedder_path):
    """The check is on the longest chunk written (+ the tiny model's 8-token "passage: " + 2 specials), before any
    output exists; at exactly that length it passes."""
    paths, _, model_p, chunk_p = _chunk_inputs(tmp_path / "ok", tiny_embedder_path)
    run_chunk(model_p, chunk_p, 128, paths)
    need = max(c["n_tokens"] for c in read_jsonl(paths.chunks)) + 8 + 2

    paths, _, model_p, chunk_p = _chunk_inputs(tmp_path / "full", tiny_embedder_path)
    run_chunk(model_p, chunk_p, need, paths)  # exactly full: accepted

    paths, _, model_p, chunk_p = _chunk_inputs(tmp_path / "refused", tiny_embedder_path)
    with pytest.raises(ValueError) as err:
        run_chunk(model_p, chunk_p, need - 1, paths)
    assert f"Lower chunk.max_tokens to ≤ {need - 1 - 10} or raise train_embedder.max_seq_length to ≥ {need}" in str(
        err.value
    )
    assert not paths.chunks.exists() and not paths.metrics("chunk").exists()


def joins_cost_two(texts):
    """A tokenizer whose joins cost more than the chunker's estimate (a word a token, a line break two)."""
    return [len(t.split()) + 2 * t.count("\n") for t in texts]


def test_chunk_documents_equals_one_document_at_a_time_even_when_the_estimate_is_wrong():
    import random
    import statistics

    from ragtune.chunking import TokenStats

    rng = random.Random(0)
    words = [
        "nhân",
        "viên",
        "được",
        "nghỉ",
        "phép",
        "năm",
        "theo",
        "quy",
        "định",
        "của",
        "công",
        "ty",
        "và",
        "pháp",
        "luật",
        "hiện",
        "hành",
    ]
    docs = []
    for i in range(40):
        sections = []
        for s in range(rng.randint(1, 4)):
            sentences = [" ".join(rng.choices(words, k=rng.randint(3, 14))).capitalize() + "." for _ in range(6)]
            sections.append(f"## Mục {s}\n" + " ".join(sentences[: rng.randint(1, 6)]))
        docs.append({"doc_id": f"d{i}", "title": f"Quy định {i}" if i % 3 else "", "text": "\n\n".join(sections)})
    for count in (word_count, joins_cost_two):
        chunker = Chunker(count, word_split, max_tokens=24, overlap_tokens=6)
        one_by_one = [c for d in docs for c in chunker.chunk_document(d["doc_id"], d["title"], d["text"])]
        batched = list(chunker.chunk_documents(docs, batch_size=7))
        assert [c.to_record() for c in batched] == [c.to_record() for c in one_by_one]
        stats = TokenStats()
        for c in batched:
            stats.add(c.n_tokens)
        tokens = [c.n_tokens for c in one_by_one]
        assert (stats.n, stats.max, stats.median, stats.mean) == (
            len(tokens),
            max(tokens),
            statistics.median(tokens),
            statistics.fmean(tokens),
        )
    # the second tokenizer really takes the exact path: assumed fits differ from checked ones for some document
    optimistic = [
        c.to_record()
        for d in docs
        for c in Chunker(joins_cost_two, word_split, max_tokens=24, overlap_tokens=6).chunk_document(
            d["doc_id"], d["title"], d["text"], deferred=[]
        )
    ]
    assert [{**c, "n_tokens": 0} for c in optimistic] != [{**c.to_record(), "n_tokens": 0} for c in batched]


def test_word_counts_add_up_to_the_tokenizer_s_count(tiny_embedder_path):
    from transformers import AutoTokenizer

    from ragtune.chunking import WordCounts, splits_on_whitespace

    tok = AutoTokenizer.from_pretrained(str(tiny_embedder_path))
    _, _, exact = hf_token_functions(tok)
    texts = [u.text for s in split_units(DOC) for u in s.units] + [DOC, "Điều 5.\nKhoản 2,  điểm a) 15%;   x", ""]
    assert splits_on_whitespace(tok)
    assert WordCounts(tok).count(texts) == exact(texts)


def test_run_chunk_falls_back_to_exact_counts_when_words_do_not_add_up(tmp_path, tiny_embedder_path, monkeypatch):
    """The word-additive fast path is checked against the tokenizer; a tokenizer where it is wrong (simulated: one
    token too many per text) makes the stage chunk again exactly, with the output of the exact path."""
    from ragtune import chunking

    paths, _, model_p, chunk_p = _chunk_inputs(tmp_path / "fast", tiny_embedder_path)
    run_chunk(model_p, chunk_p, 128, paths)
    fast = paths.chunks.read_bytes()
    monkeypatch.setattr(chunking, "splits_on_whitespace", lambda tok: False)
    paths, _, model_p, chunk_p = _chunk_inputs(tmp_path / "exact", tiny_embedder_path)
    run_chunk(model_p, chunk_p, 128, paths)
    assert paths.chunks.read_bytes() == fast  # the fast path changes nothing on a word-additive tokenizer

    monkeypatch.undo()
    wrong = chunking.WordCounts.count
    monkeypatch.setattr(chunking.WordCounts, "count", lambda self, texts: [n + 1 for n in wrong(self, texts)])
    paths, _, model_p, chunk_p = _chunk_inputs(tmp_path / "wrong", tiny_embedder_path)
    warnings = []
    monkeypatch.setattr("ragtune.console.warn", warnings.append)
    run_chunk(model_p, chunk_p, 128, paths)
    assert paths.chunks.read_bytes() == fast
    assert len(warnings) == 1 and "chunking again with the tokenizer's exact counts" in warnings[0]


def test_run_chunk_in_a_worker_pool_writes_the_bytes_of_one_process(tmp_path, tiny_embedder_path, monkeypatch):
    """From PARALLEL_MIN_DOCS documents on, batches of documents go to worker processes, each with its own chunker;
    the chunks file and metrics are the same bytes as chunking in-process, with batches cut mid-corpus."""
    from ragtune import chunking

    def run(name: str, workers: int, batch: int) -> tuple[bytes, bytes]:
        monkeypatch.setenv("RAGTUNE_WORKERS", str(workers))
        monkeypatch.setattr(chunking, "CHUNK_BATCH", batch)
        paths, docs, model_p, chunk_p = _chunk_inputs(tmp_path / name, tiny_embedder_path)
        copies = [{**d, "doc_id": f"{d['doc_id']}-{k}"} for k in range(3) for d in docs]
        write_jsonl(paths.documents, copies)  # 3 × the topics: several batches of 2
        run_chunk(model_p, chunk_p, 128, paths)
        return paths.chunks.read_bytes(), paths.metrics("chunk").read_bytes()

    one = run("one", 1, 1024)
    used = []
    real = chunking.ordered_map
    monkeypatch.setattr(chunking, "ordered_map", lambda *a, **k: used.append(k["parallel"]) or real(*a, **k))
    monkeypatch.setattr(chunking, "PARALLEL_MIN_DOCS", 1)
    assert run("pool", 2, 2) == one
    assert used == [True] and one[0].count(b"\n") > 6
