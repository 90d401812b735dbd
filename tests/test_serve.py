"""`ragtune serve`: the real server on loopback, with the tiny models, answers as the library does.

A uvicorn server runs in a background thread on 127.0.0.1 (a free port), and every request goes over HTTP: the
same code path, parsing and error handling a client meets. What it answers is compared with the library called
directly: ``load_dense`` for embeddings, ``rerank.predict`` for rerank, ``Searcher.search`` for search.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import LEVELED_DOCS, LEVELED_METADATA, LEVELED_RANK, write_serving_models

from ragtune.io import write_json
from ragtune.paths import Paths
from ragtune.retrieval import load_dense
from ragtune.search import Pipeline, Searcher

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from ragtune.serve.app import create_app
from ragtune.serve.batching import ModelWorker
from ragtune.serve.limits import Limits
from ragtune.serve.service import Service

DOCS = {
    "HR-1": ("Nghỉ phép năm", "Nhân viên chính thức được nghỉ phép năm mười hai ngày có hưởng lương."),
    "IT-1": ("Mật khẩu", "Mật khẩu phải có ít nhất mười hai ký tự và được đổi mỗi chín mươi ngày."),
    "IT-2": ("VPN", "Kết nối VPN bắt buộc khi làm việc từ xa với hệ thống nội bộ của công ty."),
    "FN-1": ("Công tác phí", "Công tác phí được thanh toán trong vòng mười ngày sau khi nộp hóa đơn."),
    "HR-2": ("Làm việc từ xa", "Nhân viên được làm việc từ xa tối đa hai ngày mỗi tuần."),
}
TEXTS = ["Mật khẩu cần bao nhiêu ký tự?", "nghỉ phép năm", "Kết nối VPN khi làm việc từ xa"]
# small limits, so that the tests can cross each of them cheaply
LIMITS = Limits(max_batch=8, max_chars=200, max_top_k=10, max_body_bytes=8192)
TIMEOUT = 60  # seconds for any one HTTP request: a hung server fails the test instead of the session


# ------------------------------------------------------------------------------------------------ fixtures
def _no_proxy_opener() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback never goes through a proxy


OPENER = _no_proxy_opener()


def call(port: int, path: str, body: Any = None, *, raw: bytes | None = None) -> tuple[int, dict[str, Any]]:
    """(status, JSON body) of a GET (no body) or POST to the server; 4xx/5xx are returned, not raised."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=data, headers={"Content-Type": "application/json"}
    )
    try:
        with OPENER.open(req, timeout=TIMEOUT) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


