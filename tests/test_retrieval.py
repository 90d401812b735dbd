import numpy as np
import pytest

from ragtune.retrieval import BM25Index, DenseEncoder, bm25_tokenize, model_prompt, rrf, to_doc_ranking, top_k

TEXTS = [
    "Nhân viên được nghỉ phép năm 12 ngày, đăng ký trên LamHR.",
    "Quy trình đăng ký khóa đào tạo trên LamAcademy cần quản lý phê duyệt.",
    "Người nghiện ma túy bị đưa vào cơ sở cai nghiện bắt buộc.",
    "Hướng dẫn kết nối HL-VPN trên Windows.",
]


def test_pyvi_segments_words_and_lowercases():
    toks = bm25_tokenize("Người nghiện Ma Túy", "pyvi")
    assert toks == [t.lower() for t in toks]
    assert any("_" in t for t in bm25_tokenize("Người nghiện ma túy bị xử lý hành chính", "pyvi"))
    assert bm25_tokenize("ma túy", "syllable") == ["ma", "túy"]


def test_bm25_backends_agree_on_top_result():
    ids = [f"c{i}" for i in range(len(TEXTS))]
    for backend in ("bm25s", "rank_bm25"):
        idx = BM25Index(ids, backend=backend).fit(TEXTS)
        ranking = idx.search({"q": "cai nghiện ma túy"}, k=2)
        assert ranking["q"][0][0] == "c2", backend


@pytest.mark.parametrize("backend", ["bm25s", "rank_bm25"])
def test_bm25_query_without_tokens_scores_zero(backend):
    """bm25s raises IndexError on an empty token list; a query of punctuation must rank nothing, not fail."""
    texts = ["luật đất đai", "hôn nhân gia đình", "thuế thu nhập", "bảo hiểm xã hội"]
    index = BM25Index(["a", "b", "c", "d"], backend=backend).fit(texts)
    assert index.scores("!!! ???").tolist() == [0.0] * 4
    assert index.scores("hôn nhân")[1] > 0


def test_top_k_breaks_ties_by_id():
    ids = ["b", "a", "c"]
    assert [i for i, _ in top_k(ids, np.array([1.0, 1.0, 0.5]), 2)] == ["a", "b"]


def test_rrf_and_doc_aggregation():
    r1 = {"q": [("x#0", 9.0), ("y#0", 5.0)]}
    r2 = {"q": [("y#0", 0.9), ("x#1", 0.8)]}
    fused = rrf([r1, r2], k=60)
    assert fused["q"][0][0] == "y#0"  # ranked 2nd and 1st beats 1st and absent
    docs = to_doc_ranking({"q": [("x#1", 3.0), ("y#0", 2.0), ("x#0", 1.0)]}, {"x#0": "x", "x#1": "x", "y#0": "y"})
    assert docs["q"] == [("x", 3.0), ("y", 2.0)]


def test_dense_encoder_caches_by_text(tiny_embedder_path):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_embedder_path), device="cpu")
    assert model_prompt(model, "query") == "query: "
    assert model_prompt(model, "passage") == "passage: "
    assert model_prompt(model, "query", override="") == ""
    calls = []
    enc = DenseEncoder(model, fingerprint="tiny")
    original = enc._encode_raw

    def counting(texts, prompt, description):
        calls.append(len(texts))
        return original(texts, prompt, description)

    enc._encode_raw = counting
    a = enc.encode(TEXTS[:2], "passage: ")
    b = enc.encode(TEXTS[:3], "passage: ")
    assert calls == [2, 1]
    np.testing.assert_allclose(a, b[:2], atol=1e-6)
    assert np.allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)


def test_dense_encoder_never_serves_vectors_made_at_another_truncation(tiny_embedder_path):
    """A chunk cut at 8 tokens is another vector than the whole chunk: the same model loaded at another
    max_seq_length must encode it again, not read the cached one."""
    from sentence_transformers import SentenceTransformer

    long = [TEXTS[0] * 4]
    model = SentenceTransformer(str(tiny_embedder_path), device="cpu")
    model.max_seq_length = 8
    short = DenseEncoder(model, fingerprint="tiny").encode(long, "passage: ")
    model.max_seq_length = 128
    whole = DenseEncoder(model, fingerprint="tiny").encode(long, "passage: ")
    fresh = DenseEncoder(model, fingerprint="tiny", use_cache=False).encode(long, "passage: ")
    assert np.array_equal(whole, fresh) and not np.allclose(short, whole, atol=1e-3)
    model.max_seq_length = 8
    assert np.array_equal(DenseEncoder(model, fingerprint="tiny").encode(long, "passage: "), short)  # its own, cached


