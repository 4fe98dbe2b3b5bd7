"""A stand-in for the Hugging Face Hub on 127.0.0.1, for `--model ORG/NAME` tests (HF_ENDPOINT).

It answers the calls huggingface_hub's `snapshot_download` makes, in the Hub's shapes: the
repository info (`/api/models/{repo}/revision/{rev}`), its file tree
(`/api/models/{repo}/tree/{rev}`), and the files (`HEAD`/`GET /{repo}/resolve/{rev}/{file}`, with
`Range`), plus the Hub's error headers (`X-Error-Code: RepoNotFound | GatedRepo |
RevisionNotFound`). Every request is recorded. `drop_once` makes the next GET of a file send its
headers and part of its bytes (`drop_at`, half by default), then close the connection; `refuse_gets` answers a file's GETs with
500 (a hub that stays broken). It runs on a thread of the test process.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


@dataclass
class Repo:
    files: dict[str, bytes]
    revisions: dict[str, str]  # branch or tag -> commit sha (40 hex)
    private_token: str | None = None  # a private repo: only this bearer token sees it
    gated: bool = False

    @classmethod
    def from_dir(cls, path: Path, extra: dict[str, bytes] | None = None, **kwargs) -> Repo:
        files = {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()}
        files.update(extra or {})
        return cls(files=files, **kwargs)


@dataclass
class Seen:
    method: str
    path: str
    range: str | None
    authorization: str | None


@dataclass
class StandInHub:
    repos: dict[str, Repo]
    drop_once: set[str] = field(default_factory=set)  # file names
    drop_at: float = 0.5  # the fraction of the file sent before the connection drops
    refuse_gets: set[str] = field(default_factory=set)
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def file_gets(self) -> list[Seen]:
        return [s for s in self.seen if s.method == "GET" and "/resolve/" in s.path]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: StandInHub

    def log_message(self, format, *args):  # noqa: A002 - quiet
        pass

    def do_HEAD(self):
        self._answer(head=True)

    def do_GET(self):
        self._answer(head=False)

    # ---- routing ---------------------------------------------------------------------------

    def _answer(self, head: bool) -> None:
        path = unquote(urlparse(self.path).path)
        self.hub.seen.append(Seen(self.command, path, self.headers.get("Range"), self.headers.get("Authorization")))
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(revision|tree)/([^/]+)(/.*)?", path)
        if m:
            repo_id, kind, rev = m.group(1), m.group(2), m.group(3)
            repo, commit = self._repo(repo_id, rev)
            if repo is None:
                return
            if kind == "revision":
                siblings = [{"rfilename": name} for name in repo.files]
                body = {
                    "id": repo_id,
                    "modelId": repo_id,
                    "sha": commit,
                    "private": bool(repo.private_token),
                    "siblings": siblings,
                }
            else:
                body = [_tree_entry(name, data) for name, data in repo.files.items()]
            return self._json(200, body)
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if m:
            repo, commit = self._repo(m.group(1), m.group(2))
            if repo is None:
                return
            name = m.group(3)
            if name not in repo.files:
                return self._error(404, "EntryNotFound", f"{name} does not exist")
            return self._file(repo.files[name], commit, name, head)
        return self._error(404, None, "not found")

    def _repo(self, repo_id: str, rev: str) -> tuple[Repo | None, str]:
        repo = self.hub.repos.get(repo_id)
        auth = self.headers.get("Authorization")
        if repo is None or (repo.private_token and auth != f"Bearer {repo.private_token}"):
            self._error(401, "RepoNotFound", "Repository not found")
            return None, ""
        if repo.gated and auth is None:
            self._error(401, "GatedRepo", "Access to this model is restricted: you must be authenticated")
            return None, ""
        commit = repo.revisions.get(rev) or (rev if rev in repo.revisions.values() else None)
        if commit is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            return None, ""
        return repo, commit

    # ---- answers ---------------------------------------------------------------------------

    def _file(self, data: bytes, commit: str, name: str, head: bool) -> None:
        if not head and name in self.hub.refuse_gets:
            return self._error(500, None, "internal error")
        start = 0
        rng = self.headers.get("Range")
        if rng and not head:
            start = int(re.fullmatch(r"bytes=(\d+)-\d*", rng).group(1))
        body = data[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("X-Repo-Commit", commit)
        self.send_header("Accept-Ranges", "bytes")
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if head:
            return
        if name in self.hub.drop_once:
            self.hub.drop_once.discard(name)
            self.wfile.write(body[: int(len(body) * self.hub.drop_at)])
            self.wfile.flush()
            self.close_connection = True  # the rest never comes: the client sees a short body
            return
        self.wfile.write(body)

    def _json(self, status: int, body) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(raw)

    def _error(self, status: int, code: str | None, message: str) -> None:
        raw = json.dumps({"error": message}).encode()
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(raw)


def _tree_entry(name: str, data: bytes) -> dict:
    blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    entry: dict = {"type": "file", "oid": blob, "size": len(data), "path": name}
    if name.endswith(".safetensors") or len(data) > 1_000_000:
        entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
    return entry
