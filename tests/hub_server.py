"""A small Hugging Face Hub-compatible HTTP server for offline tests (standard library only).

It speaks the wire protocol that ``huggingface_hub`` 2.x uses for the flows this project needs:
create/delete repos, commits (regular files inline, large/binary files through the legacy git-LFS "basic"
transfer), repo info, tree / paths-info listings and ``/resolve`` downloads (HEAD + GET with ``Range``).
Xet is not offered, so clients must run with ``HF_HUB_DISABLE_XET=1`` (otherwise they ask for a xet write
token this server cannot give).

Usage::

    with HubServer(tmp_path / "hub", token="hf_test_token") as hub:
        hub.endpoint    # "http://127.0.0.1:<free port>"
        hub.user        # namespace of the token owner ("test-user"); any namespace may be written to
        hub.requests    # [(method, path, status), ...] for debugging / assertions

Pointing the clients at it. ``huggingface_hub`` and ``datasets`` read ``HF_ENDPOINT`` once, at import time, so
either

* run the client code in a subprocess started with ``HF_ENDPOINT=hub.endpoint``, ``HF_HUB_DISABLE_XET=1``
  and ``HF_TOKEN=hub.token`` in its environment (``HF_HUB_OFFLINE`` unset), or
* patch the already-imported modules in-process with :func:`point_hf_clients_at` (a pytest ``monkeypatch``
  undoes it at teardown). What has to change, found by reading the installed sources:

  - ``huggingface_hub.constants.ENDPOINT`` and ``HUGGINGFACE_CO_URL_TEMPLATE`` (read at call time by HfApi(),
    hf_hub_download, hf_hub_url, the LFS/commit helpers and HfFileSystem);
  - ``huggingface_hub.hf_api.api.endpoint``: the module-level ``HfApi()`` behind the functions
    ``huggingface_hub.create_repo``, ``upload_folder``, ``model_info``... (used by transformers'
    ``push_to_hub``) froze the endpoint at import;
  - ``huggingface_hub.constants.HF_HUB_DISABLE_XET`` (and ``HF_HUB_OFFLINE``), also frozen at import;
  - ``datasets.config.HF_ENDPOINT`` and ``HUB_DATASETS_URL`` (datasets passes them explicitly to HfApi and
    HfFileSystem);
  - fsspec caches ``HfFileSystem`` instances (with their endpoint and listing cache): give it a fresh cache;
  - the token comes from ``HF_TOKEN``, which ``huggingface_hub`` reads at call time.

  - transformers caches one ``HfApi`` in ``transformers.utils.hub._hf_api`` on first use: reset it to None.

Behaviour worth knowing: a request carrying a wrong ``Authorization: Bearer`` token gets 401 ``Invalid
credentials in Authorization header`` on every route, reads included (as on the real Hub); without a token,
public repos can be read but not written. Private repos look missing (404 ``RepoNotFound``) without a valid
token. Files are stored under ``storage_dir/<type>s/<namespace>/<name>/`` (``repo.json`` with branches and
commits, ``objects/<sha256>``), so a new server on the same directory sees what was pushed before. Pull
requests, xet and the dataset viewer are not implemented: unknown routes answer a JSON 404.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import threading
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

INVALID_CREDENTIALS = "Invalid credentials in Authorization header"
# Like the Hub: files bigger than this, binary files and files matching the default .gitattributes go to LFS.
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
LFS_EXTENSIONS = (
    ".7z .arrow .bin .bz2 .ckpt .gz .h5 .joblib .model .msgpack .npy .npz .onnx .ot .parquet .pb .pickle"
    " .pkl .pt .pth .rar .safetensors .tar .tflite .tgz .xz .zip .zst .png .jpg .jpeg .webp .gif .tiff .wav"
).split()
GITATTRIBUTES = "".join(f"*{ext} filter=lfs diff=lfs merge=lfs -text\n" for ext in LFS_EXTENSIONS).encode()

_TYPE = r"(?P<type>models|datasets|spaces)"
_PREFIX = r"(?:(?P<type>datasets|spaces)/)?"  # models have no URL prefix outside /api
_ID = r"(?P<ns>[^/]+)/(?P<name>[^/]+?)"
_REV = r"(?P<rev>[^/]+)"  # clients send revisions url-quoted with safe="" (refs%2Fpr%2F1)


class HubError(Exception):
    """An error answered the way the Hub does: JSON body plus X-Error-Code / X-Error-Message headers."""

    def __init__(self, status: int, message: str, code: str | None = None, headers=None, **body_fields):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers, self.extra = headers or {}, body_fields


def _git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _is_true(value) -> bool:
    return str(value).lower() in ("1", "true", "yes")


def _json(obj, status: int = 200, headers: dict | None = None) -> tuple[int, bytes, dict]:
    return status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})}


def _should_use_lfs(path: str, size: int, sample: bytes) -> bool:
    return size > LFS_SIZE_THRESHOLD or path.lower().endswith(tuple(LFS_EXTENSIONS)) or b"\0" in sample


class HubServer:
    def __init__(self, storage_dir: Path, token: str = "hf_test_token", user: str = "test-user"):
        self.storage_dir, self.token, self.user = Path(storage_dir), token, user
        self.requests: list[tuple[str, str, int]] = []
        self._lock = threading.RLock()  # serialises every write to repo.json
        self._httpd: ThreadingHTTPServer | None = None
        self._routes = [
            (("GET",), r"/api/whoami-v2", self._whoami),
            (("GET",), r"/api/agent-harnesses", lambda req: _json({"standardEnvVars": [], "harnesses": {}})),
            (("GET", "HEAD", "POST"), r"/api/telemetry/.*", lambda req: _json({})),
            (("POST",), r"/api/validate-yaml", lambda req: _json({"errors": [], "warnings": []})),
            (("POST",), r"/api/repos/create", self._create_repo),
            (("DELETE",), r"/api/repos/delete", self._delete_repo),
            (("GET",), rf"/api/{_TYPE}/{_ID}(?:/revision/{_REV})?", self._repo_info),
            (("GET",), rf"/api/{_TYPE}/{_ID}/tree/{_REV}(?:/(?P<path>.*))?", self._tree),
            (("POST",), rf"/api/{_TYPE}/{_ID}/paths-info/{_REV}", self._paths_info),
            (("GET",), rf"/api/{_TYPE}/{_ID}/refs", self._refs),
            (("POST",), rf"/api/{_TYPE}/{_ID}/branch/(?P<branch>[^/]+)", self._create_branch),
            (("POST",), rf"/api/{_TYPE}/{_ID}/preupload/{_REV}", self._preupload),
            (("POST",), rf"/api/{_TYPE}/{_ID}/commit/{_REV}", self._commit),
            (("POST",), rf"/{_PREFIX}{_ID}\.git/info/lfs/objects/batch", self._lfs_batch),
            # Upload hrefs handed out by the batch endpoint; like S3 pre-signed URLs they carry no token.
            (("PUT",), rf"/__lfs__/{_TYPE}/{_ID}/(?P<oid>[0-9a-f]{{64}})", self._lfs_put),
            (("POST",), rf"/__lfs__/{_TYPE}/{_ID}/(?P<oid>[0-9a-f]{{64}})/verify", self._lfs_verify),
            (("GET", "HEAD"), rf"/{_PREFIX}{_ID}/resolve/{_REV}/(?P<path>.+)", self._resolve),
        ]
        self._routes = [(methods, re.compile(pattern), handler) for methods, pattern, handler in self._routes]

    # ----------------------------------------------------------------------------------------- lifecycle
    @property
    def endpoint(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> HubServer:
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.hub = self  # type: ignore[attr-defined]
        # A short poll interval keeps stop() (and so test teardown) fast.
        serve_kwargs = {"poll_interval": 0.05}
        threading.Thread(target=self._httpd.serve_forever, kwargs=serve_kwargs, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------------ dispatch
    def dispatch(self, method: str, raw_path: str, headers, body: bytes) -> tuple[int, bytes, dict]:
        url = urlsplit(raw_path)
        req = _Request(method, {k: v[-1] for k, v in parse_qs(url.query).items()}, headers, body)
        try:
            auth = headers.get("Authorization")
            if auth and auth != f"Bearer {self.token}":
                raise HubError(401, INVALID_CREDENTIALS)
            req.authed = auth is not None
            result = self._route(req, url.path)
        except (KeyError, ValueError, TypeError) as err:
            # A malformed payload: answer 400, not 500, which the client would retry with backoff.
            result = self._error_response(HubError(400, f"Malformed request: {err!r}"))
        except HubError as err:
            result = self._error_response(err)
        self.requests.append((method, url.path, result[0]))
        return result

    def _route(self, req: _Request, path: str) -> tuple[int, bytes, dict]:
        for methods, pattern, handler in self._routes:
            match = pattern.fullmatch(path)
            if match and req.method in methods:
                return handler(req, **self._route_args(match.groupdict()))
        raise HubError(404, "Sorry, we can't find the page you are looking for.")

    @staticmethod
    def _error_response(err: HubError) -> tuple[int, bytes, dict]:
        status, payload, headers = _json({"error": err.message, **err.extra}, err.status, err.headers)
        # huggingface_hub maps errors from these two headers; header values must stay one ASCII line.
        headers["X-Error-Message"] = " ".join(err.message.split()).encode("ascii", "replace").decode()
        if err.code:
            headers["X-Error-Code"] = err.code
        return status, payload, headers

    @staticmethod
    def _route_args(groups: dict) -> dict:
        """Turn regex groups into handler kwargs: repo_type ("model"...), repo_id and unquoted rev/path."""
        args = {k: unquote(v) for k, v in groups.items() if k not in ("type", "ns", "name") and v is not None}
        if "ns" in groups:
            args["repo_type"] = (groups["type"] or "models")[:-1]
            args["repo_id"] = f"{groups['ns']}/{groups['name']}"
        return args

    # --------------------------------------------------------------------------------------- storage
    def _repo_dir(self, repo_type: str, repo_id: str) -> Path:
        return self.storage_dir / f"{repo_type}s" / repo_id

    def _load(self, repo_type: str, repo_id: str) -> dict | None:
        path = self._repo_dir(repo_type, repo_id) / "repo.json"
        return json.loads(path.read_text()) if path.exists() else None

    def _save(self, repo: dict) -> None:
        path = self._repo_dir(repo["type"], repo["id"]) / "repo.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(repo))
        os.replace(tmp, path)  # readers never see a half-written file

    def _object(self, repo_type: str, repo_id: str, sha256: str) -> Path:
        return self._repo_dir(repo_type, repo_id) / "objects" / sha256

    def _store_regular(self, repo: dict, data: bytes) -> dict:
        sha256 = hashlib.sha256(data).hexdigest()
        obj = self._object(repo["type"], repo["id"], sha256)
        obj.parent.mkdir(parents=True, exist_ok=True)
        obj.write_bytes(data)
        return {"sha256": sha256, "size": len(data), "oid": _git_blob_oid(data), "lfs": False}

    @staticmethod
    def _add_commit(repo: dict, parent: str | None, files: dict, title: str, description: str = "") -> str:
        sha = hashlib.sha1(f"{parent}{title}{uuid.uuid4()}".encode()).hexdigest()
        repo["commits"][sha] = {
            "parent": parent,
            "title": title,
            "message": description,
            "date": _now(),
            "files": files,
        }
        return sha

    def _visible_repo(self, req: _Request, repo_type: str, repo_id: str) -> dict:
        repo = self._load(repo_type, repo_id)
        if repo is None or (repo["private"] and not req.authed):
            raise HubError(404, "Repository not found", code="RepoNotFound")
        return repo

    def _writable_repo(self, req: _Request, repo_type: str, repo_id: str) -> dict:
        self._require_auth(req)
        return self._visible_repo(req, repo_type, repo_id)

    @staticmethod
    def _require_auth(req: _Request) -> None:
        if not req.authed:
            raise HubError(401, "You must be authenticated to access this endpoint")

    @staticmethod
    def _resolve_rev(repo: dict, rev: str) -> str:
        rev = rev.removeprefix("refs/heads/")
        if rev in repo["branches"]:
            return repo["branches"][rev]
        matches = [sha for sha in repo["commits"] if len(rev) >= 7 and sha.startswith(rev)]
        if len(matches) != 1:
            raise HubError(404, f"Invalid rev id: {rev}", code="RevisionNotFound")
        return matches[0]

    def _repo_url(self, repo_type: str, repo_id: str) -> str:
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        return f"{self.endpoint}/{prefix}{repo_id}"

    # ------------------------------------------------------------------------------------ account & repos
    def _whoami(self, req: _Request):
        self._require_auth(req)
        return _json(
            {
                "type": "user",
                "id": "0" * 24,
                "name": self.user,
                "fullname": "Test User",
                "orgs": [],
                "email": f"{self.user}@example.com",
                "emailVerified": True,
                "isPro": False,
                "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}},
            }
        )

    def _create_repo(self, req: _Request):
        self._require_auth(req)
        body = json.loads(req.body or b"{}")
        repo_type = body.get("type") or "model"
        repo_id = f"{body.get('organization') or self.user}/{body['name']}"
        private = body["private"] if "private" in body else body.get("visibility") == "private"
        with self._lock:
            if self._load(repo_type, repo_id) is not None:
                raise HubError(
                    409, f"You already created this {repo_type} repo", url=self._repo_url(repo_type, repo_id)
                )
            # Like the Hub, a new repo has one commit holding the default .gitattributes, so "main" resolves.
            repo = {
                "id": repo_id,
                "type": repo_type,
                "private": bool(private),
                "createdAt": _now(),
                "branches": {},
                "commits": {},
            }
            files = {".gitattributes": self._store_regular(repo, GITATTRIBUTES)}
            repo["branches"]["main"] = self._add_commit(repo, None, files, "initial commit")
            self._save(repo)
        return _json({"url": self._repo_url(repo_type, repo_id), "name": repo_id, "id": repo_id})

    def _delete_repo(self, req: _Request):
        body = json.loads(req.body or b"{}")
        repo_type = body.get("type") or "model"
        repo = self._writable_repo(req, repo_type, f"{body.get('organization') or self.user}/{body['name']}")
        with self._lock:
            shutil.rmtree(self._repo_dir(repo_type, repo["id"]))
        return _json({})

    def _repo_info(self, req: _Request, repo_type: str, repo_id: str, rev: str = "main"):
        repo = self._visible_repo(req, repo_type, repo_id)
        sha = self._resolve_rev(repo, rev)
        commit = repo["commits"][sha]
        siblings = []
        for path, entry in sorted(commit["files"].items()):
            sibling = {"rfilename": path}
            if _is_true(req.query.get("blobs")):  # files_metadata=True
                sibling.update(size=entry["size"], blobId=entry["oid"])
                if entry["lfs"]:
                    pointer_size = len(_lfs_pointer(entry["sha256"], entry["size"]))
                    sibling["lfs"] = {"sha256": entry["sha256"], "size": entry["size"], "pointerSize": pointer_size}
            siblings.append(sibling)
        return _json(
            {
                "_id": sha[:24],
                "id": repo_id,
                "author": repo_id.split("/")[0],
                "sha": sha,
                "private": repo["private"],
                "gated": False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "createdAt": repo["createdAt"],
                "lastModified": commit["date"],
                "siblings": siblings,
                "usedStorage": sum(e["size"] for e in commit["files"].values()),
            }
        )

    def _refs(self, req: _Request, repo_type: str, repo_id: str):
        repo = self._visible_repo(req, repo_type, repo_id)
        branches = [
            {"name": name, "ref": f"refs/heads/{name}", "targetCommit": sha} for name, sha in repo["branches"].items()
        ]
        return _json({"branches": branches, "tags": [], "converts": []})

    def _create_branch(self, req: _Request, repo_type: str, repo_id: str, branch: str):
        with self._lock:
            repo = self._writable_repo(req, repo_type, repo_id)
            if branch in repo["branches"]:
                raise HubError(409, "Reference already exists")
            start = (json.loads(req.body or b"{}") or {}).get("startingPoint") or "main"
            repo["branches"][branch] = self._resolve_rev(repo, start)
            self._save(repo)
        return _json({})

    # ------------------------------------------------------------------------------------------ listings
    def _entry_json(self, repo: dict, sha: str, path: str, expand: bool) -> dict:
        files = repo["commits"][sha]["files"]
        if path in files:
            entry = files[path]
            out = {"type": "file", "path": path, "size": entry["size"], "oid": entry["oid"]}
            if entry["lfs"]:
                pointer_size = len(_lfs_pointer(entry["sha256"], entry["size"]))
                out["lfs"] = {"oid": entry["sha256"], "size": entry["size"], "pointerSize": pointer_size}
        else:
            out = {
                "type": "directory",
                "path": path,
                "size": 0,
                "oid": hashlib.sha1(f"{sha}:{path}".encode()).hexdigest(),
            }
        if expand:
            # The last commit touching a file: walk back while the parent still has the same entry.
            last = sha
            parent = repo["commits"][last]["parent"]
            while path in files and parent and repo["commits"][parent]["files"].get(path) == files[path]:
                last, parent = parent, repo["commits"][parent]["parent"]
            commit = repo["commits"][last]
            out["lastCommit"] = {"id": last, "title": commit["title"], "date": commit["date"]}
        return out

    @staticmethod
    def _folders(files: dict) -> set[str]:
        return {"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)}

    def _tree(self, req: _Request, repo_type: str, repo_id: str, rev: str, path: str = ""):
        repo = self._visible_repo(req, repo_type, repo_id)
        sha = self._resolve_rev(repo, rev)
        files = repo["commits"][sha]["files"]
        folders = self._folders(files)
        prefix = path.strip("/")
        if prefix and prefix not in folders:
            raise HubError(
                404, f"{prefix} does not exist on {rev}", code="EntryNotFound", headers={"X-Repo-Commit": sha}
            )
        recursive = _is_true(req.query.get("recursive"))
        below = [p for p in sorted(folders) + sorted(files) if not prefix or p.startswith(prefix + "/")]
        depth = prefix.count("/") + 1 if prefix else 0
        listed = [p for p in below if recursive or p.count("/") == depth]
        # The whole listing fits in one page: no "Link: <...>; rel=next" header.
        return _json([self._entry_json(repo, sha, p, _is_true(req.query.get("expand"))) for p in listed])

    def _paths_info(self, req: _Request, repo_type: str, repo_id: str, rev: str):
        repo = self._visible_repo(req, repo_type, repo_id)
        sha = self._resolve_rev(repo, rev)
        if req.headers.get("Content-Type", "").startswith("application/json"):
            form = json.loads(req.body)
        else:  # huggingface_hub posts a form: paths=a&paths=b&expand=False
            form = parse_qs(req.body.decode())
            form["expand"] = (form.get("expand") or ["false"])[-1]  # parse_qs gives lists
        paths = [form["paths"]] if isinstance(form.get("paths"), str) else form.get("paths", [])
        files = repo["commits"][sha]["files"]
        known = set(files) | self._folders(files)
        entries = [
            self._entry_json(repo, sha, p.strip("/"), _is_true(form.get("expand")))
            for p in paths
            if p.strip("/") in known
        ]  # missing paths are skipped, not an error
        return _json(entries)

    # -------------------------------------------------------------------------------------------- upload
    def _preupload(self, req: _Request, repo_type: str, repo_id: str, rev: str):
        repo = self._writable_repo(req, repo_type, repo_id)
        sha = self._resolve_rev(repo, rev)
        remote = repo["commits"][sha]["files"]
        answers = []
        for file in json.loads(req.body)["files"]:
            lfs = _should_use_lfs(file["path"], file["size"], base64.b64decode(file["sample"]))
            entry = remote.get(file["path"])
            # The client skips unchanged files when this oid equals its own (LFS: sha256, else git sha1).
            oid = None if entry is None else entry["sha256"] if entry["lfs"] else entry["oid"]
            answers.append(
                {"path": file["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid}
            )
        return _json({"files": answers, "commitOid": sha})

    def _lfs_batch(self, req: _Request, repo_type: str, repo_id: str):
        self._writable_repo(req, repo_type, repo_id)
        body = json.loads(req.body)
        if body.get("operation") != "upload":
            raise HubError(400, "Only the 'upload' LFS operation is supported")
        objects = []
        for obj in body["objects"]:
            answer = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if not self._object(repo_type, repo_id, obj["oid"]).exists():  # no "actions" = already uploaded
                href = f"{self.endpoint}/__lfs__/{repo_type}s/{repo_id}/{obj['oid']}"
                answer["actions"] = {
                    "upload": {"href": href, "expires_in": 3600},
                    "verify": {"href": f"{href}/verify", "expires_in": 3600},
                }
            objects.append(answer)
        return _json(
            {"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
            headers={"Content-Type": "application/vnd.git-lfs+json"},
        )

    def _lfs_put(self, req: _Request, repo_type: str, repo_id: str, oid: str):
        if self._load(repo_type, repo_id) is None:
            raise HubError(404, "Repository not found", code="RepoNotFound")
        if hashlib.sha256(req.body).hexdigest() != oid:
            raise HubError(400, "Uploaded content does not match its sha256 oid")
        obj = self._object(repo_type, repo_id, oid)
        obj.parent.mkdir(parents=True, exist_ok=True)
        obj.write_bytes(req.body)
        return 200, b"", {}

    def _lfs_verify(self, req: _Request, repo_type: str, repo_id: str, oid: str):
        self._writable_repo(req, repo_type, repo_id)
        obj = self._object(repo_type, repo_id, oid)
        if not obj.exists() or obj.stat().st_size != json.loads(req.body)["size"]:
            raise HubError(404, f"LFS object {oid} not found")
        return _json({"success": True})

    def _commit(self, req: _Request, repo_type: str, repo_id: str, rev: str):
        if _is_true(req.query.get("create_pr")):
            raise HubError(400, "Pull requests are not supported by this test server")
        lines = [json.loads(line) for line in req.body.splitlines() if line.strip()]
        if not lines or lines[0]["key"] != "header":
            raise HubError(400, "The commit payload must start with a header line")
        header = lines[0]["value"]
        with self._lock:
            repo = self._writable_repo(req, repo_type, repo_id)
            if rev not in repo["branches"]:
                raise HubError(404, f"Invalid rev id: {rev}", code="RevisionNotFound")
            head = repo["branches"][rev]
            if header.get("parentCommit") and not head.startswith(header["parentCommit"]):
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            files = dict(repo["commits"][head]["files"])
            for line in lines[1:]:
                self._apply_operation(repo, files, line["key"], line["value"])
            sha = self._add_commit(repo, head, files, header["summary"], header.get("description", ""))
            repo["branches"][rev] = sha
            self._save(repo)
        commit_url = f"{self._repo_url(repo_type, repo_id)}/commit/{sha}"
        return _json(
            {"success": True, "commitOid": sha, "commitUrl": commit_url, "hookOutput": "", "pullRequestUrl": None}
        )

    def _apply_operation(self, repo: dict, files: dict, key: str, value: dict) -> None:
        path = value["path"].strip("/")
        if key == "file":
            files[path] = self._store_regular(repo, base64.b64decode(value["content"]))
        elif key == "lfsFile":
            obj = self._object(repo["type"], repo["id"], value["oid"])
            if not obj.exists():
                raise HubError(422, f"LFS object {value['oid']} for {path} was not uploaded")
            size = obj.stat().st_size
            oid = _git_blob_oid(_lfs_pointer(value["oid"], size))
            files[path] = {"sha256": value["oid"], "size": size, "oid": oid, "lfs": True}
        elif key == "deletedFile":
            if files.pop(path, None) is None:
                raise HubError(404, f"A file with this name doesn't exist: {path}", code="EntryNotFound")
        elif key == "deletedFolder":
            for name in [p for p in files if p.startswith(path + "/")]:
                del files[name]
        else:  # e.g. "xetFile": this server never offers xet
            raise HubError(400, f"Unsupported commit operation {key!r}")

    # ------------------------------------------------------------------------------------------ download
    def _resolve(self, req: _Request, repo_type: str, repo_id: str, rev: str, path: str):
        repo = self._visible_repo(req, repo_type, repo_id)
        sha = self._resolve_rev(repo, rev)
        entry = repo["commits"][sha]["files"].get(path)
        if entry is None:  # X-Repo-Commit lets the client cache the absence of the file for this commit
            raise HubError(404, "Entry not found", code="EntryNotFound", headers={"X-Repo-Commit": sha})
        data = self._object(repo_type, repo_id, entry["sha256"]).read_bytes()
        headers = {
            "X-Repo-Commit": sha,
            "ETag": f'"{entry["oid"]}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if entry["lfs"]:  # the client prefers X-Linked-* (the LFS object) over ETag (the pointer's git oid)
            headers.update({"X-Linked-Etag": f'"{entry["sha256"]}"', "X-Linked-Size": str(entry["size"])})
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", req.headers.get("Range", "").strip())
        if not match or match.groups() == ("", ""):
            return 200, data, headers
        first, last = match.groups()
        start = int(first) if first else max(len(data) - int(last), 0)
        end = min(int(last), len(data) - 1) if first and last else len(data) - 1
        if start >= len(data) or start > end:
            raise HubError(416, "Range not satisfiable", headers={"Content-Range": f"bytes */{len(data)}"})
        headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        return 206, data[start : end + 1], headers


class _Request:
    def __init__(self, method: str, query: dict, headers, body: bytes):
        self.method, self.query, self.headers, self.body, self.authed = method, query, headers, body, False


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: every answer carries a Content-Length

    def _handle(self) -> None:
        body = self._read_body()  # always drain the body, or the next request on this connection breaks
        status, payload, headers = self.server.hub.dispatch(self.command, self.path, self.headers, body)
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _handle

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        chunks = []  # streamed uploads (file objects of unknown length) arrive chunked
        while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
            chunks.append(self.rfile.read(size))
            self.rfile.readline()
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # optional trailers
            pass
        return b"".join(chunks)

    def log_message(self, format, *args) -> None:  # keep pytest output clean; see HubServer.requests
        pass


def point_hf_clients_at(endpoint: str, monkeypatch, token: str | None = None, cache_dir: Path | None = None) -> None:
    """Make already-imported huggingface_hub / datasets / transformers talk to ``endpoint`` (see module doc).

    With ``cache_dir``, the hub cache, the datasets cache and the agent-harnesses registry go there too, so a
    test neither reads nor pollutes ``~/.cache/huggingface``.
    """
    monkeypatch.setenv("HF_ENDPOINT", endpoint)  # for subprocesses and modules imported later
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    if token is not None:
        monkeypatch.setenv("HF_TOKEN", token)
    if cache_dir is not None:
        monkeypatch.setenv("HF_HOME", str(cache_dir))

    from huggingface_hub import HfFileSystem, constants, hf_api

    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    resolve_url = endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", resolve_url)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_api.api, "endpoint", endpoint)
    # fsspec reuses HfFileSystem instances (and their listing caches) across calls: start from an empty cache.
    monkeypatch.setattr(HfFileSystem, "_cache", {})
    if cache_dir is not None:
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(Path(cache_dir) / "hub"))
        monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(Path(cache_dir) / ".agent_harnesses.json"))
    try:
        import transformers.utils.hub as transformers_hub
    except ImportError:
        pass
    else:
        # transformers caches one HfApi (with its endpoint) on first use: start without it.
        if hasattr(transformers_hub, "_hf_api"):
            monkeypatch.setattr(transformers_hub, "_hf_api", None)
    try:
        import datasets.config
    except ImportError:
        return
    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", endpoint)
    datasets_url = endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}"
    monkeypatch.setattr(datasets.config, "HUB_DATASETS_URL", datasets_url)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    if cache_dir is not None:
        datasets_cache = Path(cache_dir) / "datasets"
        monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", datasets_cache)
        monkeypatch.setattr(datasets.config, "DOWNLOADED_DATASETS_PATH", datasets_cache / "downloads")