def test_bigram_tokens_are_syllables_and_adjacent_pairs_within_a_phrase():
    assert bm25_tokenize("Chất ma túy, tiền chất.", "bigram") == [
        "chất",
        "ma",
        "túy",
        "chất_ma",
        "ma_túy",
        "tiền",
        "chất",
        "tiền_chất",
    ]
    # single digits are dropped as in every tokenizer; no pair spans a line break or punctuation
    assert bm25_tokenize("Điều 15\nkhoản 2, điểm a", "bigram") == [
        "điều",
        "15",
        "điều_15",
        "khoản",
        "điểm",
        "a",
        "điểm_a",
    ]


def test_auto_tokenizer_resolves_on_corpus_size_and_unknown_names_are_refused():
    from ragtune.retrieval import AUTO_PYVI_MAX_TEXTS, build_bm25, resolve_tokenizer

    assert resolve_tokenizer("auto", AUTO_PYVI_MAX_TEXTS) == "pyvi"
    assert resolve_tokenizer("auto", AUTO_PYVI_MAX_TEXTS + 1) == "syllable"
    assert resolve_tokenizer("bigram", 10) == "bigram"
    with pytest.raises(ValueError, match=r"bm25\.tokenizer"):
        resolve_tokenizer("jieba", 10)
    chunks = [{"chunk_id": f"c{i}", "text": f"Người lao động được nghỉ {i} ngày"} for i in range(3)]
    assert build_bm25(chunks, {"tokenizer": "auto"}).tokenizer == "pyvi"
    assert (
        BM25Index([c["chunk_id"] for c in chunks], tokenizer="auto").fit([c["text"] for c in chunks]).tokenizer
        == "pyvi"
    )


def test_parallel_tokenizing_equals_serial(monkeypatch):
    import ragtune.retrieval as R

    texts = [f"Người lao động được nghỉ phép năm {i} ngày; Chất ma túy số {i}." for i in range(300)]
    serial = [bm25_tokenize(t, "pyvi") for t in texts]
    monkeypatch.setattr(R, "PARALLEL_MIN_TEXTS", 10)
    monkeypatch.setattr(R, "PARALLEL_BATCH", 7)  # 43 batches: out-of-order results would show
    monkeypatch.setenv("RAGTUNE_WORKERS", "2")
    assert R.bm25_tokenize_many(texts, "pyvi") == serial
    monkeypatch.setenv("RAGTUNE_WORKERS", "1")
    assert R.bm25_tokenize_many(texts, "pyvi") == serial
    # a stream (a generator, as a file is read) with its length given: the same batches, in order
    monkeypatch.setenv("RAGTUNE_WORKERS", "2")
    streamed = R.iter_token_batches((t for t in texts), "pyvi", n_texts=len(texts))
    assert [tokens for batch in streamed for tokens in batch] == serial


@pytest.mark.parametrize("backend", ["bm25s", "rank_bm25"])
def test_bm25_row_scorer_scores_kept_texts_as_the_full_index_does(backend):
    from ragtune.bm25_matrix import TermCounts
    from ragtune.retrieval import bm25_row_scorer, build_bm25, iter_token_batches

    words = ["lao động", "nghỉ phép", "ma túy", "hợp đồng", "tiền lương", "bảo hiểm", "kỷ luật", "thời giờ"]
    texts = [" ".join(words[(i * k) % len(words)] for k in range(1, 2 + i % 5)) + f" điều {i}" for i in range(60)]
    params = {"tokenizer": "syllable", "backend": backend, "k1": 1.2, "b": 0.7}
    full = build_bm25([{"chunk_id": f"c{i}", "text": t} for i, t in enumerate(texts)], params)
    keep = [41, 2, 17, 59]
    scorer = bm25_row_scorer((t for t in texts), len(texts), keep, params)
    scorers = [scorer]
    if backend == "bm25s":  # the same from the bm25 stage's term counts (the texts are then not read)
        counts = TermCounts.count(iter_token_batches(texts, "syllable"))
        scorers.append(bm25_row_scorer(iter(()), len(texts), keep, params, counts))
    for query in ["nghỉ phép và tiền lương", "ma túy ma túy điều 17", "không liên quan", "!!!"]:
        for s in scorers:
            assert s(query, range(len(keep))).tobytes() == full.scores(query)[sorted(keep)].tobytes()
            assert s(query, [3, 1]).tobytes() == full.scores(query)[[59, 17]].tobytes()  # rows asked for, in order


KILL_SCRIPT = """
import sys, time
from sentence_transformers import SentenceTransformer
from ragtune.retrieval import DenseEncoder

model = SentenceTransformer(sys.argv[1], device="cpu")
encode = model.encode
def slow(*args, **kwargs):
    time.sleep(0.2)
    return encode(*args, **kwargs)
model.encode = slow
enc = DenseEncoder(model, fingerprint="tiny", batch_size=2)
enc.shard_size = 16
enc.encode([f"văn bản số {i}" for i in range(200)], "passage: ")
"""


