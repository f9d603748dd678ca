"""A Hub-compatible HTTP server for the tests: it stands in for huggingface.co, which no test may reach.

`FakeHub` is NOT the Hugging Face Hub. It is a small in-memory imitation, started on 127.0.0.1 inside the
test session (stdlib `http.server` in a thread), that speaks the subset of the Hub's HTTP API that the real
`huggingface_hub` (2.4) and `datasets` (5.2) clients call when dsco-hub publishes, reads and evaluates a
dataset repo. Point `HF_ENDPOINT` (or `HfApi(endpoint=...)`) at `FakeHub.url` and the real clients talk to
it over HTTP. Routes, as the clients send them:

    GET  /api/whoami-v2                                   who the bearer token belongs to
    POST /api/repos/create                                create a repo (409 when it exists)
    POST /api/validate-yaml                               README metadata check before a commit
    PUT  /api/datasets/{ns}/{name}/settings               gating / visibility
    GET  /api/datasets/{ns}/{name}[/revision/{rev}]       repo info (sha, siblings, cardData)
    GET  /api/datasets/{ns}/{name}/refs                   branches and pull-request refs
    POST /api/datasets/{ns}/{name}/preupload/{rev}        upload mode per file ("lfs" or "regular") and remote oid
    POST /datasets/{ns}/{name}.git/info/lfs/objects/batch LFS batch API (basic transfer: one PUT per object)
    PUT  /lfs-upload/{ns}/{name}/{sha256}                 the LFS object itself (checked against its sha256)
    POST /api/datasets/{ns}/{name}/commit/{rev}           NDJSON commit (file, lfsFile, deletedFile, deletedFolder),
                                                          `?create_pr=1` opens a pull request on refs/pr/N
    GET  /api/datasets/{ns}/{name}/tree/{rev}[/{path}]    tree listing (recursive or not)
    POST /api/datasets/{ns}/{name}/paths-info/{rev}       info on given paths
    POST /api/datasets/{ns}/{name}/branch/{branch}        create a branch
    POST /api/datasets/{ns}/{name}/discussions            open a discussion / pull request
    GET  /api/datasets/{ns}/{name}/discussions/{num}      discussion / pull request details
    HEAD /datasets/{ns}/{name}/resolve/{rev}/{path}       file metadata (X-Repo-Commit, ETag, X-Linked-Etag/Size)
    GET  /datasets/{ns}/{name}/resolve/{rev}/{path}       file content (Range supported)

Xet storage is not offered: run the clients with `HF_HUB_DISABLE_XET=1` (or patch
`huggingface_hub.constants.HF_HUB_DISABLE_XET`) so uploads use the LFS batch API over plain HTTP.

Failures are injected with `FakeHub.fail(method, path_regex, status, times=..., headers=...)`, for example a
429 with `Retry-After`, a 500 on the second commit, or a 401, on any route (preupload, the LFS batch API, the LFS
PUT, the commit); `FakeHub.drop(method, path_regex, times=...)` closes the connection without an answer instead
(logged with status `DROPPED`). Every request is logged in `FakeHub.log` as `(method, path, status)` and in
`FakeHub.requests` as `Request(method, path, status, at)`, `at` read from `FakeHub.clock` when the request
arrived (`time.monotonic` unless a test sets a clock it advances itself); headers are never recorded, so tokens
are not. Commits and LFS uploads are also recorded in `FakeHub.commits` (the paths of each, in order) and
`FakeHub.lfs_uploads` for assertions.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import itertools
import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

LFS_BATCH = ["info", "lfs", "objects", "batch"]
LFS_SUFFIXES = (".parquet", ".png", ".jpg", ".jpeg", ".arrow", ".bin", ".safetensors", ".zip", ".gz")
DROPPED = 0  # status logged for a request whose connection was closed without an answer


class Request(NamedTuple):
    """One request as the server saw it (no headers: tokens are never recorded)."""

    method: str
    path: str
    status: int  # DROPPED when the connection was closed without an answer
    at: float  # FakeHub.clock() when the request arrived
    query: str = ""  # the query string, e.g. "create_pr=1"


def git_blob_id(content: bytes) -> str:
    """The git sha1 of a blob, as the Hub reports it in `oid` (and `ETag` of regular files)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass
