"""An in-process stand-in for the Hugging Face hub's HTTP API, enough for the hub client's
`model_info`, `snapshot_download` and `hf_hub_download` (repo info, tree listing, HEAD and GET of
`resolve/` URLs with byte ranges), so `slm pull` is tested with the real client and no network.
A gated repo answers 401 with the hub's `X-Error-Code: GatedRepo`; an unknown one `RepoNotFound`.
`slow` files are sent in small pieces with pauses, so a download can be interrupted."""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

SHA = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class FakeRepo:
    files: dict[str, bytes]
    gated: bool = False
    slow: set[str] = field(default_factory=set)


class FakeHub:
    def __init__(self, repos: dict[str, FakeRepo]) -> None:
        self.repos = repos
        self.requests: list[tuple[str, str, str | None]] = []  # method, path, Range header
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                hub._answer(self, head=True)

            def do_GET(self) -> None:
                hub._answer(self, head=False)

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    @staticmethod
    def from_folder(folder: Path, **kwargs: Any) -> FakeRepo:
        files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
        return FakeRepo(files, **kwargs)

    # -- the API --------------------------------------------------------------------------
    def _answer(self, req: BaseHTTPRequestHandler, *, head: bool) -> None:
        self.requests.append((req.command, req.path, req.headers.get("Range")))
        path = req.path.split("?", 1)[0]
        api = re.match(r"^/api/models/([^/]+/[^/]+)(?:/revision/[^/]+|/tree/[^/]+(?:/.*)?)?$", path)
        resolve = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
        repo_id = (api or resolve).group(1) if (api or resolve) else None
        repo = self.repos.get(repo_id or "")
        if repo is None:
            return self._error(req, 401, "RepoNotFound")
        if repo.gated and not req.headers.get("Authorization"):
            return self._error(req, 401, "GatedRepo")
        if api and "/tree/" in path:
            listing = [
                {"type": "file", "path": name, "size": len(data), "oid": _oid(data)}
                for name, data in repo.files.items()
            ]
            return self._json(req, listing)
        if api:
            siblings = [{"rfilename": name} for name in repo.files]
            return self._json(req, {"id": repo_id, "sha": SHA, "siblings": siblings})
        assert resolve is not None
        name = resolve.group(3)
        if name not in repo.files:
            return self._error(req, 404, "EntryNotFound")
        self._file(req, repo, name, head)

    def _file(self, req: BaseHTTPRequestHandler, repo: FakeRepo, name: str, head: bool) -> None:
        data = repo.files[name]
        start = 0
        wanted = req.headers.get("Range")
        if wanted and (m := re.match(r"bytes=(\d+)-", wanted)):
            start = int(m.group(1))
        req.send_response(206 if start else 200)
        req.send_header("X-Repo-Commit", SHA)
        req.send_header("ETag", f'"{_oid(data)}"')
        req.send_header("Content-Length", str(len(data) - start))
        if start:
            req.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        req.end_headers()
        if head:
            return
        body = data[start:]
        if name not in repo.slow:
            req.wfile.write(body)
            return
        step = 64 * 1024
        for at in range(0, len(body), step):
            req.wfile.write(body[at : at + step])
            req.wfile.flush()
            time.sleep(0.05)

    @staticmethod
    def _json(req: BaseHTTPRequestHandler, payload: Any) -> None:
        body = json.dumps(payload).encode()
        req.send_response(200)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        if req.command != "HEAD":
            req.wfile.write(body)

    @staticmethod
    def _error(req: BaseHTTPRequestHandler, status: int, code: str) -> None:
        body = json.dumps({"error": code}).encode()
        req.send_response(status)
        req.send_header("X-Error-Code", code)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        if req.command != "HEAD":
            req.wfile.write(body)


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client killed mid-download (the resume test) is expected, not an error."""


def _oid(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()
