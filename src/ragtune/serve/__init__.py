"""``ragtune serve``: the trained embedder, reranker and chosen pipeline behind an HTTP API applications already speak.

* :mod:`.limits`: every request limit, with its default, in one dataclass;
* :mod:`.schemas`: the request and response bodies (pydantic; unknown fields are refused);
* :mod:`.service`: loads the model folders and the index once and answers in plain Python (no HTTP);
* :mod:`.batching`: one model thread, and micro-batching of concurrent embedding requests;
* :mod:`.app`: the FastAPI application: routes, and 4xx errors that name the field at fault.

Nothing here is a DVC stage: serving reads what the pipeline wrote and writes nothing back.
"""
