"""A loopback Hugging Face Hub emulator for tests: a small HTTP server that implements the
endpoints huggingface_hub (2.x and 1.x) really calls to create a repo, upload a folder and
download it again, storing the files on disk. It is a test fixture, not a Hub.

Implemented:
- POST /api/repos/create                                  (create_repo)
- POST /api/validate-yaml                                 (upload_folder checks README.md first)
- POST /api/models/{repo}/preupload/{rev}                 (upload modes: always "regular", so no
                                                           LFS/Xet storage protocol is involved)
- POST /api/models/{repo}/commit/{rev}                    (the ndjson commit)
- GET  /api/models/{repo}[/revision/{rev}]                (repo_info / model_info)
- GET  /api/models/{repo}/tree/{rev}[/{path}]             (list_repo_tree, used by snapshot_download)
- HEAD/GET /{repo}/resolve/{rev}/{path}                   (hf_hub_download, from_pretrained)
- GET  /api/agent-harnesses                               (asked once per process; answers 404)
Anything else answers 404 and is recorded in `unhandled`.

Auth: writes need `Authorization: Bearer <token>` with the emulator's token; a wrong token gets
401 on every request. `fail_next(status)` makes the next request(s) fail with that status.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import yaml

GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"
_REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"
_REV = r"(?P<rev>[^/]+)"


def git_blob_oid(content: bytes) -> str:
    """The git blob id of a file: what the Hub reports as a regular file's oid and ETag."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class HubEmulator:
    def __init__(self, root: Path, token: str = "hf_emulator_valid_token"):
        self.root = Path(root)
        self.blobs = self.root / "blobs"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.token = token
        self.repos: dict[str, dict] = {}
        self.requests: list[tuple[str, str]] = []
        self.unhandled: list[tuple[str, str]] = []
        self.authorizations: list[str | None] = []
        self._failures: list[tuple[int, str | None]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> HubEmulator:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def fail_next(self, status: int, times: int = 1, path_contains: str | None = None) -> None:
        """The next `times` requests (whose path contains `path_contains`, if given) answer `status`."""
        with self._lock:
            self._failures += [(status, path_contains)] * times

    # ---- storage
    def _store(self, content: bytes) -> tuple[str, int]:
        oid = git_blob_oid(content)
        (self.blobs / oid).write_bytes(content)
        return oid, len(content)

    def _commit(self, repo_id: str, files: dict[str, tuple[str, int]], summary: str) -> str:
        repo = self.repos[repo_id]
        oid = hashlib.sha1(f"{repo_id}:{len(repo['commits'])}:{summary}:{time.time_ns()}".encode()).hexdigest()
        repo["commits"].append({"oid": oid, "files": files, "summary": summary, "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")})
        (self.root / "repos" / repo_id).mkdir(parents=True, exist_ok=True)
        (self.root / "repos" / repo_id / "commits.json").write_text(json.dumps(repo["commits"], indent=1))
        return oid

    def create_repo(self, repo_id: str, private: bool = False) -> None:
        self.repos[repo_id] = {"private": private, "commits": []}
        self._commit(repo_id, {".gitattributes": self._store(GITATTRIBUTES)}, "initial commit")

    def commit_at(self, repo_id: str, rev: str) -> dict | None:
        commits = self.repos[repo_id]["commits"]
        if rev == "main":
            return commits[-1]
        return next((c for c in commits if c["oid"] == rev), None)

    def file(self, repo_id: str, path: str, rev: str = "main") -> bytes:
        oid, _ = self.commit_at(repo_id, rev)["files"][path]
        return (self.blobs / oid).read_bytes()