class StoredFile:
    """A file of a commit: regular (`content`) or LFS (`sha256`, content in the repo's LFS store)."""

    size: int
    content: bytes | None = None
    sha256: str | None = None

    @property
    def blob_id(self) -> str:
        if self.sha256 is None:
            return git_blob_id(self.content)
        return git_blob_id(lfs_pointer(self.sha256, self.size))


@dataclass
class Commit:
    oid: str
    parent: str | None
    files: dict[str, StoredFile]
    title: str
    author: str
    date: str


@dataclass
class Repo:
    repo_id: str
    owner: str
    private: bool = False
    gated: bool | str = False
    commits: dict[str, Commit] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)  # "main", "dev", "refs/pr/1" -> commit oid
    discussions: dict[int, dict] = field(default_factory=dict)
    lfs: dict[str, bytes] = field(default_factory=dict)  # sha256 -> content

    def resolve(self, revision: str) -> str | None:
        if revision in self.refs:
            return self.refs[revision]
        if revision.startswith("refs/heads/") and revision[len("refs/heads/") :] in self.refs:
            return self.refs[revision[len("refs/heads/") :]]
        if revision in self.commits:
            return revision
        return None


@dataclass
class Failure:
    method: str
    pattern: re.Pattern
    status: int
    times: int
    headers: dict
    body: dict
    after: int = 0  # matching requests let through before failing
    seen: int = 0
    hits: int = 0


class HubError(Exception):
    """An HTTP error response: status, body and the Hub's `X-Error-Code` / `X-Error-Message` headers."""

    def __init__(self, status: int, message: str, code: str | None = None, body: dict | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.body = body if body is not None else {"error": message}


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _front_matter(text: str) -> dict | None:
    """The YAML header of a README, or None when there is none (raises `yaml.YAMLError` when malformed)."""
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, flags=re.S)
    if not match:
        return None
    data = yaml.safe_load(match.group(1))
    return data if isinstance(data, dict) else {}


