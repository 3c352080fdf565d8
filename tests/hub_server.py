"""A small, in-memory, Hugging Face Hub-compatible HTTP server for tests (stdlib only).

It speaks enough of the Hub protocol for ``huggingface_hub`` (``create_repo``, ``create_branch``,
``upload_folder``/``create_commit``, ``hf_hub_download``, ``snapshot_download``, ``model_info``,
``list_repo_tree``/``list_repo_files``/``list_repo_commits``/``list_repo_refs``) and for
``transformers`` (``from_pretrained`` / ``push_to_hub``) to work against it, with no internet access.

``huggingface_hub`` reads ``HF_ENDPOINT`` once, at import time, so client code must run in a
subprocess whose environment points at the server: use :func:`run_with_hub` (Python code) or
:func:`run_cli_with_hub` (``python -m textdvae ...``).

Usage from a test::

    from hub_server import HubServer, run_with_hub

    with HubServer() as hub:                         # token "hf_test" has write access
        proc = run_with_hub("from huggingface_hub import HfApi; HfApi().create_repo('user/x')", hub)
        assert proc.returncode == 0, proc.stderr
        assert ".gitattributes" in hub.files("user/x")

It keeps what the tests use and nothing more. Endpoints (``{type}`` is ``models`` or ``spaces``; revisions are
URL-quoted):

* ``GET  /api/whoami-v2``
* ``POST /api/repos/create`` (409 if it exists), ``DELETE /api/repos/delete`` (a failed push removes the repo it made)
* ``POST /api/validate-yaml`` (front matter checked with PyYAML when it is importable)
* ``GET  /api/{type}/{ns}/{name}`` and ``.../revision/{rev}`` -> ``{"id", "sha", "siblings", ...}``
* ``GET  /api/{type}/{ns}/{name}/tree/{rev}[/{path}]?recursive=&expand=``
* ``POST /api/{type}/{ns}/{name}/paths-info/{rev}`` (form: ``paths``, ``expand``)
* ``GET  /api/{type}/{ns}/{name}/commits/{rev}``, ``GET .../refs``
* ``POST /api/{type}/{ns}/{name}/preupload/{rev}`` -> always ``uploadMode: regular`` (no LFS/Xet)
* ``POST /api/{type}/{ns}/{name}/commit/{rev}`` (NDJSON: ``header``, ``file``, ``deletedFile``,
  ``deletedFolder``; ``parentCommit`` checked)
* ``POST|DELETE /api/{type}/{ns}/{name}/branch/{branch}`` (JSON ``startingPoint``)
* ``HEAD|GET /[spaces/]{ns}/{name}/resolve/{rev}/{path}`` with ``X-Repo-Commit``, ``ETag``
  (git blob sha-1), ``Content-Length``; 404s carry ``X-Error-Code``
  ``RepoNotFound`` / ``RevisionNotFound`` / ``EntryNotFound``.

Auth: ``Authorization: Bearer <token>``. An unknown token -> 401 on every request (like the Hub's
"Invalid credentials in Authorization header"); no token on a write -> 401; a ``"read"`` token on a
write -> 403. Private repos are visible to any valid token. Every valid token belongs to the user
``user`` (so ``create_repo("name")`` creates ``user/name``).

Like the real Hub, a new repo starts with an "initial commit" holding ``.gitattributes``.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

__all__ = ["HubServer", "run_with_hub", "run_cli_with_hub", "hub_env", "git_blob_oid"]

USERNAME = "user"
REPO_TYPES = {"models": "model", "spaces": "space"}
URL_PREFIXES = {"model": "", "space": "spaces/"}
_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,96}$")
_SHA_RE = re.compile(r"^[0-9a-f]{40}$")

DEFAULT_GITATTRIBUTES = b"""*.7z filter=lfs diff=lfs merge=lfs -text
*.arrow filter=lfs diff=lfs merge=lfs -text
*.bin filter=lfs diff=lfs merge=lfs -text
*.ckpt filter=lfs diff=lfs merge=lfs -text
*.gz filter=lfs diff=lfs merge=lfs -text
*.h5 filter=lfs diff=lfs merge=lfs -text
*.npy filter=lfs diff=lfs merge=lfs -text
*.onnx filter=lfs diff=lfs merge=lfs -text
*.parquet filter=lfs diff=lfs merge=lfs -text
*.pickle filter=lfs diff=lfs merge=lfs -text
*.pkl filter=lfs diff=lfs merge=lfs -text
*.pt filter=lfs diff=lfs merge=lfs -text
*.pth filter=lfs diff=lfs merge=lfs -text
*.safetensors filter=lfs diff=lfs merge=lfs -text
*.zip filter=lfs diff=lfs merge=lfs -text
*tfevents* filter=lfs diff=lfs merge=lfs -text
"""


def git_blob_oid(data: bytes) -> str:
    """The git blob sha-1 of ``data`` (what the Hub uses as ETag/oid for regular files)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + "000Z"