def _handler_for(hub: HubEmulator):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep test output quiet
            pass

        # ---- plumbing
        def _body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _send(self, status: int, payload=None, headers: dict | None = None, body: bytes | None = None):
            if body is None:
                body = b"" if payload is None else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json" if payload is not None else "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _error(self, status: int, message: str, code: str | None = None):
            headers = {"X-Error-Message": message}
            if code:
                headers["X-Error-Code"] = code
            self._send(status, {"error": message}, headers)

        def _authorized(self, write: bool, repo_id: str | None = None) -> bool:
            header = self.headers.get("Authorization")
            hub.authorizations.append(header)
            if header is not None and header != f"Bearer {hub.token}":
                self._error(401, "Invalid credentials in Authorization header")
                return False
            private = repo_id in hub.repos and hub.repos[repo_id]["private"]
            if header is None and (write or private):
                self._error(401, "Unauthorized: a write token is needed" if write else "Repository Not Found", None if write else "RepoNotFound")
                return False
            return True

        def _repo_head(self, repo: str, rev: str, write: bool) -> dict | None:
            """The commit `rev` of `repo`, or None once the matching error (401/404) is sent."""
            if not self._authorized(write=write, repo_id=repo):
                return None
            if repo not in hub.repos:
                self._error(404, "Repository not found", "RepoNotFound")
                return None
            head = hub.commit_at(repo, rev)
            if head is None:
                self._error(404, f"Revision {rev} not found", "RevisionNotFound")
            return head

        def _injected_failure(self) -> bool:
            with hub._lock:
                for i, (status, needle) in enumerate(hub._failures):
                    if needle is None or needle in self.path:
                        del hub._failures[i]
                        break
                else:
                    return False
            self._body()
            self._error(status, f"emulated failure {status}")
            return True

        def _dispatch(self):
            path = urlsplit(self.path).path
            hub.requests.append((self.command, self.path))
            if self._injected_failure():
                return
            for method, pattern, action in ROUTES:
                match = re.fullmatch(pattern, path)
                if method == self.command or (method == "GET" and self.command == "HEAD" and action is resolve):
                    if match:
                        return action(self, **{k: unquote(v) if v else v for k, v in match.groupdict().items()})
            hub.unhandled.append((self.command, self.path))
            self._body()
            self._error(404, f"emulator: no route for {self.command} {path}")

        do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = _dispatch

    # ---- endpoints
    def create(h: Handler):
        payload = json.loads(h._body() or b"{}")
        if not h._authorized(write=True):
            return
        repo_id = f"{payload.get('organization') or 'emulator-user'}/{payload['name']}"
        url = f"{hub.url}/{repo_id}"
        if repo_id in hub.repos:  # the Hub names the existing repo: create_repo(exist_ok=True) returns it
            message = "You already created this model repo"
            return h._send(409, {"error": message, "url": url}, {"X-Error-Message": message})
        hub.create_repo(repo_id, private=payload.get("visibility") == "private" or bool(payload.get("private")))
        h._send(200, {"url": url, "name": repo_id, "id": repo_id})

    def validate_yaml(h: Handler):
        payload = json.loads(h._body() or b"{}")
        match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", payload.get("content", ""), re.S)
        if not match:
            return h._send(200, {"warnings": [{"message": "empty or missing yaml metadata in repo card"}]})
        try:
            metadata = yaml.safe_load(match.group(1))
            problems = _metadata_problems(metadata)
        except yaml.YAMLError as error:
            problems = [f"invalid YAML: {error}"]
        if problems:
            return h._send(400, {"errors": [{"message": p} for p in problems]})
        h._send(200, {"warnings": []})

    def preupload(h: Handler, repo: str, rev: str):
        payload = json.loads(h._body() or b"{}")
        if not h._authorized(write=True, repo_id=repo):
            return
        if repo not in hub.repos:
            return h._error(404, "Repository not found", "RepoNotFound")
        current = hub.commit_at(repo, rev) or {"files": {}}
        files = [
            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
             "oid": current["files"].get(f["path"], (None,))[0]}
            for f in payload.get("files", [])
        ]
        h._send(200, {"files": files, "commitOid": current.get("oid")})

    def commit(h: Handler, repo: str, rev: str):
        body = h._body()
        head = h._repo_head(repo, rev, write=True)
        if head is None:
            return
        files = dict(head["files"])
        summary = ""
        for line in body.splitlines():
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                summary = value.get("summary", "")
                if value.get("parentCommit") not in (None, head["oid"]):
                    return h._error(412, "A commit has happened since. Please refresh and try again.")
            elif key == "file":
                files[value["path"]] = hub._store(base64.b64decode(value["content"]))
            elif key == "deletedFile":
                files.pop(value["path"], None)
            elif key == "deletedFolder":
                files = {p: f for p, f in files.items() if not p.startswith(value["path"].rstrip("/") + "/")}
            else:
                return h._error(422, f"emulator: commit operation {key!r} is not supported (only regular files)")
        oid = hub._commit(repo, files, summary)
        h._send(200, {"success": True, "commitOid": oid, "commitUrl": f"{hub.url}/{repo}/commit/{oid}",
                      "hookOutput": "", "pullRequestUrl": None})

    def info(h: Handler, repo: str, rev: str | None = None):
        head = h._repo_head(repo, rev or "main", write=False)
        if head is None:
            return
        h._send(200, {
            "id": repo, "modelId": repo, "author": repo.split("/")[0], "sha": head["oid"],
            "private": hub.repos[repo]["private"], "lastModified": head["date"], "createdAt": hub.repos[repo]["commits"][0]["date"],
            "tags": [], "downloads": 0, "likes": 0, "library_name": "transformers",
            "siblings": [{"rfilename": p} for p in sorted(head["files"])],
        })

    def tree(h: Handler, repo: str, rev: str, path: str | None = None):
        head = h._repo_head(repo, rev, write=False)
        if head is None:
            return
        prefix = f"{path.strip('/')}/" if path else ""
        entries = [{"type": "file", "oid": oid, "size": size, "path": p}
                   for p, (oid, size) in sorted(head["files"].items()) if p.startswith(prefix)]
        h._send(200, entries)

    def resolve(h: Handler, repo: str, rev: str, path: str):
        head = h._repo_head(repo, rev, write=False)
        if head is None:
            return
        if path not in head["files"]:
            return h._error(404, "Entry not found", "EntryNotFound")
        oid, size = head["files"][path]
        content = (hub.blobs / oid).read_bytes()
        h._send(200, None, {"X-Repo-Commit": head["oid"], "ETag": f'"{oid}"', "Accept-Ranges": "bytes"}, body=content)

    def no_agent_registry(h: Handler):
        # huggingface_hub 2.x asks for its AI-agent registry once per process; "none here" is a valid answer.
        h._error(404, "no agent harness registry on the emulator")

    ROUTES = (
        ("GET", r"/api/agent-harnesses", no_agent_registry),
        ("POST", r"/api/repos/create", create),
        ("POST", r"/api/validate-yaml", validate_yaml),
        ("POST", rf"/api/models/{_REPO}/preupload/{_REV}", preupload),
        ("POST", rf"/api/models/{_REPO}/commit/{_REV}", commit),
        ("GET", rf"/api/models/{_REPO}/tree/{_REV}(?:/(?P<path>.*))?", tree),
        ("GET", rf"/api/models/{_REPO}(?:/revision/{_REV})?", info),
        ("GET", rf"/{_REPO}/resolve/{_REV}/(?P<path>.+)", resolve),
    )
    return Handler


def _metadata_problems(metadata) -> list[str]:
    """The checks the Hub's validate-yaml makes that a model card can trip over."""
    if metadata is None:
        return []
    if not isinstance(metadata, dict):
        return ["metadata must be a YAML mapping"]
    problems = []
    for key in ("tags", "datasets"):
        value = metadata.get(key)
        if value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)) and not isinstance(value, str):
            problems.append(f'"{key}" must be a string or a list of strings')
    for entry in metadata.get("model-index") or []:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            problems.append('"model-index[].name" is required')
            continue
        for result in entry.get("results") or []:
            if not isinstance((result.get("task") or {}).get("type"), str):
                problems.append('"model-index[].results[].task.type" is required')
            dataset = result.get("dataset") or {}
            if not (isinstance(dataset.get("type"), str) and isinstance(dataset.get("name"), str)):
                problems.append('"model-index[].results[].dataset" needs "type" and "name"')
            for metric in result.get("metrics") or []:
                if not isinstance(metric.get("type"), str) or not isinstance(metric.get("value"), (int, float, str)):
                    problems.append('"model-index[].results[].metrics[]" needs "type" and "value"')
    return problems