class FakeHub:
    """An in-memory, Hub-compatible HTTP server (a test double of huggingface.co; see the module docstring).

    Args:
        users (`dict[str, str]`): valid bearer tokens and the user each belongs to.
    """

    def __init__(self, users: dict[str, str]):
        self.users = dict(users)
        self.repos: dict[str, Repo] = {}
        self.failures: list[Failure] = []
        self.log: list[tuple[str, str, int]] = []
        self.requests: list[Request] = []
        self.clock: Callable[[], float] = time.monotonic
        self.commits: list[dict] = []  # {"repo", "revision", "oid", "paths", "create_pr"}
        self.lfs_uploads: list[str] = []  # sha256 of every LFS object received
        self.lock = threading.RLock()
        self._counter = itertools.count()
        self._nonce = uuid.uuid4().hex
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------------------------

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            fake = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # -- test helpers ---------------------------------------------------------------------------------------------

    def fail(
        self,
        method: str,
        path_regex: str,
        status: int,
        times: int = 1,
        headers: dict | None = None,
        message: str = "injected failure",
        after: int = 0,
    ) -> Failure:
        """Answer `times` requests matching `method` and `path_regex` (searched in the path) with `status`.

        The first `after` matching requests are served normally (e.g. `after=1`: fail from the second commit on).
        """
        failure = Failure(
            method.upper(), re.compile(path_regex), status, times, dict(headers or {}), {"error": message}, after
        )
        with self.lock:
            self.failures.append(failure)
        return failure

    def drop(self, method: str, path_regex: str, times: int = 1, after: int = 0) -> Failure:
        """Close the connection of `times` requests matching `method` and `path_regex` without answering."""
        return self.fail(method, path_regex, DROPPED, times=times, after=after)

    def clear_failures(self) -> None:
        with self.lock:
            self.failures.clear()

    def reset_log(self) -> None:
        with self.lock:
            self.log.clear()
            self.requests.clear()
            self.commits.clear()
            self.lfs_uploads.clear()

    def read(self, repo_id: str, path: str, revision: str = "main") -> bytes:
        """The content of `path` at `revision` (for assertions)."""
        repo = self.repos[repo_id]
        stored = repo.commits[repo.resolve(revision)].files[path]
        return stored.content if stored.sha256 is None else repo.lfs[stored.sha256]

    def files(self, repo_id: str, revision: str = "main") -> dict[str, StoredFile]:
        repo = self.repos[repo_id]
        return dict(repo.commits[repo.resolve(revision)].files)

    # -- request handling -----------------------------------------------------------------------------------------

    def handle(self, method: str, raw_path: str, headers, body: bytes):
        """Return `(status, headers, body_bytes)` for one request (status `DROPPED`: close without answering)."""
        split = urlsplit(raw_path)
        path, query = split.path, parse_qs(split.query, keep_blank_values=True)
        arrived = self.clock()
        with self.lock:
            for failure in self.failures:
                if failure.hits >= failure.times or failure.method != method or not failure.pattern.search(path):
                    continue
                failure.seen += 1
                if failure.seen > failure.after:
                    failure.hits += 1
                    self.log.append((method, path, failure.status))
                    self.requests.append(Request(method, path, failure.status, arrived, split.query))
                    data = json.dumps(failure.body).encode()
                    return failure.status, {"Content-Type": "application/json", **failure.headers}, data
        try:
            status, out_headers, out_body = self._route(method, path, query, headers, body)
        except HubError as err:
            status = err.status
            out_headers = {"Content-Type": "application/json", "X-Error-Message": str(err)}
            if err.code:
                out_headers["X-Error-Code"] = err.code
            out_body = json.dumps(err.body).encode()
        with self.lock:
            self.log.append((method, path, status))
            self.requests.append(Request(method, path, status, arrived, split.query))
        return status, out_headers, out_body

    def _user(self, headers, required: bool = True) -> str | None:
        auth = headers.get("Authorization") or ""
        token = auth[len("Bearer ") :] if auth.startswith("Bearer ") else None
        if token is None:
            if required:
                raise HubError(401, "Invalid credentials in Authorization header")
            return None
        if token not in self.users:
            raise HubError(401, "Invalid credentials in Authorization header")
        return self.users[token]

    def _repo(self, repo_id: str, headers, write: bool = False) -> Repo:
        repo = self.repos.get(repo_id)
        user = self._user(headers, required=False)
        if repo is None or (repo.private and user != repo.owner):
            raise HubError(404, "Repository not found", code="RepoNotFound")
        if write and user != repo.owner:
            raise HubError(403, f"You don't have the rights to write to datasets/{repo_id}", code=None)
        return repo

    def _commit_of(self, repo: Repo, revision: str) -> Commit:
        oid = repo.resolve(revision)
        if oid is None:
            raise HubError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")
        return repo.commits[oid]

    def _new_commit(self, repo: Repo, parent: Commit | None, files: dict[str, StoredFile], title: str, user: str):
        seed = f"{self._nonce}/{next(self._counter)}/{parent.oid if parent else ''}/{title}"
        oid = hashlib.sha1(seed.encode()).hexdigest()
        commit = Commit(oid, parent.oid if parent else None, files, title, user, _now())
        repo.commits[oid] = commit
        return commit

    def _route(self, method: str, path: str, query: dict, headers, body: bytes):
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if parts[:1] == ["api"]:
            return self._api(method, parts[1:], query, headers, body)
        if parts[:1] == ["datasets"] and parts[2:3] and parts[2].endswith(".git") and parts[3:] == LFS_BATCH:
            return self._lfs_batch(f"{parts[1]}/{parts[2][:-4]}", headers, body)
        if parts[:1] == ["lfs-upload"] and method == "PUT" and len(parts) == 4:
            return self._lfs_put(f"{parts[1]}/{parts[2]}", parts[3], body)
        if len(parts) >= 6 and parts[0] == "datasets" and parts[3] == "resolve" and method in ("GET", "HEAD"):
            return self._resolve(method, f"{parts[1]}/{parts[2]}", parts[4], "/".join(parts[5:]), headers)
        raise HubError(404, f"no route for {method} {path}")

    # -- /api -----------------------------------------------------------------------------------------------------

    def _api(self, method: str, parts: list[str], query: dict, headers, body: bytes):
        if parts == ["whoami-v2"] and method == "GET":
            user = self._user(headers)
            return _json({"type": "user", "name": user, "orgs": [], "auth": {"accessToken": {"role": "write"}}})
        if parts == ["repos", "create"] and method == "POST":
            return self._create_repo(headers, json.loads(body or b"{}"))
        if parts == ["validate-yaml"] and method == "POST":
            content = json.loads(body or b"{}").get("content", "")
            try:
                _front_matter(content)
            except yaml.YAMLError as err:
                return _json({"errors": [{"message": f"Invalid YAML: {err}"}]}, status=400)
            return _json({"warnings": []})
        if len(parts) < 3 or parts[0] != "datasets":
            raise HubError(404, f"no route for {method} /api/{'/'.join(parts)}")
        repo_id, rest = f"{parts[1]}/{parts[2]}", parts[3:]
        if not rest and method == "GET":
            return self._info(repo_id, "main", headers)
        if rest[:1] == ["revision"] and len(rest) >= 2 and method == "GET":
            return self._info(repo_id, "/".join(rest[1:]), headers)
        if rest == ["settings"] and method == "PUT":
            repo = self._repo(repo_id, headers, write=True)
            payload = json.loads(body or b"{}")
            if "gated" in payload:
                repo.gated = payload["gated"]
            if "private" in payload:
                repo.private = bool(payload["private"])
            if payload.get("visibility"):
                repo.private = payload["visibility"] == "private"
            return _json({})
        if rest == ["refs"] and method == "GET":
            repo = self._repo(repo_id, headers)
            branches = [
                {"name": n, "ref": f"refs/heads/{n}", "targetCommit": o}
                for n, o in repo.refs.items()
                if not n.startswith("refs/")
            ]
            prs = [{"name": n, "ref": n, "targetCommit": o} for n, o in repo.refs.items() if n.startswith("refs/pr/")]
            return _json({"branches": branches, "tags": [], "converts": [], "pullRequests": prs})
        if rest[:1] == ["preupload"] and method == "POST":
            return self._preupload(repo_id, "/".join(rest[1:]), query, headers, json.loads(body or b"{}"))
        if rest[:1] == ["commit"] and method == "POST":
            return self._commit(repo_id, "/".join(rest[1:]), query, headers, body)
        if rest[:1] == ["tree"] and method == "GET":
            path_in_repo = "/".join(rest[2:]) if len(rest) > 2 else ""
            return self._tree(repo_id, rest[1], path_in_repo, query, headers)
        if rest[:1] == ["paths-info"] and method == "POST":
            return self._paths_info(repo_id, "/".join(rest[1:]), headers, body)
        if rest[:1] == ["branch"] and method == "POST":
            return self._branch(repo_id, "/".join(rest[1:]), headers, json.loads(body or b"{}"))
        if rest == ["discussions"] and method == "POST":
            repo = self._repo(repo_id, headers)
            user = self._user(headers)
            payload = json.loads(body or b"{}")
            num = self._open_discussion(repo, payload["title"], user, bool(payload.get("pullRequest")), None)
            if payload.get("pullRequest"):
                repo.refs[f"refs/pr/{num}"] = repo.refs["main"]
            return _json({"num": num})
        if rest[:1] == ["discussions"] and len(rest) == 2 and method == "GET":
            repo = self._repo(repo_id, headers)
            discussion = repo.discussions.get(int(rest[1]))
            if discussion is None:
                raise HubError(404, "Discussion not found")
            return _json(discussion)
        raise HubError(404, f"no route for {method} /api/{'/'.join(parts)}")

    def _create_repo(self, headers, payload: dict):
        user = self._user(headers)
        name, namespace = payload.get("name"), payload.get("organization") or user
        if payload.get("type") != "dataset":
            raise HubError(400, "this fake Hub only serves dataset repos")
        repo_id = f"{namespace}/{name}"
        if namespace != user:
            raise HubError(403, f"You don't have the rights to create a dataset under the namespace '{namespace}'")
        url = f"{self.url}/datasets/{repo_id}"
        if repo_id in self.repos:
            return _json({"error": "You already created this dataset repo", "url": url}, status=409)
        private = payload.get("private") or payload.get("visibility") == "private"
        repo = Repo(repo_id=repo_id, owner=user, private=bool(private))
        attributes = b"*.parquet filter=lfs diff=lfs merge=lfs -text\n*.png filter=lfs diff=lfs merge=lfs -text\n"
        first = self._new_commit(
            repo, None, {".gitattributes": StoredFile(len(attributes), attributes)}, "initial commit", user
        )
        repo.refs["main"] = first.oid
        self.repos[repo_id] = repo
        return _json({"url": url, "name": repo_id, "id": repo_id})

    def _info(self, repo_id: str, revision: str, headers):
        repo = self._repo(repo_id, headers)
        commit = self._commit_of(repo, revision)
        card = None
        if "README.md" in commit.files:
            try:
                card = _front_matter(commit.files["README.md"].content.decode())
            except yaml.YAMLError:
                card = None
        data = {
            "_id": hashlib.md5(repo_id.encode()).hexdigest()[:24],
            "id": repo_id,
            "author": repo.owner,
            "sha": commit.oid,
            "private": repo.private,
            "gated": repo.gated,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "lastModified": commit.date,
            "createdAt": repo.commits[next(iter(repo.commits))].date,
            "siblings": [{"rfilename": p} for p in sorted(commit.files)],
        }
        if card is not None:
            data["cardData"] = card
        return _json(data)

    def _entry(self, path: str, stored: StoredFile | None) -> dict:
        if stored is None:
            return {"type": "directory", "oid": hashlib.sha1(path.encode()).hexdigest(), "size": 0, "path": path}
        entry = {"type": "file", "oid": stored.blob_id, "size": stored.size, "path": path}
        if stored.sha256 is not None:
            entry["lfs"] = {
                "oid": stored.sha256,
                "size": stored.size,
                "pointerSize": len(lfs_pointer(stored.sha256, stored.size)),
            }
        return entry

    def _tree(self, repo_id: str, revision: str, path_in_repo: str, query: dict, headers):
        repo = self._repo(repo_id, headers)
        commit = self._commit_of(repo, revision)
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        prefix = path_in_repo.strip("/") + "/" if path_in_repo.strip("/") else ""
        if prefix and not any(p.startswith(prefix) for p in commit.files):
            if path_in_repo in commit.files:
                return _json([self._entry(path_in_repo, commit.files[path_in_repo])])
            raise HubError(404, f"{path_in_repo} does not exist", code="EntryNotFound")
        entries: dict[str, dict] = {}
        for path, stored in sorted(commit.files.items()):
            if not path.startswith(prefix):
                continue
            pieces = path[len(prefix) :].split("/")
            for depth in range(1, len(pieces)):
                folder = prefix + "/".join(pieces[:depth])
                if (recursive or depth == 1) and folder not in entries:
                    entries[folder] = self._entry(folder, None)
            if recursive or len(pieces) == 1:
                entries[path] = self._entry(path, stored)
        return _json(list(entries.values()))

    def _paths_info(self, repo_id: str, revision: str, headers, body: bytes):
        repo = self._repo(repo_id, headers)
        commit = self._commit_of(repo, revision)
        form = parse_qs(body.decode(), keep_blank_values=True)
        out = []
        for path in form.get("paths", []):
            path = path.strip("/")
            if path in commit.files:
                out.append(self._entry(path, commit.files[path]))
            elif any(p.startswith(path + "/") for p in commit.files):
                out.append(self._entry(path, None))
        return _json(out)

    def _preupload(self, repo_id: str, revision: str, query: dict, headers, payload: dict):
        repo = self._repo(repo_id, headers)
        self._user(headers)
        commit = self._commit_of(repo, revision)
        files = []
        for item in payload.get("files", []):
            sample = base64.b64decode(item.get("sample", ""))
            binary = b"\0" in sample or item["path"].lower().endswith(LFS_SUFFIXES) or item["size"] > 10 << 20
            stored = commit.files.get(item["path"])
            oid = None
            if stored is not None:
                oid = stored.sha256 if stored.sha256 is not None else stored.blob_id
            files.append(
                {"path": item["path"], "uploadMode": "lfs" if binary else "regular", "shouldIgnore": False, "oid": oid}
            )
        return _json({"files": files, "commitOid": commit.oid})

    def _lfs_batch(self, repo_id: str, headers, body: bytes):
        repo = self._repo(repo_id, headers)
        self._user(headers)
        payload = json.loads(body or b"{}")
        objects = []
        for obj in payload.get("objects", []):
            entry = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in repo.lfs:
                entry["actions"] = {"upload": {"href": f"{self.url}/lfs-upload/{repo_id}/{obj['oid']}"}}
            objects.append(entry)
        data = json.dumps({"transfer": "basic", "objects": objects}).encode()
        return 200, {"Content-Type": "application/vnd.git-lfs+json"}, data

    def _lfs_put(self, repo_id: str, oid: str, body: bytes):
        repo = self.repos.get(repo_id)
        if repo is None:
            raise HubError(404, "Repository not found", code="RepoNotFound")
        if hashlib.sha256(body).hexdigest() != oid:
            raise HubError(400, f"content does not match sha256 {oid}")
        repo.lfs[oid] = body
        self.lfs_uploads.append(oid)
        return 200, {}, b""

    def _commit(self, repo_id: str, revision: str, query: dict, headers, body: bytes):
        create_pr = query.get("create_pr", ["0"])[0] in ("1", "true")
        repo = self._repo(repo_id, headers, write=not (create_pr or revision.startswith("refs/pr/")))
        user = self._user(headers)
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next((line["value"] for line in lines if line["key"] == "header"), {})
        base = self._commit_of(repo, revision)
        if header.get("parentCommit") and header["parentCommit"] != base.oid:
            raise HubError(412, f"parent commit {header['parentCommit']} is not the head of {revision}")
        files = dict(base.files)
        paths = []
        for line in lines:
            key, value = line["key"], line.get("value", {})
            if key == "file":
                content = base64.b64decode(value["content"])
                if value["path"] == "README.md":
                    try:
                        _front_matter(content.decode())
                    except yaml.YAMLError as err:
                        raise HubError(400, f"Invalid metadata in README.md: {err}") from None
                files[value["path"]] = StoredFile(len(content), content=content)
                paths.append(value["path"])
            elif key == "lfsFile":
                if value["oid"] not in repo.lfs:
                    raise HubError(422, f"LFS object {value['oid']} of {value['path']} was never uploaded")
                files[value["path"]] = StoredFile(len(repo.lfs[value["oid"]]), sha256=value["oid"])
                paths.append(value["path"])
            elif key == "deletedFile":
                if value["path"] not in files:
                    raise HubError(404, f"A file with this name doesn't exist: {value['path']}", code="EntryNotFound")
                del files[value["path"]]
                paths.append(f"-{value['path']}")
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                for path in [p for p in files if p.startswith(prefix)]:
                    del files[path]
                paths.append(f"-{prefix}")
        commit = self._new_commit(repo, base, files, header.get("summary", ""), user)
        out = {
            "success": True,
            "commitOid": commit.oid,
            "commitUrl": f"{self.url}/datasets/{repo_id}/commit/{commit.oid}",
        }
        if create_pr:
            num = self._open_discussion(repo, header.get("summary", ""), user, True, revision)
            repo.refs[f"refs/pr/{num}"] = commit.oid
            out["pullRequestUrl"] = f"{self.url}/datasets/{repo_id}/discussions/{num}"
        else:
            branch = revision[len("refs/heads/") :] if revision.startswith("refs/heads/") else revision
            if branch not in repo.refs:
                raise HubError(400, f"cannot commit to {revision}: not a branch", code="RevisionNotFound")
            repo.refs[branch] = commit.oid
        self.commits.append(
            {"repo": repo_id, "revision": revision, "oid": commit.oid, "paths": paths, "create_pr": create_pr}
        )
        return _json(out)

    def _open_discussion(self, repo: Repo, title: str, user: str, pull_request: bool, base: str | None) -> int:
        num = len(repo.discussions) + 1
        repo.discussions[num] = {
            "num": num,
            "title": title,
            "status": "open",
            "isPullRequest": pull_request,
            "createdAt": _now(),
            "author": {"name": user},
            "repo": {"name": repo.repo_id, "type": "dataset"},
            "events": [],
            "changes": {"base": f"refs/heads/{base or 'main'}"},
            "filesWithConflicts": [],
            "diff": "",
        }
        return num

    def _branch(self, repo_id: str, branch: str, headers, payload: dict):
        repo = self._repo(repo_id, headers, write=True)
        if branch.startswith("refs/"):
            raise HubError(400, f"Invalid reference for a branch: {branch}")
        if branch in repo.refs:
            raise HubError(409, f"Reference already exists: refs/heads/{branch}")
        start = self._commit_of(repo, payload.get("startingPoint") or "main")
        repo.refs[branch] = start.oid
        return _json({})

    def _resolve(self, method: str, repo_id: str, revision: str, path: str, headers):
        repo = self._repo(repo_id, headers)
        commit = self._commit_of(repo, revision)
        stored = commit.files.get(path)
        if stored is None:
            raise HubError(404, f"{path} does not exist at {revision}", code="EntryNotFound")
        content = stored.content if stored.sha256 is None else repo.lfs[stored.sha256]
        out_headers = {
            "X-Repo-Commit": commit.oid,
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if stored.sha256 is None:
            out_headers["ETag"] = f'"{stored.blob_id}"'
        else:
            out_headers["ETag"] = f'"{stored.sha256}"'
            out_headers["X-Linked-Etag"] = f'"{stored.sha256}"'
            out_headers["X-Linked-Size"] = str(stored.size)
        status = 200
        byte_range = headers.get("Range")
        if byte_range and method == "GET":
            match = re.match(r"bytes=(\d+)-(\d*)", byte_range)
            if match:
                start = int(match.group(1))
                end = int(match.group(2)) if match.group(2) else len(content) - 1
                end = min(end, len(content) - 1)
                out_headers["Content-Range"] = f"bytes {start}-{end}/{len(content)}"
                content = content[start : end + 1]
                status = 206
        return status, out_headers, content


def _json(data, status: int = 200):
    return status, {"Content-Type": "application/json"}, json.dumps(data).encode()


class _Handler(BaseHTTPRequestHandler):
    fake: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 (stdlib signature) - silence the default stderr log
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _serve(self, method: str) -> None:
        body = self._body()
        status, headers, data = self.fake.handle(method, self.path, self.headers, body)
        if status == DROPPED:  # a dropped connection: no status line, no body
            self.close_connection = True
            return
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(data)

    def do_GET(self):  # noqa: N802 (stdlib names)
        self._serve("GET")

    def do_HEAD(self):  # noqa: N802
        self._serve("HEAD")

    def do_POST(self):  # noqa: N802
        self._serve("POST")

    def do_PUT(self):  # noqa: N802
        self._serve("PUT")

    def do_DELETE(self):  # noqa: N802
        self._serve("DELETE")
