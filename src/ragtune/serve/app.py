"""The FastAPI application: routes over a loaded :class:`~.service.Service`, and errors a client can act on.

Every client mistake is a 4xx whose body names the field: schema problems (missing or unknown fields, wrong types)
come from pydantic, limits from :class:`~.limits.Limits`, and both are answered in one shape that FastAPI clients
(``detail``: a list of ``loc``/``msg``) and OpenAI clients (``error.message``/``error.param``) both read::

    {"detail": [{"loc": ["body", "input", 2], "msg": "must not be empty", "type": "value_error"}],
     "error": {"message": "input[2]: must not be empty", "type": "invalid_request_error", "param": "input[2]",
               "code": null}}

A body over ``max_body_bytes`` is refused with 413 before it is read; a request for something the server was started
without (no index, no reranker) is a 503 that says what builds it. A 500 means a bug in ragtune.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ragtune.access import AccessError, FilterError
from ragtune.serve.batching import ModelWorker
from ragtune.serve.limits import Limits
from ragtune.serve.schemas import (
    EmbeddingRequest,
    EmbeddingResponse,
    RerankRequest,
    RerankResponse,
    SearchRequest,
    SearchResponse,
)
from ragtune.serve.service import EMBEDDER_ID, RERANKER_ID, Refused, Service, Unavailable


# ------------------------------------------------------------------------------------------------------ errors
def _field(loc: Sequence[Any]) -> str:
    """``("body", "input", 3)`` → ``input[3]``: the field as the client wrote it (``body`` for the body as a whole)."""
    parts = list(loc[1:] if loc and loc[0] == "body" else loc)
    if not parts or not isinstance(parts[0], str):  # the body itself; an int is a JSON decode error's position
        parts = ["body", *parts]
    out = parts[0]
    for p in parts[1:]:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


def _error_body(status: int, message: str, param: str | None, detail: Any) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_unavailable"
    return JSONResponse(
        status_code=status,
        content={"detail": detail, "error": {"message": message, "type": kind, "param": param, "code": None}},
    )


def invalid(*problems: tuple[tuple[str | int, ...], str]) -> RequestValidationError:
    """A 422 in pydantic's shape for problems found after parsing: ``((field, index...), message)``."""
    return RequestValidationError([{"type": "value_error", "loc": ("body", *loc), "msg": msg} for loc, msg in problems])


def _check_text(field: str, text: str, limits: Limits) -> None:
    if not text.strip():
        raise invalid(((field,), "must not be empty"))
    if len(text) > limits.max_chars:
        raise invalid(((field,), f"has {len(text)} characters, more than the limit of {limits.max_chars} (max_chars)"))


def _check_texts(field: str, texts: list[str], limits: Limits) -> None:
    if not texts:
        raise invalid(((field,), "must not be empty"))
    if len(texts) > limits.max_batch:
        raise invalid(((field,), f"has {len(texts)} items, more than the limit of {limits.max_batch} (max_batch)"))
    problems = [((field, i), "must not be empty") for i, t in enumerate(texts) if not t.strip()]
    problems += [
        ((field, i), f"has {len(t)} characters, more than the limit of {limits.max_chars} (max_chars)")
        for i, t in enumerate(texts)
        if len(t) > limits.max_chars
    ]
    if problems:
        raise invalid(*problems)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        message = "; ".join(f"{_field(e['loc'])}: {e['msg']}" for e in errors)
        return _error_body(422, message, _field(errors[0]["loc"]) if errors else None, errors)

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        return _error_body(exc.status_code, str(exc.detail), None, exc.detail)

    @app.exception_handler(Refused)
    async def _refused(_: Request, exc: Refused) -> JSONResponse:
        detail = [{"loc": ["body", exc.param], "msg": str(exc), "type": "value_error"}]
        return _error_body(422, f"{exc.param}: {exc}", exc.param, detail)

    @app.exception_handler(Unavailable)
    async def _unavailable(_: Request, exc: Unavailable) -> JSONResponse:
        return _error_body(503, str(exc), None, str(exc))


