"""A local Hugging Face hub for tests (HF_ENDPOINT): repositories of local files served in the hub's
layout, as huggingface_hub fetches them: file metadata on HEAD (commit, ETag = SHA-256, size), bytes on
GET with Range for resumed downloads, and a repository's file list. It can break a download halfway
once, or at the same byte every time, or serve other bytes than the ETag says, to test resuming and
verification."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import unquote, urlparse

from .local_http import serving

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class Hub:
    def __init__(self) -> None:
        self.repos: dict[str, dict[str, Path]] = {}
        self.requests: list[tuple[str, str, str]] = []  # method, path, Range header
        self.cut_once: set[str] = set()  # files whose next GET stops halfway
        self.cut_at: dict[str, int] = {}  # files whose every GET stops at this byte (resumed or not)
        self.corrupt: set[str] = set()  # files served with other bytes than their ETag's
        self.url = ""

    def add(self, repo: str, files: dict[str, Path]) -> None:
        self.repos[repo] = files

    def add_folder(self, repo: str, folder: Path) -> None:
        self.add(
            repo, {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
        )


def _handler(hub: Hub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _file(self) -> tuple[str, Path] | None:
            parts = unquote(urlparse(self.path).path).strip("/").split("/")
            if len(parts) < 5 or parts[2] != "resolve":
                return None
            repo, name = "/".join(parts[:2]), "/".join(parts[4:])
            path = hub.repos.get(repo, {}).get(name)
            return (f"{repo}/{name}", path) if path is not None else None

        def _api(self) -> bool:
            parts = unquote(urlparse(self.path).path).strip("/").split("/")
            if parts[:2] != ["api", "models"] or len(parts) < 4:
                return False
            repo = "/".join(parts[2:4])
            if repo not in hub.repos:
                self._send(404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"})
                return True
            files = hub.repos[repo]
            if len(parts) > 5 and parts[4] == "tree":  # the file list, as snapshot_download reads it
                tree = []
                for name, path in files.items():
                    data = path.read_bytes()
                    lfs = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
                    oid = hashlib.sha1(data).hexdigest()
                    tree.append({"type": "file", "oid": oid, "size": len(data), "path": name, "lfs": lfs})
                self._send(200, json.dumps(tree).encode(), {"Content-Type": "application/json"})
                return True
            siblings = [{"rfilename": name} for name in files]
            body = json.dumps({"id": repo, "modelId": repo, "sha": COMMIT, "siblings": siblings}).encode()
            self._send(200, body, {"Content-Type": "application/json"})
            return True

        def _send(self, status: int, body: bytes, headers: dict[str, str], head: bool = False) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _serve(self, head: bool) -> None:
            hub.requests.append((self.command, self.path, self.headers.get("Range", "")))
            if not head and self._api():
                return
            found = self._file()
            if found is None:
                self._send(404, b"Entry not found", {"X-Error-Code": "EntryNotFound"}, head)
                return
            key, path = found
            data = path.read_bytes()
            headers = {
                "X-Repo-Commit": COMMIT,
                "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                "Accept-Ranges": "bytes",
                "Content-Type": "application/octet-stream",
            }
            if key in hub.corrupt:
                data = bytes(reversed(data))
            if head:
                self._send(200, data, headers, head=True)
                return
            start = 0
            wanted = self.headers.get("Range", "")
            if wanted.startswith("bytes="):
                start = int(wanted[6:].split("-")[0])
            body = data[start:]
            self.send_response(206 if start else 200)
            for name, value in headers.items():
                self.send_header(name, value)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if key in hub.cut_at:
                self.wfile.write(body[: max(0, hub.cut_at[key] - start)])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)  # the line drops at the same byte every time
                return
            if key in hub.cut_once:
                hub.cut_once.discard(key)
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)  # the line drops halfway
                return
            self.wfile.write(body)

        def do_HEAD(self) -> None:
            self._serve(head=True)

        def do_GET(self) -> None:
            self._serve(head=False)

    return Handler


@contextmanager
def local_hub() -> Iterator[Hub]:
    hub = Hub()
    with serving(_handler(hub)) as hub.url:
        yield hub
