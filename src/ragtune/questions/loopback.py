"""A small OpenAI-compatible ``/v1/chat/completions`` server on 127.0.0.1, for tests and the overhead benchmark.

Not a mock of the client: a real socket, so the retries, timeouts and connection errors exercised are the ``openai``
client's own. It answers from a script (one action per request, in arrival order) and, after the script, from
``answer(request body) -> text``. It binds to loopback only, on a free port, and stops when its ``with`` block ends
(threads are daemons, so a crashed test cannot keep the process alive).

No stage imports it: the pipeline talks to whatever server ``questions.base_url`` names.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

USAGE = {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}  # what every answer reports


class LoopbackLLM:
    """``with LoopbackLLM(answer) as llm:`` → ``llm.base_url`` serves chat completions until the block ends.

    ``script`` entries: ``("status", 429)`` answers that HTTP status; ``("sleep", s)`` waits ``s`` seconds then
    answers; ``("content", text)`` answers ``text``. ``requests`` records every body and its lower-cased headers.
    """

    def __init__(self, answer: Callable[[dict[str, Any]], str]) -> None:
        self.answer = answer
        self.script: list[tuple[str, Any]] = []
        self.requests: list[dict[str, Any]] = []
        self.base_url = ""
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def next_action(self, body: dict[str, Any], headers: dict[str, str]) -> tuple[str, Any]:
        with self._lock:
            self.requests.append({"body": body, "headers": headers})
            return self.script.pop(0) if self.script else ("ok", None)

    def __enter__(self) -> LoopbackLLM:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _handler(llm: LoopbackLLM) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # keep test and benchmark output clean
            pass

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("retry-after-ms", "10")  # the client's backoff, kept short
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            action, value = llm.next_action(body, {k.lower(): v for k, v in self.headers.items()})
            if self.path != "/v1/chat/completions":
                return self._send(404, {"error": {"message": "not found"}})
            if action == "status":
                return self._send(value, {"error": {"message": f"scripted {value}"}})
            if action == "sleep":
                time.sleep(value)
                action = "ok"
            content = value if action == "content" else llm.answer(body)
            message = {"role": "assistant", "content": content}
            with contextlib.suppress(OSError):  # the client gave up (timeout) and closed the socket
                self._send(
                    200,
                    {
                        "id": "loopback",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body["model"],
                        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                        "usage": USAGE,
                    },
                )

    return Handler
