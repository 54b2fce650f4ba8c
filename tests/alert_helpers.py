"""A webhook receiver on a free loopback port that records every POST (headers and JSON body) and
answers the statuses it is told to, in order (then 200): a stand-in for an operator's alert hook.
Plus a two-question eval set the embedded model answers right (or, with wrong references, not)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class WebhookReceiver:
    """`with WebhookReceiver(statuses=[500]) as hook: ... hook.wait_for(lambda p: ...)`."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.posts: list[tuple[dict[str, str], dict[str, Any], int]] = []  # headers, body, answer
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver._lock:
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                    receiver.posts.append((dict(self.headers), body, status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def bodies(self, delivered_only: bool = True) -> list[dict[str, Any]]:
        with self._lock:
            return [b for _, b, status in self.posts if status == 200 or not delivered_only]

    def wait_for(
        self, match: Callable[[dict[str, Any]], bool], timeout_s: float = 30.0
    ) -> dict[str, Any]:
        """The first delivered body that `match`es, waiting for it up to `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = [b for b in self.bodies() if match(b)]
            if found:
                return found[0]
            time.sleep(0.1)
        raise AssertionError(f"no matching webhook POST in {timeout_s} s; got {self.bodies(False)}")


GOOD = [
    ("What is the capital of France?", "The capital of France is Paris.", "Paris"),
    ("What is the capital of Japan?", "The capital of Japan is Tokyo.", "Tokyo"),
]
WRONG = {"Paris": "Lyon", "Tokyo": "Osaka"}


def write_set(path: Path, wrong: bool = False) -> None:
    rows = []
    for prompt, reference, fact in GOOD:
        expected = WRONG[fact] if wrong else fact
        rows.append(
            {
                "prompt": prompt,
                "reference": reference.replace(fact, expected),
                "must_include": [expected],
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
