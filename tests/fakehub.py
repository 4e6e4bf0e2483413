"""A local server on loopback that speaks enough of the Hugging Face Hub's and ModelScope's HTTP APIs for the
real ``huggingface_hub`` and ``modelscope`` clients (the endpoints and headers are in ../shared/WAN-FACTS.md).

It serves folders as repos at a fixed commit, and can be told to misbehave the way real networks do: be down
(503), send a file's bytes corrupted at the right size, or stall half-way through a file (so that a client can
be killed mid-download). Every request is logged, so tests can say what was fetched from where.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

LFS_SUFFIXES = (".safetensors", ".bin", ".pth", ".model")  # stored through LFS on the Hub (sha256 in the listing)


@dataclass
class Repo:
    root: Path
    sha: str

    def files(self) -> dict[str, Path]:
        return {p.relative_to(self.root).as_posix(): p for p in sorted(self.root.rglob("*")) if p.is_file()}


@dataclass
class Stall:
    """Send ``after`` bytes of ``path``, then hold the connection until ``release`` is set."""

    path: str
    after: int
    reached: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.down: set[str] = set()  # "hf" and/or "ms": answer 503
        self.silent: set[str] = set()  # "hf" and/or "ms": accept the connection, never answer (until shut down)
        self._closing = threading.Event()
        self.corrupt: dict[str, int] = {}  # path -> how many more times to send it corrupted
        self.stall: Stall | None = None
        self.requests: list[tuple[str, str, str]] = []  # (api, method, path or file)
        self.authorizations: set[str] = set()  # Authorization headers seen (a token must be used, and only here)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def add(self, repo_id: str, root: Path, sha: str) -> None:
        self.repos[repo_id] = Repo(root, sha)

    def downloads(self, api: str) -> list[str]:
        """Files whose bytes were asked for (GET, not HEAD) through ``api``."""
        return [target for a, method, target in self.requests if a == api and method == "GET-file"]

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._closing.set()
        if self.stall:
            self.stall.release.set()
        self._server.shutdown()
        self._server.server_close()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _git_blob_sha1(path: Path) -> str:
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet: tests read hub.requests instead
            pass

        def do_HEAD(self) -> None:
            self._route(head=True)

        def do_GET(self) -> None:
            self._route(head=False)

        def _route(self, head: bool) -> None:
            url = urlparse(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            path = unquote(url.path)
            if self.headers.get("Authorization"):
                hub.authorizations.add(self.headers["Authorization"])
            api = "ms" if path.startswith("/api/v1/") else "hf"
            if api in hub.down:
                return self._send(503, b"down", {"Content-Type": "text/plain"})
            if api in hub.silent:
                hub._closing.wait(120)
                self.close_connection = True
                return
            if api == "ms":
                return self._modelscope(path, query, head)
            return self._huggingface(path, query, head)

        # -- Hugging Face ---------------------------------------------------------------------------------------
        def _huggingface(self, path: str, query: dict, head: bool) -> None:
            if path.startswith("/api/models/"):
                rest = path.removeprefix("/api/models/")
                for repo_id, repo in hub.repos.items():
                    if rest.startswith(repo_id + "/revision/"):
                        hub.requests.append(("hf", "GET", path))
                        return self._json({"id": repo_id, "sha": repo.sha, "siblings": [{"rfilename": f} for f in repo.files()]})
                    if rest.startswith(repo_id + "/tree/"):
                        hub.requests.append(("hf", "GET", path))
                        return self._json([self._hf_entry(name, file) for name, file in repo.files().items()])
                return self._hf_error("RepoNotFound")
            for repo_id, repo in hub.repos.items():
                prefix = f"/{repo_id}/resolve/"
                if path.startswith(prefix):
                    _revision, _, name = path.removeprefix(prefix).partition("/")
                    file = repo.files().get(name)
                    if file is None:
                        return self._hf_error("EntryNotFound")
                    etag = _sha256(file) if file.suffix in LFS_SUFFIXES else _git_blob_sha1(file)
                    headers = {"X-Repo-Commit": repo.sha, "ETag": f'"{etag}"'}
                    return self._file("hf", name, file, headers, head)
            return self._hf_error("RepoNotFound")

        def _hf_entry(self, name: str, file: Path) -> dict:
            entry = {"type": "file", "path": name, "size": file.stat().st_size, "oid": _git_blob_sha1(file)}
            if file.suffix in LFS_SUFFIXES:
                entry["lfs"] = {"oid": _sha256(file), "size": file.stat().st_size, "pointerSize": 134}
            return entry

        def _hf_error(self, code: str) -> None:
            self._send(404, json.dumps({"error": code}).encode(), {"Content-Type": "application/json", "X-Error-Code": code})

        # -- ModelScope -----------------------------------------------------------------------------------------
        def _modelscope(self, path: str, query: dict, head: bool) -> None:
            rest = path.removeprefix("/api/v1/models/")
            for repo_id, repo in hub.repos.items():
                if rest == f"{repo_id}/repo/files":
                    hub.requests.append(("ms", "GET", path))
                    files = [
                        {"Path": n, "Name": Path(n).name, "Type": "blob", "Size": f.stat().st_size, "Sha256": _sha256(f)}
                        for n, f in repo.files().items()
                    ]
                    return self._json({"Code": 200, "Success": True, "Data": {"Files": files}})
                if rest == f"{repo_id}/repo" and "FilePath" in query:
                    file = repo.files().get(query["FilePath"])
                    if file is None:
                        return self._send(404, b'{"Code":404,"Message":"file not found"}', {"Content-Type": "application/json"})
                    return self._file("ms", query["FilePath"], file, {}, head)
                if rest in (repo_id, f"{repo_id}/revisions"):
                    hub.requests.append(("ms", "GET", path))
                    return self._json({"Code": 200, "Success": True, "Data": {"Id": repo_id, "RevisionMap": {}}})
            hub.requests.append(("ms", "404", path))
            return self._send(404, b'{"Code":404,"Message":"repo not found"}', {"Content-Type": "application/json"})

        # -- bytes ----------------------------------------------------------------------------------------------
        def _file(self, api: str, name: str, file: Path, headers: dict, head: bool) -> None:
            data = file.read_bytes()
            hub.requests.append((api, "HEAD-file" if head else "GET-file", name))
            if not head and hub.corrupt.get(name, 0) > 0:
                hub.corrupt[name] -= 1
                data = bytes(b ^ 0xFF for b in data[:64]) + data[64:]  # right size, wrong bytes
            start = 0
            status = 200
            if not head and (ranged := self.headers.get("Range", "")).startswith("bytes="):
                start = int(ranged.removeprefix("bytes=").split("-")[0] or 0)
                status = 206
                hub.requests.append((api, "RANGE", f"{name}@{start}"))
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            body = data[start:]
            headers |= {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
            if head:
                return self._send(200, b"", headers | {"Content-Length": str(len(data))}, head=True)
            stall = hub.stall
            if stall and stall.path == name and not stall.release.is_set():
                self._send_head(status, headers | {"Content-Length": str(len(body))})
                self.wfile.write(body[: stall.after])
                self.wfile.flush()
                stall.reached.set()
                stall.release.wait(60)
                self.close_connection = True
                return
            self._send(status, body, headers)

        def _json(self, value) -> None:
            self._send(200, json.dumps(value).encode(), {"Content-Type": "application/json"})

        def _send_head(self, status: int, headers: dict) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()

        def _send(self, status: int, body: bytes, headers: dict, head: bool = False) -> None:
            self._send_head(status, {"Content-Length": str(len(body))} | headers)
            if not head:
                self.wfile.write(body)

    return Handler


T2V_REPO = "Wan-AI/Wan2.2-T2V-A14B-Diffusers"
LIGHTNING_REPO = "lightx2v/Wan2.2-Lightning"


def build_wan_repos(base: Path) -> dict[str, Path]:
    """The T2V-A14B diffusers repo and the Lightning repo in the real ones' layout (sharded safetensors with their
    index json, config.json files, tokenizer files, a README and assets the agent must not fetch, the Lightning
    folders of other versions beside the one it needs), with the tiny synthetic model's weights."""
    from safetensors.torch import save_file

    from agent.sources import synthetic

    model = base / T2V_REPO
    synthetic.build_pipeline("tiny", seed=0).save_pretrained(model, max_shard_size="300KB")
    (model / "README.md").write_text("# Wan2.2-T2V-A14B-Diffusers (tiny stand-in)\n")
    (model / "assets").mkdir()
    (model / "assets" / "logo.png").write_bytes(b"\x89PNG not fetched")
    lightning = base / LIGHTNING_REPO
    for folder, seed in (("Wan2.2-T2V-A14B-4steps-lora-rank64-Seko-V1.1", 1), ("Wan2.2-T2V-A14B-4steps-lora-rank64-Seko-V1", 5)):
        (lightning / folder).mkdir(parents=True)
        save_file(synthetic.lightning_lora_state_dict("tiny", seed), lightning / folder / "high_noise_model.safetensors")
        save_file(synthetic.lightning_lora_state_dict("tiny", seed + 1), lightning / folder / "low_noise_model.safetensors")
    (lightning / "README.md").write_text("# Wan2.2-Lightning (tiny stand-in)\n")
    return {T2V_REPO: model, LIGHTNING_REPO: lightning}