# ------------------------------------------------------------------------------------------------------ app
def create_app(service: Service, limits: Limits | None = None) -> FastAPI:
    """The application serving ``service`` within ``limits``; its model thread starts and stops with the app."""
    limits = limits or Limits()
    description = service.describe()  # the models do not change while the server runs

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.worker = ModelWorker(service.embed_with_usage, limits.max_batch)
        app.state.worker.start()
        yield
        await app.state.worker.stop()

    app = FastAPI(
        title="ragtune serve",
        description="The fine-tuned embedder, reranker and the pipeline chosen on dev.",
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.limits = limits
    _install_error_handlers(app)

    def worker() -> ModelWorker:
        return app.state.worker

    @app.middleware("http")
    async def _body_limit(request: Request, call_next: Any) -> Any:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limits.max_body_bytes):
            return _error_body(
                413, f"request body over the limit of {limits.max_body_bytes} bytes (max_body_bytes)", None, None
            )
        return await call_next(request)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        pipeline = service.pipeline
        return {
            "status": "ok",
            "embedder": True,
            "reranker": service.reranker is not None,
            "index": service.searcher is not None,
            "pipeline": pipeline.name if pipeline else None,
            "access_levels": list(service.searcher.access.levels) if service.searcher else None,
        }

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        """OpenAI's model list, each model with what ragtune knows of it, the served pipeline's figures, and the
        index's access scale."""
        data = [{"object": "model", "created": 0, "owned_by": "ragtune", **m} for m in description["models"]]
        return {"object": "list", "data": data, "pipeline": description["pipeline"], "access": description["access"]}

    @app.post("/v1/embeddings", response_model=EmbeddingResponse)
    async def embeddings(req: EmbeddingRequest) -> dict[str, Any]:
        """OpenAI-compatible embeddings; ``input_type`` (``query`` by default, or ``passage``) picks the prompt."""
        _check_texts("input", req.input, limits)
        if req.dimensions is not None and req.dimensions != service.dimension:
            raise invalid(
                (("dimensions",), f"this embedder returns {service.dimension}-dimensional vectors only: omit the field")
            )
        vectors, tokens = await worker().embed(req.input, req.input_type)
        data = [
            {"object": "embedding", "index": i, "embedding": _encode(v, req.encoding_format)}
            for i, v in enumerate(vectors)
        ]
        n = int(tokens.sum())
        return {"object": "list", "data": data, "model": EMBEDDER_ID, "usage": {"prompt_tokens": n, "total_tokens": n}}

    @app.post("/v1/rerank", response_model=RerankResponse, response_model_exclude_none=True)
    async def rerank(req: RerankRequest) -> dict[str, Any]:
        """Cohere/Jina/TEI-style rerank: results sorted by the reranker's score (ties keep document order)."""
        _check_text("query", req.query, limits)
        _check_texts("documents", req.documents, limits)
        scores = await worker().run(service.rerank, req.query, req.documents)
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[: req.top_n]
        results = [
            {"index": i, "relevance_score": scores[i]}
            | ({"document": {"text": req.documents[i]}} if req.return_documents else {})
            for i in order
        ]
        return {"results": results, "model": RERANKER_ID}

    @app.post("/v1/search", response_model=SearchResponse)
    async def search(req: SearchRequest) -> dict[str, Any]:
        """The pipeline chosen on dev (or ``pipeline``) over the chunks at ``access_level`` or below (the lowest
        level when absent), narrowed by ``filters``: what ``ragtune search --json`` returns."""
        _check_text("query", req.query, limits)
        if req.top_k > limits.max_top_k:
            raise invalid((("top_k",), f"is {req.top_k}, more than the limit of {limits.max_top_k} (max_top_k)"))
        try:  # checked here, so a bad request is refused without waiting for the model thread
            level = service.check_search(req.access_level, req.filters)
        except AccessError as exc:
            raise invalid((("access_level",), str(exc))) from None
        except FilterError as exc:
            raise invalid((("filters", exc.field) if exc.field else ("filters",), exc.reason)) from None
        name, results = await worker().run(
            service.search, req.query, req.top_k, req.pipeline, req.access_level, req.filters
        )
        return {"pipeline": name, "access_level": level, "results": results}

    return app


def _encode(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    """Floats, or OpenAI's base64: the little-endian float32 bytes of the vector."""
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector.astype(np.float32).tolist()