def valid_repo_name(part: str) -> bool:
    """Hub rules for a namespace or a repo name."""
    return (
        bool(_NAME_RE.match(part))
        and part[0] not in "-."
        and part[-1] not in "-."
        and "--" not in part
        and ".." not in part
        and not part.endswith(".git")
    )


# --------------------------------------------------------------------------------------- state


@dataclass
class _Commit:
    oid: str
    parent: str | None
    title: str
    message: str
    date: str
    files: dict[str, bytes]  # full snapshot of the tree at this commit
    author: str = USERNAME


@dataclass
class _Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    commits: dict[str, _Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)  # name -> commit oid
    tags: dict[str, str] = field(default_factory=dict)
    sdk: str | None = None  # a Space's SDK (gradio, docker, static), as given at creation

    def resolve(self, revision: str) -> _Commit | None:
        if revision in self.branches:
            return self.commits[self.branches[revision]]
        if revision.startswith("refs/heads/") and revision[11:] in self.branches:
            return self.commits[self.branches[revision[11:]]]
        if revision in self.tags:
            return self.commits[self.tags[revision]]
        if revision in self.commits:
            return self.commits[revision]
        if re.fullmatch(r"[0-9a-f]{7,39}", revision):
            matches = [c for oid, c in self.commits.items() if oid.startswith(revision)]
            if len(matches) == 1:
                return matches[0]
        return None


class _HTTPError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None, body: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}
        self.body = body or {}


class _HubState:
    def __init__(self, tokens: dict[str, str], base_url_getter):
        self.tokens = dict(tokens)
        self.repos: dict[tuple[str, str], _Repo] = {}
        self.lock = threading.RLock()
        self._counter = itertools.count()
        self._base_url = base_url_getter

    @property
    def base_url(self) -> str:
        return self._base_url()

    def repo_url(self, repo: _Repo) -> str:
        return f"{self.base_url}/{URL_PREFIXES[repo.repo_type]}{repo.repo_id}"

    def new_commit(self, repo: _Repo, parent: _Commit | None, files: dict[str, bytes], summary: str, description: str = "") -> _Commit:
        h = hashlib.sha1()
        h.update(f"{repo.repo_type}/{repo.repo_id}\n{parent.oid if parent else ''}\n{summary}\n{next(self._counter)}\n{time.time_ns()}".encode())
        for path in sorted(files):
            h.update(path.encode() + b"\0" + git_blob_oid(files[path]).encode())
        message = summary if not description else f"{summary}\n\n{description}"
        commit = _Commit(h.hexdigest(), parent.oid if parent else None, summary, message, _now_iso(), files)
        repo.commits[commit.oid] = commit
        return commit

    def create_repo(self, repo_type: str, repo_id: str, private: bool, sdk: str | None = None) -> _Repo:
        repo = _Repo(repo_type=repo_type, repo_id=repo_id, private=private, created_at=_now_iso(), sdk=sdk)
        initial = self.new_commit(repo, None, {".gitattributes": DEFAULT_GITATTRIBUTES}, "initial commit")
        repo.branches["main"] = initial.oid
        self.repos[(repo_type, repo_id)] = repo
        return repo