def test_an_encode_killed_midway_resumes_at_the_first_unfinished_shard(tmp_path, tiny_embedder_path):
    """A real SIGKILL of a process encoding in shards: the rerun encodes only what no finished shard holds, and
    gives the vectors an uninterrupted encode gives."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from sentence_transformers import SentenceTransformer

    texts = [f"văn bản số {i}" for i in range(200)]
    cache = tmp_path / "ragtune-cache"
    child = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(tiny_embedder_path)], env={**os.environ, "RAGTUNE_CACHE": str(cache)}
    )
    deadline = time.monotonic() + 120
    while len(list(cache.rglob("*.keys.npy"))) < 3 and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    done = len(list(cache.rglob("*.keys.npy")))
    assert 3 <= done < 200 // 16  # killed midway, after some shards

    model = SentenceTransformer(str(tiny_embedder_path), device="cpu")
    encoded: list[int] = []
    encode = model.encode
    model.encode = lambda texts, *a, **kw: encoded.append(len(texts)) or encode(texts, *a, **kw)
    enc = DenseEncoder(model, fingerprint="tiny", batch_size=2)
    enc.shard_size = 16
    resumed = enc.encode(texts, "passage: ")
    assert sum(encoded) == len(texts) - 16 * done
    fresh = DenseEncoder(SentenceTransformer(str(tiny_embedder_path), device="cpu"), "tiny", 2, use_cache=False)
    assert np.allclose(resumed, fresh.encode(texts, "passage: "), atol=1e-6)


def test_a_process_per_local_device_encodes_the_same_vectors_as_one_process(tiny_embedder_path, tmp_path, monkeypatch):
    """model.devices [cpu, cpu]: sentence-transformers' pool, one process each, each task a whole encode block: the
    same bytes as this process alone (the GPU path, [cuda:0, cuda:1], is the same code), and the cache gets every
    shard."""
    from sentence_transformers import SentenceTransformer

    monkeypatch.setenv("RAGTUNE_CACHE", str(tmp_path / "cache"))
    model = SentenceTransformer(str(tiny_embedder_path), device="cpu")
    texts = [f"điều {i}: người lao động nghỉ phép " + "năm " * (i % 13) for i in range(150)]
    local = DenseEncoder(model, "tiny", batch_size=4, use_cache=False).encode(texts, "passage: ")
    pooled = DenseEncoder(model, "tiny", batch_size=4, devices=["cpu", "cpu"])
    pooled.shard_size = 4 * 8 * 2  # several shards, each several blocks
    started = []
    real = type(model).start_multi_process_pool  # spied on the class: the model itself is pickled to the workers
    monkeypatch.setattr(
        type(model), "start_multi_process_pool", lambda self, devices: started.append(devices) or real(self, devices)
    )

    got = pooled.encode(texts, "passage: ")

    assert started == [["cpu", "cpu"]]  # one pool for the whole encode, not one per shard
    assert got.dtype == np.float32 and got.tobytes() == local.tobytes()
    assert len(list((tmp_path / "cache" / "embeddings").rglob("*.keys.npy"))) == -(-150 // 64)


def test_encode_devices_auto_takes_every_gpu_from_two_on():
    from ragtune.retrieval import encode_devices

    assert encode_devices("auto", gpus=0) == [] and encode_devices(None, gpus=1) == []  # this process
    assert encode_devices("auto", gpus=3) == ["cuda:0", "cuda:1", "cuda:2"]
    assert encode_devices(["cpu", "cpu"]) == ["cpu", "cpu"]
    assert DenseEncoder(None, "x", devices=["cuda:0"]).devices == []  # one device: no pool
    with pytest.raises(ValueError, match=r"model\.devices"):
        encode_devices("cuda")


@pytest.mark.parametrize(("devices", "loaded_on"), [(["cpu"], "cpu"), ("auto", None), (["cpu", "cpu"], None)])
def test_one_named_device_is_where_this_process_loads_the_model(tiny_embedder_path, monkeypatch, devices, loaded_on):
    """model.devices: [cuda:1] alone encodes on that GPU in this process (it was ignored: the model stayed on the
    default device); two or more devices leave the model here and start a process per device."""
    from ragtune import models
    from ragtune.retrieval import load_dense

    real, seen = models.load_embedder, []

    def spy(path, **kwargs):
        seen.append(kwargs.get("device"))
        return real(path, **kwargs)

    monkeypatch.setattr(models, "load_embedder", spy)
    params = {"embedder": str(tiny_embedder_path), "max_seq_length": 64, "batch_size": 4, "devices": devices}
    emb = load_dense(params)
    assert seen == [loaded_on] and emb.encoder.devices == (devices if len(devices) > 1 and devices != "auto" else [])
