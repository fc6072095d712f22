"""A loopback Hugging Face hub for tests: the HTTP API that huggingface_hub's upload and download use.

    with LoopbackHub() as hub:                      # 127.0.0.1, a free port, stops itself after `lifetime_s`
        os.environ["HF_ENDPOINT"] = hub.url
        ...                                         # HfApi / snapshot_download talk to it
        hub.requests                                # every (method, path) served, for assertions

What it speaks (huggingface_hub 1.x/2.x, the LFS transfer; xet must be off on the client:
HF_HUB_DISABLE_XET): repo create, model info by revision, recursive tree listing, branch create,
README metadata validation, preupload (regular vs LFS, remote oid for unchanged-file detection),
the LFS batch API with basic PUT + verify, the ndjson commit (inline base64 files, LFS pointers,
deletions, parentCommit check), and resolve (HEAD/GET) with the X-Repo-Commit / ETag headers the
download path checks. A commit is applied all at once or not at all, like the hub's.

Faults: `drop_commits = n` makes the next n commit requests lose their connection after the body
was read and before anything is applied (what a network failure mid-upload looks like to the client).
`require_token = "..."` answers 401 to requests without that bearer token.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

LFS_SUFFIXES = (".safetensors", ".pt", ".bin", ".model", ".pth")
LFS_MIN_SIZE = 10 * 1024 * 1024


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Entry:
    """One file in a commit: inline bytes (regular) or a pointer to an LFS object."""

    size: int
    sha256: str
    data: bytes | None = None  # regular files only

    @property
    def is_lfs(self) -> bool:
        return self.data is None

    def pointer(self) -> bytes:
        return f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {self.size}\n".encode()

    @property
    def git_oid(self) -> str:
        return git_blob_sha1(self.pointer() if self.is_lfs else self.data)


@dataclass
class Repo:
    private: bool
    branches: dict[str, str] = field(default_factory=dict)  # branch → commit sha
    commits: dict[str, dict[str, Entry]] = field(default_factory=dict)  # commit sha → files
    messages: dict[str, str] = field(default_factory=dict)

    def add_commit(self, files: dict[str, Entry], parent: str | None, message: str) -> str:
        sha = hashlib.sha1(json.dumps([parent, message, sorted((p, e.git_oid) for p, e in files.items())]).encode()).hexdigest()
        self.commits[sha] = files
        self.messages[sha] = message
        return sha


class LoopbackHub:
    def __init__(self, lifetime_s: float = 120.0) -> None:
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}  # sha256 → content
        self.requests: list[tuple[str, str]] = []
        self.auth_headers: list[str | None] = []
        self.drop_commits = 0
        self.require_token: str | None = None
        self.lock = threading.Lock()
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        # Bounded: a test that forgets to stop it does not leave a server behind for long.
        self.timer = threading.Timer(lifetime_s, self.stop)
        self.timer.daemon = True

    def __enter__(self) -> LoopbackHub:
        self.thread.start()
        self.timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self.timer.cancel()
        self.server.shutdown()
        self.server.server_close()

    # -- what tests inspect --------------------------------------------------------------------

    def head(self, repo_id: str, branch: str = "main") -> str | None:
        repo = self.repos.get(repo_id)
        return repo.branches.get(branch) if repo else None

    def files(self, repo_id: str, branch: str = "main") -> dict[str, bytes]:
        """Contents of the branch head, LFS files resolved."""
        repo = self.repos[repo_id]
        entries = repo.commits[repo.branches[branch]]
        return {p: (e.data if not e.is_lfs else self.lfs[e.sha256]) for p, e in entries.items()}

    def count(self, method: str, pattern: str) -> int:
        return sum(1 for m, p in self.requests if m == method and re.search(pattern, p))


class _Handler(BaseHTTPRequestHandler):
    hub: LoopbackHub
    protocol_version = "HTTP/1.1"  # keep-alive, as the real hub; every answer carries Content-Length

    def log_message(self, format, *args) -> None:  # quiet: tests read hub.requests instead
        pass

    # -- plumbing ------------------------------------------------------------------------------

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, body: bytes | dict | list = b"", headers: dict | None = None, head: bool = False) -> None:
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            headers = {"Content-Type": "application/json", **(headers or {})}
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _error(self, status: int, code: str | None, message: str) -> None:
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, {"error": message}, headers)

    def _route(self, method: str) -> None:
        url = urlsplit(self.path)
        path, query = unquote(url.path), parse_qs(url.query)
        hub = self.hub
        with hub.lock:
            hub.requests.append((method, path))
            hub.auth_headers.append(self.headers.get("Authorization"))
        body = self._body() if method in ("POST", "PUT") else b""
        if hub.require_token and self.headers.get("Authorization") != f"Bearer {hub.require_token}" and not path.startswith("/lfs-"):
            return self._error(401, None, "Invalid credentials in Authorization header")
        for pattern, handler in ROUTES:
            m = re.fullmatch(pattern, path)
            if m and handler.__name__.startswith(method.lower() + "_"):
                with hub.lock:
                    return handler(self, body, query, *m.groups())
        self._error(404, None, f"loopback hub: no route for {method} {path}")

    def do_GET(self) -> None:
        self._route("GET")

    def do_HEAD(self) -> None:
        self._route("HEAD")

    def do_POST(self) -> None:
        self._route("POST")

    def do_PUT(self) -> None:
        self._route("PUT")

    # -- helpers -------------------------------------------------------------------------------

    def _repo(self, repo_id: str) -> Repo | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
        return repo

    def _commit(self, repo: Repo, revision: str) -> str | None:
        sha = repo.branches.get(revision) or (revision if revision in repo.commits else None)
        if sha is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return sha

    # -- the API -------------------------------------------------------------------------------

    def post_create(self, body, query) -> None:
        req = json.loads(body)
        repo_id = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
        url = f"{self.hub.url}/{repo_id}"
        if repo_id in self.hub.repos:
            return self._send(409, {"error": "You already created this model repo", "url": url})
        repo = Repo(private=req.get("visibility") == "private" or bool(req.get("private")))
        data = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.pt filter=lfs diff=lfs merge=lfs -text\n"
        attrs = Entry(len(data), hashlib.sha256(data).hexdigest(), data)
        repo.branches["main"] = repo.add_commit({".gitattributes": attrs}, None, "initial commit")
        self.hub.repos[repo_id] = repo
        self._send(200, {"url": url, "name": repo_id, "id": repo_id})

    def get_info(self, body, query, repo_id, revision) -> None:
        repo = self._repo(repo_id)
        sha = repo and self._commit(repo, revision or "main")
        if sha:
            files = repo.commits[sha]
            self._send(200, {"id": repo_id, "modelId": repo_id, "sha": sha, "private": repo.private,
                             "siblings": [{"rfilename": p} for p in sorted(files)]})

    def get_tree(self, body, query, repo_id, revision, prefix) -> None:
        repo = self._repo(repo_id)
        sha = repo and self._commit(repo, revision)
        if not sha:
            return
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        prefix = (prefix or "").strip("/")
        out, folders = [], set()
        for path, e in sorted(repo.commits[sha].items()):
            if prefix and not path.startswith(prefix + "/"):
                continue
            rest = path[len(prefix) + 1 :] if prefix else path
            if "/" in rest and not recursive:
                folders.add((prefix + "/" if prefix else "") + rest.split("/")[0])
                continue
            item = {"type": "file", "path": path, "size": e.size, "oid": e.git_oid}
            if e.is_lfs:
                item["lfs"] = {"oid": e.sha256, "size": e.size, "pointerSize": len(e.pointer())}
            out.append(item)
        out += [{"type": "directory", "path": f, "oid": hashlib.sha1(f.encode()).hexdigest(), "size": 0} for f in sorted(folders)]
        self._send(200, out)

    def post_branch(self, body, query, repo_id, branch) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return
        if branch in repo.branches:
            return self._error(409, None, f"Reference refs/heads/{branch} already exists")
        start = (json.loads(body or b"{}") or {}).get("startingPoint") or "main"
        sha = self._commit(repo, start)
        if sha:
            repo.branches[branch] = sha
            self._send(200, {})

    def post_validate_yaml(self, body, query) -> None:
        content = json.loads(body)["content"]
        m = re.match(r"---\n(.*?)\n---\n", content, re.S)
        try:
            if m:
                yaml.safe_load(m.group(1))
        except yaml.YAMLError as e:
            return self._send(400, {"errors": [{"message": str(e)}]})
        self._send(200, {"errors": [], "warnings": []})

    def post_preupload(self, body, query, repo_id, revision) -> None:
        repo = self._repo(repo_id)
        sha = repo and self._commit(repo, revision)
        if not sha:
            return
        current = repo.commits[sha]
        files = []
        for f in json.loads(body)["files"]:
            sample = base64.b64decode(f["sample"])
            lfs = f["path"].endswith(LFS_SUFFIXES) or f["size"] >= LFS_MIN_SIZE or b"\0" in sample
            old = current.get(f["path"])
            oid = None
            if old is not None:
                oid = old.sha256 if (lfs and old.is_lfs) else old.git_oid if not (lfs or old.is_lfs) else None
            files.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
        self._send(200, {"files": files, "commitOid": sha})

    def post_lfs_batch(self, body, query, repo_id) -> None:
        if self._repo(repo_id) is None:
            return
        req = json.loads(body)
        objects = []
        for obj in req["objects"]:
            item = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.hub.lfs:
                item["actions"] = {"upload": {"href": f"{self.hub.url}/lfs-upload/{obj['oid']}/{obj['size']}"},
                                   "verify": {"href": f"{self.hub.url}/lfs-verify"}}
            objects.append(item)
        self._send(200, {"transfer": "basic", "objects": objects}, {"Content-Type": "application/vnd.git-lfs+json"})

    def put_lfs_upload(self, body, query, oid, size) -> None:
        if hashlib.sha256(body).hexdigest() != oid or len(body) != int(size):
            return self._error(400, None, "content does not match its oid/size")
        self.hub.lfs[oid] = body
        self._send(200, b"")

    def post_lfs_verify(self, body, query) -> None:
        req = json.loads(body)
        if req["oid"] not in self.hub.lfs:
            return self._error(404, None, "object not uploaded")
        self._send(200, {})

    def post_commit(self, body, query, repo_id, revision) -> None:
        hub = self.hub
        if hub.drop_commits > 0:
            hub.drop_commits -= 1
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)  # the client sees the connection die, no answer
            return
        repo = self._repo(repo_id)
        sha = repo and self._commit(repo, revision)
        if not sha:
            return
        if revision not in repo.branches:
            return self._error(400, None, f"cannot commit to {revision}: not a branch")
        files = dict(repo.commits[sha])
        header = {}
        for line in body.splitlines():
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
            elif key == "file":
                data = base64.b64decode(value["content"])
                files[value["path"]] = Entry(len(data), hashlib.sha256(data).hexdigest(), data)
            elif key == "lfsFile":
                if value["oid"] not in hub.lfs:
                    return self._error(422, None, f"LFS object {value['oid']} of {value['path']} was never uploaded")
                files[value["path"]] = Entry(len(hub.lfs[value["oid"]]), value["oid"])
            elif key == "deletedFile":
                if files.pop(value["path"], None) is None:
                    return self._error(404, "EntryNotFound", f"A file with this name doesn't exist: {value['path']}")
            else:
                return self._error(400, None, f"loopback hub: unsupported commit operation {key}")
        parent = header.get("parentCommit")
        if parent and parent != sha:
            return self._error(412, None, f"parent commit {parent} is not the head of {revision} ({sha})")
        new = repo.add_commit(files, sha, header.get("summary", ""))
        repo.branches[revision] = new
        self._send(200, {"success": True, "commitOid": new, "commitUrl": f"{hub.url}/{repo_id}/commit/{new}",
                         "pullRequestUrl": None})

    def _resolve(self, repo_id, revision, filename, head: bool) -> None:
        repo = self._repo(repo_id)
        sha = repo and self._commit(repo, revision)
        if not sha:
            return
        e = repo.commits[sha].get(filename)
        if e is None:
            self._send(404, b"", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": sha}, head=head)
            return
        data = self.hub.lfs[e.sha256] if e.is_lfs else e.data
        etag = e.sha256 if e.is_lfs else e.git_oid
        self._send(200, data, {"X-Repo-Commit": sha, "ETag": f'"{etag}"', "Content-Type": "application/octet-stream"}, head=head)

    def get_resolve(self, body, query, repo_id, revision, filename) -> None:
        self._resolve(repo_id, revision, filename, head=False)

    def head_resolve(self, body, query, repo_id, revision, filename) -> None:
        self._resolve(repo_id, revision, filename, head=True)


REPO = r"([^/]+/[^/]+?)"
ROUTES = [
    (r"/api/repos/create", _Handler.post_create),
    (rf"/api/models/{REPO}(?:/revision/([^/]+))?", _Handler.get_info),
    (rf"/api/models/{REPO}/tree/([^/]+)(/.*)?", _Handler.get_tree),
    (rf"/api/models/{REPO}/branch/([^/]+)", _Handler.post_branch),
    (r"/api/validate-yaml", _Handler.post_validate_yaml),
    (rf"/api/models/{REPO}/preupload/([^/]+)", _Handler.post_preupload),
    (rf"/{REPO}\.git/info/lfs/objects/batch", _Handler.post_lfs_batch),
    (r"/lfs-upload/([0-9a-f]{64})/(\d+)", _Handler.put_lfs_upload),
    (r"/lfs-verify", _Handler.post_lfs_verify),
    (rf"/api/models/{REPO}/commit/([^/]+)", _Handler.post_commit),
    (rf"/{REPO}/resolve/([^/]+)/(.+)", _Handler.get_resolve),
    (rf"/{REPO}/resolve/([^/]+)/(.+)", _Handler.head_resolve),
]