# ------------------------------------------------------------------------------------- handler


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "TextDVAETestHub/1.0"
    timeout = 60  # seconds a keep-alive connection may stay idle

    # set on the subclass created per server
    hub: _HubState
    owner: "HubServer"

    def log_message(self, format, *args):  # noqa: A002 - signature from BaseHTTPRequestHandler
        if self.owner.verbose:
            sys.stderr.write("[hub_server] %s - %s\n" % (self.address_string(), format % args))

    # -- plumbing --------------------------------------------------------------------------

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def _read_body(self) -> bytes:
        if getattr(self, "_body", None) is not None:
            return self._body
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            body = b"".join(chunks)
        else:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length > 0 else b""
        self._body = body
        return body

    def _json_body(self):
        raw = self._read_body()
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except ValueError as e:
            raise _HTTPError(400, f"Invalid JSON body: {e}") from None

    def _send(self, status: int, body: bytes = b"", content_type: str = "application/json", headers: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _send_json(self, obj, status: int = 200, headers: dict | None = None):
        self._send(status, json.dumps(obj).encode(), headers=headers)

    def _send_error(self, err: _HTTPError):
        headers = {"X-Error-Message": err.message.encode("ascii", "replace").decode("ascii").replace("\n", " ")}
        if err.code:
            headers["X-Error-Code"] = err.code
        headers.update(err.headers)
        self._send_json({"error": err.message, **err.body}, status=err.status, headers=headers)

    def _dispatch(self, method: str):
        self._body = None
        split = urlsplit(self.path)
        raw_path = split.path
        query = parse_qs(split.query, keep_blank_values=True)
        with self.hub.lock:
            self.owner.requests_seen.append((method, raw_path))
        try:
            if method in ("POST", "PUT", "DELETE"):
                self._read_body()  # always drain the body (keep-alive safety)
            self._route(method, raw_path, query)
        except _HTTPError as err:
            self._send_error(err)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:  # pragma: no cover - a bug in the test server itself
            import traceback

            traceback.print_exc()
            try:
                self._send_error(_HTTPError(500, f"Internal test-hub error: {e!r}"))
            except Exception:
                self.close_connection = True

    # -- auth ------------------------------------------------------------------------------

    def _auth(self) -> str | None:
        """Returns the permission of the request's token ("read"/"write") or None if anonymous."""
        header = self.headers.get("Authorization")
        if not header:
            return None
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or token not in self.hub.tokens:
            raise _HTTPError(401, "Invalid credentials in Authorization header")
        return self.hub.tokens[token]

    def _require_write(self, what: str) -> None:
        perm = self._auth()
        if perm is None:
            raise _HTTPError(401, f"You must be authenticated to {what}. Pass a token (Authorization: Bearer ...).")
        if perm != "write":
            raise _HTTPError(403, f"You don't have the rights to {what}: this token has read-only access (it needs write access).")

    def _get_repo(self, repo_type: str, repo_id: str, *, write: str | None = None) -> _Repo:
        """Look up a repo, enforcing visibility (read) or write permission."""
        if write is not None:
            self._require_write(f"{write} {repo_id}")
            perm = "write"
        else:
            perm = self._auth()
        repo = self.hub.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and perm is None):
            status = 401 if perm is None else 404
            raise _HTTPError(status, f"Repository Not Found for {repo_type} '{repo_id}'.", code="RepoNotFound")
        return repo

    @staticmethod
    def _resolve(repo: _Repo, revision: str) -> _Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise _HTTPError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")
        return commit

    # -- routing ---------------------------------------------------------------------------

    def _route(self, method: str, raw_path: str, query: dict):
        segments = raw_path.split("/")[1:]  # raw (still quoted) segments
        if segments and segments[0] == "api":
            return self._route_api(method, segments[1:], query)
        # /[spaces/]ns/name/resolve/rev/path...
        repo_type = "model"
        if segments and segments[0] == "spaces" and len(segments) > 4:
            repo_type = REPO_TYPES[segments[0]]
            segments = segments[1:]
        if len(segments) >= 5 and segments[2] == "resolve" and method in ("GET", "HEAD"):
            repo_id = f"{unquote(segments[0])}/{unquote(segments[1])}"
            revision = unquote(segments[3])
            path = "/".join(unquote(s) for s in segments[4:])
            return self._resolve_file(repo_type, repo_id, revision, path)
        if method == "GET" and len(segments) == 2 and all(segments):  # repo "web page"
            repo = self._get_repo(repo_type, f"{unquote(segments[0])}/{unquote(segments[1])}")
            return self._send(200, f"<html><body>{repo.repo_id}</body></html>".encode(), "text/html")
        raise _HTTPError(404, f"Not found: {raw_path}")

    def _route_api(self, method: str, seg: list[str], query: dict):
        if seg == ["whoami-v2"] and method == "GET":
            return self._whoami()
        if seg == ["repos", "create"] and method == "POST":
            return self._create_repo()
        if seg == ["repos", "delete"] and method == "DELETE":
            return self._delete_repo()
        if seg == ["validate-yaml"] and method == "POST":
            return self._validate_yaml()
        if len(seg) >= 1 and seg[0] in REPO_TYPES:
            repo_type = REPO_TYPES[seg[0]]
            if len(seg) < 3:
                raise _HTTPError(404, "Repository Not Found (expected namespace/name).", code="RepoNotFound")
            repo_id = f"{unquote(seg[1])}/{unquote(seg[2])}"
            rest = seg[3:]
            action = rest[0] if rest else ""
            args = [unquote(s) for s in rest[1:]]
            if method == "GET" and action == "":
                return self._repo_info(repo_type, repo_id, "main")
            if method == "GET" and action == "revision" and len(args) == 1:
                return self._repo_info(repo_type, repo_id, args[0])
            if method == "GET" and action == "tree" and len(args) >= 1:
                return self._tree(repo_type, repo_id, args[0], "/".join(args[1:]), query)
            if method == "POST" and action == "paths-info" and len(args) == 1:
                return self._paths_info(repo_type, repo_id, args[0])
            if method == "GET" and action == "commits" and len(args) == 1:
                return self._commits(repo_type, repo_id, args[0])
            if method == "GET" and action == "refs" and not args:
                return self._refs(repo_type, repo_id, query)
            if method == "POST" and action == "preupload" and len(args) == 1:
                return self._preupload(repo_type, repo_id, args[0], query)
            if method == "POST" and action == "commit" and len(args) == 1:
                return self._commit(repo_type, repo_id, args[0], query)
            if method == "POST" and action == "branch" and len(args) == 1:
                return self._branch(repo_type, repo_id, args[0])
            # unsupported repo API (e.g. discussions, xet tokens, LFS): say so clearly
            self._get_repo(repo_type, repo_id)
            raise _HTTPError(501 if method != "GET" else 404, f"Not implemented by the test hub: {method} /api/{'/'.join(seg)}")
        raise _HTTPError(404, f"Not found: /api/{'/'.join(seg)}")

    # -- endpoints ---------------------------------------------------------------------------

    def _whoami(self):
        perm = self._auth()
        if perm is None:
            raise _HTTPError(401, "You must be authenticated to access this resource.")
        token = self.headers["Authorization"].partition(" ")[2].strip()
        self._send_json(
            {
                "type": "user",
                "id": "0" * 24,
                "name": USERNAME,
                "fullname": "Test User",
                "email": "user@example.invalid",
                "emailVerified": True,
                "isPro": False,
                "orgs": [],
                "auth": {
                    "type": "access_token",
                    "accessToken": {"displayName": token[:8], "role": perm, "createdAt": _now_iso()},
                },
            }
        )

    def _create_repo(self):
        payload = self._json_body()
        self._require_write("create a repository")
        repo_type = payload.get("type") or "model"
        if repo_type not in URL_PREFIXES:
            raise _HTTPError(400, f"Invalid repo type: {repo_type}")
        name = payload.get("name")
        namespace = payload.get("organization") or USERNAME
        if not isinstance(name, str) or not valid_repo_name(name) or not valid_repo_name(namespace):
            raise _HTTPError(400, f"Invalid repo name '{namespace}/{name}': expected namespace/name with letters, digits, '-', '_', '.'.")
        repo_id = f"{namespace}/{name}"
        visibility = payload.get("visibility")
        private = bool(payload.get("private")) or visibility in ("private", "protected")
        sdk = payload.get("sdk")
        if repo_type == "space" and sdk not in ("gradio", "docker", "static"):
            raise _HTTPError(400, f"Invalid sdk {sdk!r} for a Space: expected gradio, docker or static")
        with self.hub.lock:
            existing = self.hub.repos.get((repo_type, repo_id))
            if existing is not None:
                # the client (create_repo(exist_ok=True)) reads "url" from this 409 body
                raise _HTTPError(409, f"You already created this {repo_type} repo", body={"url": self.hub.repo_url(existing)})
            repo = self.hub.create_repo(repo_type, repo_id, private, sdk if repo_type == "space" else None)
        url = self.hub.repo_url(repo)
        self._send_json({"url": url, "name": repo_id, "id": repo_id})

    def _delete_repo(self):
        payload = self._json_body()
        self._require_write("delete a repository")
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or USERNAME}/{payload.get('name')}"
        with self.hub.lock:
            if self.hub.repos.pop((repo_type, repo_id), None) is None:
                raise _HTTPError(404, f"Repository Not Found for {repo_type} '{repo_id}'.", code="RepoNotFound")
        self._send_json({})

    def _validate_yaml(self):
        payload = self._json_body()
        content = payload.get("content") or ""
        errors = []
        lines = content.replace("\r\n", "\n").split("\n")
        if lines and lines[0].strip() == "---":
            try:
                end = next(i for i in range(1, len(lines)) if lines[i].strip() == "---")
            except StopIteration:
                errors.append({"message": "Unterminated YAML front matter in README.md"})
            else:
                try:
                    import yaml  # optional: only if the test environment has PyYAML
                except ImportError:
                    yaml = None
                if yaml is not None:
                    try:
                        data = yaml.safe_load("\n".join(lines[1:end]))
                        if data is not None and not isinstance(data, dict):
                            errors.append({"message": "YAML front matter must be a mapping"})
                    except yaml.YAMLError as e:
                        errors.append({"message": f"Invalid YAML: {e}"})
        if errors:
            return self._send_json({"errors": errors, "warnings": []}, status=400)
        self._send_json({"errors": [], "warnings": []})

    def _repo_info(self, repo_type: str, repo_id: str, revision: str):
        with self.hub.lock:
            repo = self._get_repo(repo_type, repo_id)
            commit = self._resolve(repo, revision)
            info = {
                "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
                "id": repo_id,
                "author": repo_id.split("/")[0],
                "sha": commit.oid,
                "private": repo.private,
                "gated": False,
                "disabled": False,
                "createdAt": repo.created_at,
                "lastModified": commit.date,
                "tags": [],
                "downloads": 0,
                "likes": 0,
                "siblings": [{"rfilename": p} for p in sorted(commit.files)],
            }
            if repo_type == "model":
                info["modelId"] = repo_id
            if repo_type == "space":
                info["sdk"] = repo.sdk
        self._send_json(info)

    @staticmethod
    def _file_entry(path: str, data: bytes, commit: _Commit | None = None, expand: bool = False) -> dict:
        entry = {"type": "file", "oid": git_blob_oid(data), "size": len(data), "path": path}
        if expand and commit is not None:
            entry["lastCommit"] = {"id": commit.oid, "title": commit.title, "date": commit.date}
        return entry

    @staticmethod
    def _dirs_of(files: dict[str, bytes]) -> set[str]:
        dirs = set()
        for path in files:
            parts = path.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                dirs.add("/".join(parts[:i]))
        return dirs

    def _tree(self, repo_type: str, repo_id: str, revision: str, path: str, query: dict):
        recursive = (query.get("recursive", ["false"])[0] or "").lower() in ("1", "true")
        expand = (query.get("expand", ["false"])[0] or "").lower() in ("1", "true")
        path = path.strip("/")
        with self.hub.lock:
            repo = self._get_repo(repo_type, repo_id)
            commit = self._resolve(repo, revision)
            files = commit.files
            dirs = self._dirs_of(files)
            if path and path not in dirs:
                if path in files:
                    raise _HTTPError(400, f"'{path}' is a file, not a directory")
                raise _HTTPError(404, f"Entry not found: {path}", code="EntryNotFound",
                                 headers={"X-Repo-Commit": commit.oid})
            prefix = f"{path}/" if path else ""
            out = []
            for d in sorted(dirs):
                if d.startswith(prefix) and (recursive or "/" not in d[len(prefix):]):
                    out.append({"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d})
            for p in sorted(files):
                if p.startswith(prefix) and (recursive or "/" not in p[len(prefix):]):
                    out.append(self._file_entry(p, files[p], commit, expand))
        self._send_json(out)

    def _paths_info(self, repo_type: str, repo_id: str, revision: str):
        raw = self._read_body().decode()
        ctype = self.headers.get("Content-Type", "")
        if "json" in ctype:
            form = json.loads(raw or "{}")
            paths = form.get("paths", [])
            expand = bool(form.get("expand"))
        else:
            form = parse_qs(raw, keep_blank_values=True)
            paths = form.get("paths", [])
            expand = (form.get("expand", ["false"])[0]).lower() in ("1", "true")
        with self.hub.lock:
            repo = self._get_repo(repo_type, repo_id)
            commit = self._resolve(repo, revision)
            dirs = self._dirs_of(commit.files)
            out = []
            for p in paths:
                p = p.strip("/")
                if p in commit.files:
                    out.append(self._file_entry(p, commit.files[p], commit, expand))
                elif p in dirs:
                    out.append({"type": "directory", "oid": hashlib.sha1(p.encode()).hexdigest(), "size": 0, "path": p})
        self._send_json(out)

    def _commits(self, repo_type: str, repo_id: str, revision: str):
        with self.hub.lock:
            repo = self._get_repo(repo_type, repo_id)
            commit = self._resolve(repo, revision)
            out = []
            while commit is not None:
                out.append({
                    "id": commit.oid,
                    "title": commit.title,
                    "message": commit.message,
                    "date": commit.date,
                    "authors": [{"user": commit.author}],
                })
                commit = repo.commits.get(commit.parent) if commit.parent else None
        self._send_json(out)

    def _refs(self, repo_type: str, repo_id: str, query: dict):
        with self.hub.lock:
            repo = self._get_repo(repo_type, repo_id)
            data = {
                "branches": [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": o} for n, o in repo.branches.items()],
                "tags": [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": o} for n, o in repo.tags.items()],
                "converts": [],
            }
        self._send_json(data)

    def _preupload(self, repo_type: str, repo_id: str, revision: str, query: dict):
        payload = self._json_body()
        with self.hub.lock:
            repo = self._get_repo(repo_type, repo_id, write="upload files to")
            commit = self._resolve(repo, revision)
            files = payload.get("files")
            if not isinstance(files, list):
                raise _HTTPError(400, "preupload: 'files' must be a list")
            out = []
            for f in files:
                path = f.get("path")
                if not isinstance(path, str):
                    raise _HTTPError(400, "preupload: each file needs a 'path'")
                existing = commit.files.get(path)
                out.append({
                    "path": path,
                    "uploadMode": "regular",  # keep content inline: no LFS/Xet storage server here
                    "shouldIgnore": False,
                    "oid": git_blob_oid(existing) if existing is not None else None,
                })
        self._send_json({"files": out, "commitOid": commit.oid})

    def _commit(self, repo_type: str, repo_id: str, revision: str, query: dict):
        raw = self._read_body()
        if query.get("create_pr", ["0"])[0] in ("1", "true"):
            raise _HTTPError(501, "pull requests are not implemented by the test hub")
        try:
            items = [json.loads(line) for line in raw.splitlines() if line.strip()]  # NDJSON, as huggingface_hub sends
        except ValueError as e:
            raise _HTTPError(400, f"Invalid commit payload: {e}") from None
        if not items or items[0].get("key") != "header":
            raise _HTTPError(400, "Commit payload must start with a 'header' line")
        header = items[0].get("value") or {}
        summary = header.get("summary") or ""
        if not summary.strip():
            raise _HTTPError(400, "Commit summary (message) is required")

        with self.hub.lock:
            repo = self._get_repo(repo_type, repo_id, write="commit to")
            base = self._resolve(repo, revision)
            parent_commit = header.get("parentCommit")
            if parent_commit and not base.oid.startswith(parent_commit):
                raise _HTTPError(412, f"A commit has happened since. Please refresh and try again. (parentCommit {parent_commit} is not the head of {revision})")
            files = dict(base.files)
            for item in items[1:]:
                key, value = item.get("key"), item.get("value") or {}
                path = value.get("path", "")
                if not isinstance(path, str) or not path or path.startswith("/") or ".." in path.split("/"):
                    raise _HTTPError(400, f"Invalid path in commit: {path!r}")
                if key == "file":
                    content = value.get("content", "")
                    if value.get("encoding", "base64") == "base64":
                        try:
                            data = base64.b64decode(content, validate=False)
                        except ValueError as e:
                            raise _HTTPError(400, f"Invalid base64 for {path}: {e}") from None
                    else:
                        data = content.encode()
                    if path in self._dirs_of(files):
                        raise _HTTPError(400, f"Cannot add file '{path}': a folder with this name exists")
                    files[path] = data
                elif key == "deletedFile":
                    if path not in files:
                        raise _HTTPError(404, f"A file with this name doesn't exist: {path}", code="EntryNotFound")
                    del files[path]
                elif key == "deletedFolder":
                    prefix = path.rstrip("/") + "/"
                    doomed = [p for p in files if p.startswith(prefix)]
                    if not doomed:
                        raise _HTTPError(404, f"A folder with this name doesn't exist: {path}", code="EntryNotFound")
                    for p in doomed:
                        del files[p]
                elif key == "lfsFile":
                    raise _HTTPError(422, f"LFS/Xet files are not supported by the test hub ({path}); preupload answers 'regular'.")
                else:
                    raise _HTTPError(400, f"Unknown commit operation key: {key!r}")
            commit = self.hub.new_commit(repo, base, files, summary, header.get("description") or "")
            if revision in repo.branches:
                repo.branches[revision] = commit.oid
            elif revision.startswith("refs/heads/") and revision[11:] in repo.branches:
                repo.branches[revision[11:]] = commit.oid
            else:
                raise _HTTPError(400, f"Cannot commit to '{revision}': not a branch")
            url = f"{self.hub.repo_url(repo)}/commit/{commit.oid}"
        self._send_json({"success": True, "commitOid": commit.oid, "commitUrl": url, "pullRequestUrl": None})

    def _branch(self, repo_type: str, repo_id: str, branch: str):
        payload = self._json_body()
        with self.hub.lock:
            repo = self._get_repo(repo_type, repo_id, write="create branches in")
            if branch in repo.branches:
                raise _HTTPError(409, f"Reference already exists: refs/heads/{branch}")
            if not branch or branch.startswith(("refs/", "/")) or ".." in branch or " " in branch:
                raise _HTTPError(400, f"Invalid branch name: {branch!r}")
            start = self._resolve(repo, payload.get("startingPoint") or "main")
            repo.branches[branch] = start.oid
        self._send_json({})

    def _resolve_file(self, repo_type: str, repo_id: str, revision: str, path: str):
        with self.hub.lock:
            repo = self._get_repo(repo_type, repo_id)
            commit = self._resolve(repo, revision)
            data = commit.files.get(path)
            if data is None:
                raise _HTTPError(404, "Entry not found", code="EntryNotFound", headers={"X-Repo-Commit": commit.oid})
        oid = git_blob_oid(data)
        headers = {
            "X-Repo-Commit": commit.oid,
            "ETag": f'"{oid}"',
            "Content-Disposition": f'inline; filename*=UTF-8\'\'{quote(path.rsplit("/", 1)[-1])}',
        }
        self._send(200, data, "application/octet-stream", headers)


# -------------------------------------------------------------------------------------- server


class HubServer:
    """An in-memory Hub on ``127.0.0.1`` (ephemeral port by default), served from a daemon thread.

    ``tokens`` maps a token to ``"write"`` or ``"read"``. Use as a context manager (or call
    ``start()`` / ``stop()``); ``url`` is set once started.
    """

    def __init__(self, tokens: dict[str, str] | None = None, *, port: int = 0, verbose: bool = False):
        tokens = {"hf_test": "write"} if tokens is None else dict(tokens)
        for tok, perm in tokens.items():
            if perm not in ("read", "write"):
                raise ValueError(f"token {tok!r}: permission must be 'read' or 'write', got {perm!r}")
        self.port = port
        self.verbose = verbose
        self.url: str | None = None
        self.requests_seen: list[tuple[str, str]] = []
        self._hub = _HubState(tokens, lambda: self.url or "")
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> "HubServer":
        if self._httpd is not None:
            return self
        handler = type("HubHandler", (_Handler,), {"hub": self._hub, "owner": self})
        httpd = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        httpd.daemon_threads = True
        self._httpd = httpd
        host, port = httpd.server_address[:2]
        self.url = f"http://{host}:{port}"
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, name="hub-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- inspection (for assertions) -------------------------------------------------------------

    def _repo(self, repo_id: str, repo_type: str) -> _Repo:
        repo = self._hub.repos.get((repo_type, repo_id))
        if repo is None:
            raise KeyError(f"no {repo_type} repo {repo_id!r} on the test hub (have: {sorted(r for _, r in self._hub.repos)})")
        return repo

    def files(self, repo_id: str, revision: str = "main", *, repo_type: str = "model") -> dict[str, bytes]:
        """Snapshot ``{path: content}`` of a repo at ``revision`` (branch, tag, ``refs/pr/N`` or sha)."""
        with self._hub.lock:
            repo = self._repo(repo_id, repo_type)
            commit = repo.resolve(revision)
            if commit is None:
                raise KeyError(f"revision {revision!r} not found in {repo_id} (branches: {sorted(repo.branches)})")
            return dict(commit.files)

    def commits(self, repo_id: str, revision: str = "main", *, repo_type: str = "model") -> list[dict]:
        """History of ``revision``, newest first: ``{"oid", "title", "message", "changed"}`` where
        ``changed`` is the sorted list of paths added/modified/deleted by that commit."""
        with self._hub.lock:
            repo = self._repo(repo_id, repo_type)
            commit = repo.resolve(revision)
            if commit is None:
                raise KeyError(f"revision {revision!r} not found in {repo_id}")
            out = []
            while commit is not None:
                parent = repo.commits.get(commit.parent) if commit.parent else None
                before = parent.files if parent else {}
                changed = sorted(p for p in set(before) | set(commit.files) if before.get(p) != commit.files.get(p))
                out.append({"oid": commit.oid, "title": commit.title, "message": commit.message, "changed": changed})
                commit = parent
            return out

    def branches(self, repo_id: str, *, repo_type: str = "model") -> dict[str, str]:
        """``{branch: head commit oid}``."""
        with self._hub.lock:
            return dict(self._repo(repo_id, repo_type).branches)

    def repo_ids(self, repo_type: str = "model") -> list[str]:
        with self._hub.lock:
            return sorted(r for t, r in self._hub.repos if t == repo_type)

    def space_sdk(self, repo_id: str) -> str | None:
        """The SDK a Space was created with."""
        with self._hub.lock:
            return self._repo(repo_id, "space").sdk

    def is_private(self, repo_id: str, *, repo_type: str = "model") -> bool:
        with self._hub.lock:
            return self._repo(repo_id, repo_type).private


# ------------------------------------------------------------------------------------- helpers

_REPO_ROOT = Path(__file__).resolve().parent.parent


def hub_env(
    server: "HubServer | str",
    *,
    token: str | None = "hf_test",
    hf_home: str | os.PathLike | None = None,
    **extra_env: str | None,
) -> dict[str, str]:
    """The environment for a child process wired to ``server`` (a HubServer or an endpoint URL).

    ``HF_ENDPOINT``, ``HF_TOKEN=token`` (unset if ``token`` is None), ``HF_HOME=hf_home`` (when given),
    telemetry and progress bars off, and every other inherited ``HF_*`` / ``HUGGINGFACE_*`` variable
    removed. ``extra_env`` adds variables (a ``None`` value removes one). The repo root is prepended to
    ``PYTHONPATH`` so ``import textdvae`` works.
    """
    endpoint = server if isinstance(server, str) else server.url
    if not endpoint:
        raise ValueError("server is not started (use `with HubServer() as hub:`)")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HF_", "HUGGINGFACE_")) and k not in ("TRANSFORMERS_OFFLINE", "TRANSFORMERS_CACHE")
    }
    env.update(
        HF_ENDPOINT=endpoint,
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_HUB_DISABLE_SYMLINKS_WARNING="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
    )
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONPATH"] = os.pathsep.join([str(_REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    if token is not None:
        env["HF_TOKEN"] = token
    if hf_home is not None:
        env["HF_HOME"] = str(hf_home)
    for key, value in extra_env.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = str(value)
    return env


def _run_child(
    cmd: list[str],
    server: "HubServer | str",
    *,
    token: str | None,
    hf_home: str | os.PathLike | None,
    timeout: float,
    cwd: str | os.PathLike | None,
    extra_env: dict,
) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="hf_home_") as tmp:
        env = hub_env(server, token=token, hf_home=hf_home if hf_home is not None else tmp, **extra_env)
        return subprocess.run(
            cmd,
            env=env,
            cwd=str(cwd) if cwd is not None else None,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def tree_digest(root: Path) -> dict[str, str]:
    """{relative path: sha256:mtime:size} of every file under root: detects any rewrite, not only a change."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file():
            st = p.stat()
            out[rel] = f"{hashlib.sha256(p.read_bytes()).hexdigest()}:{st.st_mtime_ns}:{st.st_size}"
        else:
            out[rel + "/"] = "dir"
    return out


RESULT_MARK = "@@RESULT@@"  # a child process prints its result as one JSON line after this mark


def child_result(proc: subprocess.CompletedProcess) -> dict:
    """Parse the JSON a child printed after RESULT_MARK; fail with its output otherwise."""
    assert proc.returncode == 0, f"child failed (rc={proc.returncode})\nSTDOUT:\n{proc.stdout}\nSTDERR:\n{proc.stderr}"
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK):])
    raise AssertionError(f"no result line in child output\nSTDOUT:\n{proc.stdout}\nSTDERR:\n{proc.stderr}")


def run_with_hub(
    code: str,
    server: "HubServer | str",
    *,
    token: str | None = "hf_test",
    hf_home: str | os.PathLike | None = None,
    timeout: float = 300,
    cwd: str | os.PathLike | None = None,
    **extra_env: str | None,
) -> subprocess.CompletedProcess:
    """Run ``python -c code`` in a fresh interpreter wired to ``server`` (a HubServer or an endpoint URL).

    The child's environment is :func:`hub_env`, with a temporary ``HF_HOME`` unless ``hf_home`` is
    given. Returns the ``CompletedProcess`` (text mode, stdout/stderr captured); never raises on a
    non-zero exit code.
    """
    return _run_child([sys.executable, "-c", code], server, token=token, hf_home=hf_home, timeout=timeout, cwd=cwd,
                      extra_env=extra_env)


def run_cli_with_hub(
    args: list[str],
    server: "HubServer | str",
    *,
    token: str | None = "hf_test",
    hf_home: str | os.PathLike | None = None,
    timeout: float = 300,
    cwd: str | os.PathLike | None = None,
    **extra_env: str | None,
) -> subprocess.CompletedProcess:
    """Run ``python -m textdvae ARGS...`` (the command line) like :func:`run_with_hub` runs code."""
    return _run_child([sys.executable, "-m", "textdvae", *map(str, args)], server, token=token, hf_home=hf_home,
                      timeout=timeout, cwd=cwd, extra_env=extra_env)