class Running:
    """A uvicorn server for an app, in a background thread on a free loopback port."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> Running:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert self.thread.is_alive(), "the server thread died while starting"
            assert time.monotonic() < deadline, "the server did not start within 60 s"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()
        assert not self.thread.is_alive(), "the server did not stop within 30 s"


def _write_repo(root: Path, tiny_embedder_path: Path) -> Path:
    """A repo-shaped folder: models/{embedder,reranker,index,pipeline.json} and metrics/evaluate.json."""
    write_serving_models(root, tiny_embedder_path, DOCS, candidate_k=5)
    write_json(
        root / "metrics" / "evaluate.json",
        {
            "base_model": {"name": "tiny-bert"},
            "selection": {"system": "ft_hybrid+rerank"},
            "dev": {"ft_hybrid+rerank": {"ndcg@10": 0.91}},
            "test": {"ft_hybrid+rerank": {"ndcg@10": 0.87}},
        },
    )
    return root


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, tiny_embedder_path: Path) -> Path:
    return _write_repo(tmp_path_factory.mktemp("serve-repo"), tiny_embedder_path)


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[Running]:
    with Running(create_app(Service.load(Paths(repo)), LIMITS)) as running:
        yield running


@pytest.fixture(scope="module")
def embedder(repo: Path) -> Any:
    """The embedder as the pipeline loads it, without the disk cache (the served vectors are the reference)."""
    e = load_dense({}, name=str(repo / "models/embedder"))
    e.encoder.use_cache = False
    return e


# ------------------------------------------------------------------------------------------------ embeddings
def test_embeddings_equal_the_pipeline_embedder(server: Running, embedder: Any):
    status, body = call(server.port, "/v1/embeddings", {"input": TEXTS, "model": "anything"})
    assert status == 200, body
    assert body["object"] == "list" and body["model"] == "ragtune-embedder"
    assert [d["index"] for d in body["data"]] == [0, 1, 2] and {d["object"] for d in body["data"]} == {"embedding"}
    got = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
    np.testing.assert_allclose(got, embedder.encode_queries(TEXTS), atol=1e-5)  # input_type query is the default

    status, body = call(server.port, "/v1/embeddings", {"input": TEXTS, "input_type": "passage"})
    passages = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
    np.testing.assert_allclose(passages, embedder.encode_passages(TEXTS), atol=1e-5)
    assert not np.allclose(passages, got, atol=1e-3)  # the prompt differs, so the vectors do

    # one string is a list of one; usage counts the tokens the model read, prompt and special tokens included
    status, body = call(server.port, "/v1/embeddings", {"input": TEXTS[0]})
    assert status == 200 and len(body["data"]) == 1
    n = len(embedder.model.tokenizer("query: " + TEXTS[0])["input_ids"])
    assert body["usage"] == {"prompt_tokens": n, "total_tokens": n}
    np.testing.assert_allclose(body["data"][0]["embedding"], got[0], atol=1e-5)


def test_base64_is_little_endian_float32(server: Running):
    _, floats = call(server.port, "/v1/embeddings", {"input": TEXTS, "encoding_format": "float"})
    status, b64 = call(server.port, "/v1/embeddings", {"input": TEXTS, "encoding_format": "base64"})
    assert status == 200
    for f, b in zip(floats["data"], b64["data"], strict=True):
        vec = np.frombuffer(base64.b64decode(b["embedding"]), dtype="<f4")
        assert vec.shape == (32,)
        np.testing.assert_array_equal(vec, np.array(f["embedding"], dtype=np.float32))


def test_openai_client_works_unchanged(server: Running, embedder: Any):
    from openai import OpenAI

    client = OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key="x", max_retries=0, timeout=TIMEOUT)
    want = embedder.encode_queries(TEXTS)
    default = client.embeddings.create(model="ragtune-embedder", input=TEXTS)  # the client asks for base64
    as_float = client.embeddings.create(model="ragtune-embedder", input=TEXTS, encoding_format="float")
    for resp in (default, as_float):
        np.testing.assert_allclose(np.array([d.embedding for d in resp.data]), want, atol=1e-5)
        assert resp.usage.prompt_tokens == resp.usage.total_tokens > 0
    passage = client.embeddings.create(model="ragtune-embedder", input=TEXTS[0], extra_body={"input_type": "passage"})
    np.testing.assert_allclose(passage.data[0].embedding, embedder.encode_passages(TEXTS[:1])[0], atol=1e-5)
    assert [m.id for m in client.models.list().data] == ["ragtune-embedder", "ragtune-reranker"]


# ------------------------------------------------------------------------------------------------ rerank, search
def test_rerank_orders_by_the_reranker_scores(server: Running, repo: Path):
    from ragtune.precision import use_cpu_bf16
    from ragtune.rerank import load_reranker, predict

    query, documents = TEXTS[0], [f"{t}\n{b}" for t, b in DOCS.values()]
    scores = predict(
        load_reranker(repo / "models/reranker"), [(query, d) for d in documents], bf16=use_cpu_bf16("auto")
    )
    order = sorted(range(len(documents)), key=lambda i: (-scores[i], i))
    status, body = call(server.port, "/v1/rerank", {"query": query, "documents": documents})
    assert status == 200 and body["model"] == "ragtune-reranker"
    assert [r["index"] for r in body["results"]] == order
    np.testing.assert_allclose([r["relevance_score"] for r in body["results"]], [scores[i] for i in order], atol=1e-5)
    assert all("document" not in r for r in body["results"])

    status, body = call(
        server.port, "/v1/rerank", {"query": query, "documents": documents, "top_n": 2, "return_documents": True}
    )
    assert [r["index"] for r in body["results"]] == order[:2]
    assert [r["document"]["text"] for r in body["results"]] == [documents[i] for i in order[:2]]


def test_search_equals_the_searcher(server: Running, repo: Path):
    paths = Paths(repo)
    chosen = Pipeline.load(paths.pipeline)
    query = "Làm việc từ xa có cần VPN không?"
    for name in (None, "ft_dense", "bm25", "ft_dense+rerank"):
        pipeline = Pipeline.parse(name, chosen) if name else chosen
        want = Searcher.load(paths.index, pipeline, reranker_dir=paths.reranker).search(query, k=4)
        status, body = call(server.port, "/v1/search", {"query": query, "top_k": 4, "pipeline": name})
        assert status == 200, body
        assert body["pipeline"] == pipeline.name == (name or "ft_hybrid+rerank")
        assert body["results"] == json.loads(json.dumps(want))
        assert body["results"][0]["metadata"]["department"] == body["results"][0]["doc_id"].split("-")[0]


def test_health_and_models(server: Running):
    status, health = call(server.port, "/health")
    assert status == 200
    assert health == {
        "status": "ok",
        "embedder": True,
        "reranker": True,
        "index": True,
        "pipeline": "ft_hybrid+rerank",
        "access_levels": ["public", "internal", "confidential", "restricted"],
    }
    status, models = call(server.port, "/v1/models")
    assert status == 200 and models["object"] == "list"
    embedder, reranker = models["data"]
    assert (embedder["id"], embedder["dimension"], embedder["base_model"]) == ("ragtune-embedder", 32, "tiny-bert")
    assert embedder["prompts"] == {"query": "query: ", "passage": "passage: "}
    assert (reranker["id"], reranker["reranker_kind"]) == ("ragtune-reranker", "cross_encoder")
    pipeline = models["pipeline"]
    assert (pipeline["name"], pipeline["dev_ndcg@10"], pipeline["test_ndcg@10"]) == ("ft_hybrid+rerank", 0.91, 0.87)
    assert pipeline["n_chunks"] == len(DOCS)
    assert models["access"] == {
        "levels": ["public", "internal", "confidential", "restricted"],
        "unlabeled": "public",
        "default": "public",
        "documents": {"public": len(DOCS), "internal": 0, "confidential": 0, "restricted": 0},
        "unlabeled_documents": len(DOCS),
    }


# ------------------------------------------------------------------------------------------------ access levels
PIPELINE_NAMES = [r + s for r in ("ft_dense", "bm25", "ft_hybrid", "ft_convex") for s in ("", "+rerank")]
LEVELS = ["public", "internal", "confidential", "restricted"]


@pytest.fixture(scope="module")
def leveled(tmp_path_factory: pytest.TempPathFactory, tiny_embedder_path: Path) -> Iterator[tuple[Running, Path]]:
    """A server over an index whose documents carry access levels and metadata (conftest.LEVELED_DOCS)."""
    root = write_serving_models(
        tmp_path_factory.mktemp("serve-leveled"), tiny_embedder_path, LEVELED_DOCS, candidate_k=3,
        metadata=LEVELED_METADATA,
    )  # fmt: skip
    with Running(create_app(Service.load(Paths(root)), LIMITS)) as running:
        yield running, root


def test_search_never_shows_a_document_above_the_callers_level(leveled: tuple[Running, Path]):
    """Every pipeline, every level: what the library answers for that level, and nothing above it; no level is the
    lowest. The restricted documents are there for a caller who may see them (the check is not vacuous)."""
    server, root = leveled
    paths = Paths(root)
    query = "báo cáo sự cố mật khẩu bị lộ"
    for name in PIPELINE_NAMES:
        searcher = Searcher.load(paths.index, Pipeline.parse(name, Pipeline.load(paths.pipeline)), paths.reranker)
        for i, level in enumerate([None, *LEVELS]):
            rank = max(i - 1, 0)  # None: the lowest
            body = {"query": query, "top_k": 8, "pipeline": name} | ({"access_level": level.upper()} if level else {})
            status, answer = call(server.port, "/v1/search", body)
            assert status == 200, answer
            assert answer["access_level"] == LEVELS[rank]
            assert answer["results"] == json.loads(json.dumps(searcher.search(query, k=8, access_level=level)))
            docs = {r["doc_id"] for r in answer["results"]}
            assert docs == {d for d, r in LEVELED_RANK.items() if r <= rank}, (name, level)  # all allowed, no more
        assert {"SEC-1", "HR-3"} <= docs


def test_filters_within_the_level(leveled: tuple[Running, Path]):
    server, _ = leveled
    cases = [
        ({"tags": "từ xa"}, None, {"HR-2"}),
        ({"tags": "từ xa"}, "internal", {"HR-2", "IT-2"}),
        ({"department": ["HR", "sec"]}, "restricted", {"HR-1", "HR-2", "HR-3", "SEC-1"}),
        ({"department": "HR", "document_type": "Policy"}, "confidential", {"HR-1", "HR-2"}),
        ({"doc_id": ["SEC-1", "IT-1"]}, "internal", {"IT-1"}),
        ({"tags": "lương"}, "confidential", set()),
    ]
    for filters, level, expected in cases:
        status, answer = call(
            server.port, "/v1/search", {"query": "nhân viên", "top_k": 8, "access_level": level, "filters": filters}
        )
        assert status == 200, answer
        assert {r["doc_id"] for r in answer["results"]} == expected, (filters, level)


def test_a_bad_level_or_filter_is_a_422_that_lists_what_exists(leveled: tuple[Running, Path]):
    server, _ = leveled
    status, answer = call(server.port, "/v1/search", {"query": "q", "access_level": "admin"})
    assert status == 422 and answer["error"]["param"] == "access_level"
    assert "unknown access level 'admin': use one of public, internal, confidential, restricted" in str(answer)
    status, answer = call(server.port, "/v1/search", {"query": "q", "filters": {"author": "An"}})
    assert status == 422 and answer["error"]["param"] == "filters.author"
    assert "filter on one of doc_id, department, document_type, tags" in answer["error"]["message"]
    assert answer["detail"][0]["loc"] == ["body", "filters", "author"]


# ------------------------------------------------------------------------------------------------ bad requests
BAD = [
    # (path, body, status, the field the message must name)
    ("/v1/embeddings", {}, 422, "input"),
    ("/v1/embeddings", {"input": []}, 422, "input"),
    ("/v1/embeddings", {"input": ""}, 422, "input[0]"),
    ("/v1/embeddings", {"input": ["ok", "  "]}, 422, "input[1]"),
    ("/v1/embeddings", {"input": ["x"] * 9}, 422, "input"),  # max_batch 8
    ("/v1/embeddings", {"input": "a" * 201}, 422, "input[0]"),  # max_chars 200
    ("/v1/embeddings", {"input": 5}, 422, "input"),
    ("/v1/embeddings", {"input": ["a", 3]}, 422, "input[1]"),
    ("/v1/embeddings", {"input": [[1, 2, 3]]}, 422, "input[0]"),  # token ids: not supported
    ("/v1/embeddings", {"input": "a", "encoding_format": "hex"}, 422, "encoding_format"),
    ("/v1/embeddings", {"input": "a", "input_type": "document"}, 422, "input_type"),
    ("/v1/embeddings", {"input": "a", "dimensions": 16}, 422, "dimensions"),
    ("/v1/embeddings", {"input": "a", "temperature": 1}, 422, "temperature"),
    ("/v1/rerank", {"query": "q", "documents": []}, 422, "documents"),
    ("/v1/rerank", {"query": " ", "documents": ["a"]}, 422, "query"),
    ("/v1/rerank", {"query": "q"}, 422, "documents"),
    ("/v1/rerank", {"query": "q", "documents": ["a", ""]}, 422, "documents[1]"),
    ("/v1/rerank", {"query": "q", "documents": ["a"], "top_n": 0}, 422, "top_n"),
    ("/v1/rerank", {"query": "q", "documents": ["a"], "top_n": "2"}, 422, "top_n"),
    ("/v1/rerank", {"query": "q", "documents": ["a"], "return_documents": "yes"}, 422, "return_documents"),
    ("/v1/search", {"query": "q", "top_k": 11}, 422, "top_k"),  # max_top_k 10
    ("/v1/search", {"query": "q", "top_k": 0}, 422, "top_k"),
    ("/v1/search", {"query": "q", "top_k": "3"}, 422, "top_k"),
    ("/v1/search", {"query": "q", "filters": {"color": "red"}}, 422, "filters.color"),
    ("/v1/search", {"query": "q", "filters": {"tags": 3}}, 422, "filters.tags"),
    ("/v1/search", {"query": "q", "filters": {"tags": []}}, 422, "filters.tags"),
    ("/v1/search", {"query": "q", "filters": ["tags"]}, 422, "filters"),
    ("/v1/search", {"query": "q", "access_level": "secret"}, 422, "access_level"),
    ("/v1/search", {"query": "q", "access_level": 3}, 422, "access_level"),
    ("/v1/search", {"query": "q", "acces_level": "internal"}, 422, "acces_level"),  # a typo is not ignored
    ("/v1/search", {"query": "q", "pipeline": "base_dense"}, 422, "pipeline"),
    ("/v1/search", {"query": "x" * 201}, 422, "query"),
    ("/v1/search", ["q"], 422, "body"),
]


@pytest.mark.parametrize(
    ("path", "body", "status", "field"), BAD, ids=[f"{p}-{f}-{i}" for i, (p, _, _, f) in enumerate(BAD)]
)
def test_bad_requests_get_a_4xx_naming_the_field(server: Running, path: str, body: Any, status: int, field: str):
    got, answer = call(server.port, path, body)
    assert got == status, answer
    assert answer["error"]["param"].startswith(field), answer
    assert field in answer["error"]["message"] and answer["detail"], answer


def test_malformed_and_oversized_bodies(server: Running):
    status, answer = call(server.port, "/v1/embeddings", raw=b'{"input": ["a",')
    assert status == 422 and answer["error"]["message"].startswith("body[15]: JSON decode error")
    status, answer = call(server.port, "/v1/embeddings", raw=json.dumps({"input": ["a" * 150] * 60}).encode())
    assert status == 413 and "max_body_bytes" in answer["error"]["message"]
    status, answer = call(server.port, "/v1/nothing", {})
    assert status == 404 and answer["error"]["message"]
    status, _ = call(server.port, "/health")  # the server is still fine
    assert status == 200


# ------------------------------------------------------------------------------------------------ concurrency
def test_concurrent_requests_equal_sequential_answers(server: Running):
    requests = [("/v1/embeddings", {"input": [TEXTS[i % 3], f"câu số {i}"], "input_type": ("query", "passage")[i % 2]})
                for i in range(8)]  # fmt: skip
    requests += [("/v1/rerank", {"query": TEXTS[i % 3], "documents": [b for _, b in DOCS.values()]}) for i in range(4)]
    requests += [("/v1/search", {"query": TEXTS[i % 3], "top_k": 3}) for i in range(4)]
    sequential = [call(server.port, p, b) for p, b in requests]
    with ThreadPoolExecutor(len(requests)) as pool:
        concurrent = list(pool.map(lambda r: call(server.port, *r), requests))
    for (path, _), (s1, a1), (s2, a2) in zip(requests, sequential, concurrent, strict=True):
        assert s1 == s2 == 200, (a1, a2)
        if path == "/v1/embeddings":  # batched with other requests: equal up to float rounding in the padding
            np.testing.assert_allclose(
                [d["embedding"] for d in a2["data"]], [d["embedding"] for d in a1["data"]], atol=1e-5
            )
            assert a1["usage"] == a2["usage"]
        elif path == "/v1/rerank":
            assert [r["index"] for r in a1["results"]] == [r["index"] for r in a2["results"]]
        else:
            assert a1 == a2


def test_waiting_embedding_requests_share_one_model_call():
    """While the model thread is busy, requests queue; the next call takes all of them (up to max_batch texts),
    and each request gets back its own rows."""
    gate = threading.Event()
    calls: list[list[str]] = []

    def embed(texts: list[str], input_type: str) -> tuple[np.ndarray, np.ndarray]:
        calls.append(list(texts))
        gate.wait(10)
        return np.array([[float(t)] for t in texts]), np.ones(len(texts))

    async def scenario() -> list[Any]:
        worker = ModelWorker(embed, max_batch=5)
        worker.start()
        first = asyncio.ensure_future(worker.embed(["0"], "query"))
        while not calls:  # the first request is running and holds the thread
            await asyncio.sleep(0.01)
        rest = [asyncio.ensure_future(worker.embed([str(i), str(i + 10)], "query")) for i in range(1, 4)]
        await asyncio.sleep(0.05)
        gate.set()
        out = await asyncio.gather(first, *rest)
        await worker.stop()
        return out

    out = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert calls == [["0"], ["1", "11", "2", "12"], ["3", "13"]]  # 6 waiting texts > max_batch 5: never split
    assert [o[0][:, 0].tolist() for o in out] == [[0.0], [1.0, 11.0], [2.0, 12.0], [3.0, 13.0]]


# ------------------------------------------------------------------------------------------------ setups
def test_without_index_embeddings_work_and_search_says_what_to_run(tmp_path: Path, tiny_embedder_path: Path):
    shutil.copytree(tiny_embedder_path, tmp_path / "models/embedder")
    with Running(create_app(Service.load(Paths(tmp_path)), LIMITS)) as running:
        status, _ = call(running.port, "/v1/embeddings", {"input": "xin chào"})
        assert status == 200
        status, answer = call(running.port, "/v1/search", {"query": "xin chào"})
        assert status == 503 and "dvc repro index" in answer["error"]["message"]
        status, answer = call(running.port, "/v1/rerank", {"query": "q", "documents": ["a"]})
        assert status == 503 and "dvc repro train_reranker" in answer["error"]["message"]
        _, health = call(running.port, "/health")
        assert (health["index"], health["reranker"], health["pipeline"]) == (False, False, None)


def test_a_pipeline_needing_an_absent_reranker_is_refused(tmp_path: Path, repo: Path):
    shutil.copytree(repo / "models", tmp_path / "models", ignore=shutil.ignore_patterns("reranker"))
    write_json(tmp_path / "models/pipeline.json", {"system": "ft_dense", "retriever": "ft_dense"})
    with Running(create_app(Service.load(Paths(tmp_path)), LIMITS)) as running:
        status, body = call(running.port, "/v1/search", {"query": "mật khẩu", "top_k": 2})
        assert status == 200 and body["pipeline"] == "ft_dense"
        status, answer = call(running.port, "/v1/search", {"query": "mật khẩu", "pipeline": "ft_dense+rerank"})
        assert status == 422 and answer["error"]["param"] == "pipeline" and "reranker" in answer["error"]["message"]


def test_a_query_without_words_is_answered(repo: Path, server: Running):
    """'!!!' has no BM25 token: the hybrid ranks by the dense side alone, over HTTP as in the library."""
    paths = Paths(repo)
    searcher = Searcher.load(paths.index, Pipeline.load(paths.pipeline), reranker_dir=paths.reranker)
    expected = searcher.search("!!!", k=2)
    assert len(expected) == 2
    status, body = call(server.port, "/v1/search", {"query": "!!!", "top_k": 2})
    assert status == 200, body
    assert [r["chunk_id"] for r in body["results"]] == [r["chunk_id"] for r in expected]


def test_cli_refuses_a_missing_embedder_and_a_bad_limit(tmp_path: Path, capsys):
    from ragtune.cli import main

    assert main(["serve", "--root", str(tmp_path)]) == 2
    assert "dvc repro train_embedder" in capsys.readouterr().err
    assert main(["serve", "--root", str(tmp_path), "--max-batch", "0"]) == 2
    assert "max_batch" in capsys.readouterr().err


def test_ragtune_serve_command(repo: Path):
    """The installed entry point's `serve` loads models/ and answers on the port it was given."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "ragtune.cli", "serve", "--root", str(repo), "--port", str(port)]
    proc = subprocess.Popen([*cmd, "--log-level", "warning"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "ragtune serve did not answer within 120 s"
            try:
                status, health = call(port, "/health")
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.25)
        assert status == 200 and health["pipeline"] == "ft_hybrid+rerank"
        status, body = call(port, "/v1/search", {"query": "mật khẩu", "top_k": 2})
        assert status == 200 and len(body["results"]) == 2
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
