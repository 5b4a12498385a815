"""A local fake of the Hugging Face Hub HTTP API, for tests and offline rehearsals of `amlft publish`.

Why a server and not mocks: `amlft publish` must work with the *real* `huggingface_hub`
client, whose upload protocol (preupload -> LFS batch -> PUT -> verify -> ndjson commit)
changes between releases. A loopback server that speaks that protocol lets tests exercise
the client exactly as the real Hub would, so a client upgrade that breaks publishing
breaks the tests too. Point the client at it with `HF_ENDPOINT=<hub.endpoint>`.

What it implements (just enough for create_repo, create_commit with LFS uploads, whoami,
model_info/dataset_info, list_repo_files, hf_hub_download, card validation):

    GET  /api/whoami-v2
    POST /api/repos/create
    POST /api/validate-yaml
    GET  /api/{models,datasets}/<owner>/<name>[/revision/<rev>]
    GET  /api/{models,datasets}/<owner>/<name>/tree/<rev>[/<path>]
    POST /api/{models,datasets}/<owner>/<name>/preupload/<rev>
    POST /api/{models,datasets}/<owner>/<name>/commit/<rev>
    POST /[datasets/]<owner>/<name>.git/info/lfs/objects/batch
    PUT  /__lfs/<oid>?sig=...            (the "S3" upload URL the batch endpoint hands out)
    POST /__lfs/<oid>/verify
    HEAD/GET /[datasets/]<owner>/<name>/resolve/<rev>/<path>

Tokens: no token or an unknown one gets 401, a token registered with role "read" gets 403
on anything that writes, private repos are invisible (404 RepoNotFound) to everyone but
their owner. Tokens are never echoed in responses.

The client decides on its own whether to upload through Xet (a separate storage service
this fake does not implement) or plain LFS; set `HF_HUB_DISABLE_XET=1` before importing
huggingface_hub, or use `client_settings()` which also patches the already-imported module.

Only the standard library is used for serving (http.server); PyYAML parses card metadata.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import hashlib
import json
import re
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from amlft.extras import needs_extra

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf",
                ".parquet", ".arrow", ".npz", ".npy", ".model", ".zip", ".gz", ".tar")
LFS_THRESHOLD = 10 * 1024 * 1024  # the Hub stores text files above 10 MB in LFS too
REPO_TYPES = ("model", "dataset")

# A subset of the licence ids the Hub accepts; enough to catch typos in generated cards.
KNOWN_LICENSES = frozenset({
    "apache-2.0", "mit", "openrail", "bigscience-openrail-m", "creativeml-openrail-m", "bigscience-bloom-rail-1.0",
    "bigcode-openrail-m", "afl-3.0", "artistic-2.0", "bsl-1.0", "bsd", "bsd-2-clause", "bsd-3-clause",
    "bsd-3-clause-clear", "c-uda", "cc", "cc0-1.0", "cc-by-2.0", "cc-by-2.5", "cc-by-3.0", "cc-by-4.0",
    "cc-by-sa-3.0", "cc-by-sa-4.0", "cc-by-nc-2.0", "cc-by-nc-3.0", "cc-by-nc-4.0", "cc-by-nd-4.0",
    "cc-by-nc-nd-3.0", "cc-by-nc-nd-4.0", "cc-by-nc-sa-2.0", "cc-by-nc-sa-3.0", "cc-by-nc-sa-4.0",
    "cdla-sharing-1.0", "cdla-permissive-1.0", "cdla-permissive-2.0", "wtfpl", "ecl-2.0", "epl-1.0", "epl-2.0",
    "eupl-1.1", "agpl-3.0", "gfdl", "gpl", "gpl-2.0", "gpl-3.0", "lgpl", "lgpl-2.1", "lgpl-3.0", "isc",
    "lppl-1.3c", "ms-pl", "apple-ascl", "mpl-2.0", "odc-by", "odbl", "openrail++", "osl-3.0", "postgresql",
    "ofl-1.1", "ncsa", "unlicense", "zlib", "pddl", "lgpl-lr", "deepfloyd-if-license", "llama2", "llama3",
    "llama3.1", "llama3.2", "llama3.3", "gemma", "unknown", "other",
})
PIPELINE_TAGS = frozenset({"text-generation", "text2text-generation", "text-classification", "token-classification",
                           "question-answering", "summarization", "translation", "fill-mask", "feature-extraction",
                           "conversational", "image-text-to-text"})
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class TokenInfo:
    user: str
    role: str = "write"  # "read" | "write"
    orgs: tuple[str, ...] = ()


@dataclass
class StoredFile:
    content: bytes
    lfs_sha256: str | None = None  # set when the file lives in LFS

    @property
    def oid(self) -> str:
        return git_blob_sha1(self.content)


@dataclass
class Commit:
    oid: str
    title: str
    description: str
    author: str
    date: str
    paths: list[str]
    files: dict[str, StoredFile] = field(default_factory=dict)  # the tree as of this commit


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    owner: str
    created_at: str = field(default_factory=now_iso)
    files: dict[str, StoredFile] = field(default_factory=dict)
    commits: list[Commit] = field(default_factory=list)

    @property
    def sha(self) -> str:
        return self.commits[-1].oid if self.commits else "0" * 40

    def at(self, revision: str) -> tuple[str, dict[str, StoredFile]]:
        """(commit oid, files) at `main` or at a commit oid (snapshot_download pins the sha)."""
        rev = unquote(revision)
        if rev == "main":
            return self.sha, self.files
        for c in self.commits:
            if c.oid == rev:
                return c.oid, c.files
        raise HubError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


class FakeHub:
    """The Hub's state plus a loopback HTTP server that serves it.

    >>> with FakeHub() as hub:
    ...     hub.add_token("hf_write", user="alice")
    ...     # HF_ENDPOINT=hub.endpoint, HF_TOKEN=hf_write -> publish, then inspect hub.repos
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.tokens: dict[str, TokenInfo] = {}
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.requests: list[tuple[str, str, bool]] = []  # (method, path, authenticated) for assertions
        self._upload_signatures: dict[str, str] = {}
        self._lock = threading.RLock()
        self._host, self._port = host, port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            fake = hub

        self._server = ThreadingHTTPServer((self._host, self._port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeHub is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    # ------------------------------------------------------------------ setup helpers
    def add_token(self, token: str, *, user: str, role: str = "write", orgs: tuple[str, ...] = ()) -> None:
        if role not in ("read", "write"):
            raise ValueError("role must be 'read' or 'write'")
        self.tokens[token] = TokenInfo(user=user, role=role, orgs=tuple(orgs))

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        return self.repos[(repo_type, repo_id)]

    @contextlib.contextmanager
    def client_settings(self) -> Iterator[None]:
        """Point an already-imported huggingface_hub at this fake (endpoint, online, plain LFS uploads).

        huggingface_hub reads HF_ENDPOINT, HF_HUB_OFFLINE and HF_HUB_DISABLE_XET once at import;
        this sets the environment for subprocesses and patches the module constants for this one.
        """
        import os

        with needs_extra("hub", purpose="amlft's Hugging Face Hub fake"):
            from huggingface_hub import constants

        saved_env = {k: os.environ.get(k) for k in ("HF_ENDPOINT", "HF_HUB_OFFLINE", "HF_HUB_DISABLE_XET")}
        patched = {"ENDPOINT": self.endpoint, "HF_HUB_OFFLINE": False, "HF_HUB_DISABLE_XET": True,
                   "HUGGINGFACE_CO_URL_TEMPLATE": self.endpoint + "/{repo_id}/resolve/{revision}/{filename}"}
        saved_consts = {k: getattr(constants, k) for k in patched}
        os.environ.update(HF_ENDPOINT=self.endpoint, HF_HUB_DISABLE_XET="1")
        os.environ.pop("HF_HUB_OFFLINE", None)
        for k, v in patched.items():
            setattr(constants, k, v)
        try:
            yield
        finally:
            for k, v in saved_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            for k, v in saved_consts.items():
                setattr(constants, k, v)

    # ------------------------------------------------------------------ auth
    def _auth(self, header: str | None) -> TokenInfo | None:
        if not header or not header.startswith("Bearer "):
            return None
        info = self.tokens.get(header[len("Bearer "):].strip())
        if info is None:
            raise HubError(401, "Invalid username or password.")
        return info

    @staticmethod
    def _need_auth(who: TokenInfo | None) -> TokenInfo:
        if who is None:
            raise HubError(401, "Authorization header is missing: you must be authenticated to do this.")
        return who

    def _need_write(self, who: TokenInfo | None, namespace: str) -> TokenInfo:
        who = self._need_auth(who)
        if who.role != "write":
            raise HubError(403, "This token has read-only access; a token with write access is required.")
        if namespace != who.user and namespace not in who.orgs:
            raise HubError(403, f"You don't have the rights to write to the namespace \"{namespace}\".")
        return who

    def _visible_repo(self, who: TokenInfo | None, repo_type: str, repo_id: str) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and (who is None or repo.owner not in (who.user, *who.orgs))):
            raise HubError(404, "Repository not found", code="RepoNotFound")
        return repo

    # ------------------------------------------------------------------ API
    def whoami(self, who: TokenInfo | None) -> dict[str, Any]:
        who = self._need_auth(who)
        return {"type": "user", "id": hashlib.sha1(who.user.encode()).hexdigest()[:24], "name": who.user,
                "fullname": who.user.title(), "canPay": False,
                "orgs": [{"type": "org", "name": o, "roleInOrg": "write"} for o in who.orgs],
                "auth": {"type": "access_token", "accessToken": {"displayName": "fake-hub", "role": who.role}}}

    def create_repo(self, who: TokenInfo | None, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        name = str(body.get("name") or "")
        repo_type = body.get("type") or "model"
        if repo_type not in REPO_TYPES:
            raise HubError(400, f"Unsupported repo type {repo_type!r} in this fake.")
        who = self._need_auth(who)
        namespace = body.get("organization") or who.user
        repo_id = f"{namespace}/{name}"
        if not _REPO_ID.match(repo_id):
            raise HubError(400, f"Invalid repo name {repo_id!r}.")
        self._need_write(who, namespace)
        url = self._repo_url(repo_type, repo_id)
        if (repo_type, repo_id) in self.repos:
            return 409, {"error": "You already created this model repo", "url": url}
        visibility = body.get("visibility")
        private = visibility == "private" if visibility is not None else bool(body.get("private", False))
        self.repos[(repo_type, repo_id)] = Repo(repo_type=repo_type, repo_id=repo_id, private=private, owner=namespace)
        return 200, {"url": url, "name": repo_id, "id": hashlib.sha1(repo_id.encode()).hexdigest()[:24]}

    def repo_info(self, who: TokenInfo | None, repo_type: str, repo_id: str, revision: str) -> dict[str, Any]:
        repo = self._visible_repo(who, repo_type, repo_id)
        sha, files = repo.at(revision)
        card = self._card_data(files)
        info: dict[str, Any] = {
            "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24], "id": repo_id, "author": repo.owner,
            "sha": sha, "private": repo.private, "gated": False, "disabled": False, "downloads": 0, "likes": 0,
            "createdAt": repo.created_at, "lastModified": repo.commits[-1].date if repo.commits else repo.created_at,
            "tags": list(card.get("tags") or []) if isinstance(card, dict) else [],
            "cardData": card or None,
            "siblings": [{"rfilename": p} for p in sorted(files)],
        }
        if repo_type == "model" and isinstance(card, dict):
            info["pipeline_tag"] = card.get("pipeline_tag")
            info["library_name"] = card.get("library_name")
            if card.get("model-index"):
                info["model-index"] = card["model-index"]
        return info

    def tree(self, who: TokenInfo | None, repo_type: str, repo_id: str, revision: str, path: str,
             recursive: bool) -> list[dict[str, Any]]:
        repo = self._visible_repo(who, repo_type, repo_id)
        _, files = repo.at(revision)
        prefix = f"{path.strip('/')}/" if path.strip("/") else ""
        out: list[dict[str, Any]] = []
        folders: set[str] = set()
        for p in sorted(files):
            if not p.startswith(prefix):
                continue
            rest = p[len(prefix):]
            parts = rest.split("/")
            for i in range(1, len(parts)):
                folder = prefix + "/".join(parts[:i])
                if folder not in folders and (recursive or i == 1):
                    folders.add(folder)
                    out.append({"type": "directory", "oid": git_blob_sha1(folder.encode()), "size": 0, "path": folder})
            if recursive or len(parts) == 1:
                f = files[p]
                entry: dict[str, Any] = {"type": "file", "oid": f.oid, "size": len(f.content), "path": p}
                if f.lfs_sha256:
                    entry["lfs"] = {"oid": f.lfs_sha256, "size": len(f.content), "pointerSize": 134}
                out.append(entry)
        if prefix and not out:
            raise HubError(404, f"Entry not found: {path}", code="EntryNotFound")
        return out

    def preupload(self, who: TokenInfo | None, repo_type: str, repo_id: str, revision: str,
                  body: dict[str, Any]) -> dict[str, Any]:
        repo = self._visible_repo(who, repo_type, repo_id)
        self._need_write(who, repo.owner)
        self._check_branch(revision)
        files = []
        for f in body.get("files") or []:
            sample = base64.b64decode(f.get("sample") or "")
            lfs = str(f["path"]).endswith(LFS_SUFFIXES) or int(f.get("size") or 0) >= LFS_THRESHOLD or b"\0" in sample
            existing = repo.files.get(f["path"])
            oid = None
            if existing is not None:
                oid = existing.lfs_sha256 if lfs else existing.oid
            files.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                          "oid": oid})
        return {"files": files, "commitOid": repo.sha}

    def lfs_batch(self, who: TokenInfo | None, repo_type: str, repo_id: str, body: dict[str, Any]) -> dict[str, Any]:
        repo = self._visible_repo(who, repo_type, repo_id)
        self._need_write(who, repo.owner)
        if body.get("operation") != "upload":
            raise HubError(400, "Only the upload operation is supported by this fake.")
        objects = []
        for obj in body.get("objects") or []:
            oid, size = str(obj["oid"]), int(obj["size"])
            entry: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            if oid not in self.lfs_objects:
                sig = secrets.token_hex(8)
                self._upload_signatures[oid] = sig
                entry["actions"] = {
                    "upload": {"href": f"{self.endpoint}/__lfs/{oid}?sig={sig}", "header": {}},
                    "verify": {"href": f"{self.endpoint}/__lfs/{oid}/verify", "header": {}},
                }
            objects.append(entry)
        return {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}

    def lfs_put(self, oid: str, sig: str | None, data: bytes) -> None:
        if not sig or self._upload_signatures.get(oid) != sig:
            raise HubError(403, "Upload URL signature is invalid or expired.")
        if hashlib.sha256(data).hexdigest() != oid:
            raise HubError(400, "Uploaded content does not match its sha256 oid.")
        self.lfs_objects[oid] = data
        self._upload_signatures.pop(oid, None)

    def lfs_verify(self, who: TokenInfo | None, oid: str, body: dict[str, Any]) -> dict[str, Any]:
        self._need_auth(who)
        data = self.lfs_objects.get(oid)
        if data is None or len(data) != int(body.get("size", -1)):
            raise HubError(404, f"LFS object {oid} was not uploaded.")
        return {"success": True}

    def commit(self, who: TokenInfo | None, repo_type: str, repo_id: str, revision: str,
               lines: list[dict[str, Any]]) -> dict[str, Any]:
        repo = self._visible_repo(who, repo_type, repo_id)
        author = self._need_write(who, repo.owner).user
        self._check_branch(revision)
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The commit payload must start with a header line.")
        header = lines[0]["value"]
        staged = dict(repo.files)
        touched: list[str] = []
        for line in lines[1:]:
            key, value = line.get("key"), line.get("value") or {}
            path = str(value.get("path") or "")
            if key == "file":
                staged[path] = StoredFile(base64.b64decode(value["content"]))
            elif key == "lfsFile":
                data = self.lfs_objects.get(value.get("oid", ""))
                if data is None:
                    raise HubError(400, f"LFS file {path} ({value.get('oid')}) was committed before it was uploaded.")
                staged[path] = StoredFile(data, lfs_sha256=value["oid"])
            elif key == "deletedFile":
                if path not in staged:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", code="EntryNotFound")
                del staged[path]
            elif key == "deletedFolder":
                for p in [p for p in staged if p.startswith(path.rstrip("/") + "/")]:
                    del staged[p]
            else:
                raise HubError(400, f"Unsupported commit operation {key!r} in this fake.")
            touched.append(path)
        if "README.md" in touched and "README.md" in staged:
            errors = validate_card_yaml(staged["README.md"].content.decode("utf-8", "replace"), repo_type)
            if errors:
                raise HubError(400, "Invalid metadata in README.md: " + "; ".join(errors))
        if header.get("parentCommit") and header["parentCommit"] != repo.sha:
            raise HubError(412, "A commit has happened since the parent commit; rebase and try again.")
        oid = hashlib.sha1(f"{repo.sha}{now_iso()}{secrets.token_hex(4)}".encode()).hexdigest()
        repo.files = staged
        repo.commits.append(Commit(oid=oid, title=str(header.get("summary") or ""),
                                   description=str(header.get("description") or ""), author=author,
                                   date=now_iso(), paths=touched, files=dict(staged)))
        prefix = self._repo_url(repo_type, repo_id)
        return {"success": True, "commitOid": oid, "commitUrl": f"{prefix}/commit/{oid}", "pullRequestUrl": None}

    def resolve(self, who: TokenInfo | None, repo_type: str, repo_id: str, revision: str,
                path: str) -> tuple[str, StoredFile]:
        repo = self._visible_repo(who, repo_type, repo_id)
        sha, files = repo.at(revision)
        f = files.get(path)
        if f is None:
            raise HubError(404, f"Entry not found: {path}", code="EntryNotFound")
        return sha, f

    # ------------------------------------------------------------------ helpers
    def _repo_url(self, repo_type: str, repo_id: str) -> str:
        return f"{self.endpoint}/{'datasets/' if repo_type == 'dataset' else ''}{repo_id}"

    @staticmethod
    def _check_branch(revision: str) -> None:
        if unquote(revision) != "main":
            raise HubError(404, f"This fake only commits to main, not {revision!r}", code="RevisionNotFound")

    @staticmethod
    def _card_data(files: dict[str, StoredFile]) -> dict[str, Any]:
        readme = files.get("README.md")
        if readme is None:
            return {}
        meta, _ = split_front_matter(readme.content.decode("utf-8", "replace"))
        return meta if isinstance(meta, dict) else {}


# ---------------------------------------------------------------------- card validation
def split_front_matter(text: str) -> tuple[Any, str]:
    """(metadata, body) of a card; metadata is None when there is no YAML block."""
    import yaml

    m = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, flags=re.DOTALL)
    if not m:
        return None, text
    return yaml.safe_load(m.group(1)), text[m.end():]


def validate_card_yaml(content: str, repo_type: str = "model") -> list[str]:
    """The metadata checks the Hub applies on commit and in /api/validate-yaml (the parts we rely on)."""
    import yaml

    try:
        meta, _ = split_front_matter(content)
    except yaml.YAMLError as exc:
        return [f"YAML metadata is not valid YAML: {exc}"]
    if meta is None:
        return []
    if not isinstance(meta, dict):
        return ["YAML metadata must be a mapping"]
    errors: list[str] = []

    def str_or_list(key: str) -> None:
        v = meta.get(key)
        if v is not None and not (isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v))):
            errors.append(f'"{key}" must be a string or a list of strings')

    for key in ("language", "datasets", "base_model", "tags", "license"):
        str_or_list(key)
    for one in _entries(meta.get("license")):
        if one not in KNOWN_LICENSES:
            errors.append(f'"license" must be one of the Hub licence ids, got {one!r}')
    errors.extend(_validate_ids(meta))
    if repo_type == "model":
        tag = meta.get("pipeline_tag")
        if tag is not None and tag not in PIPELINE_TAGS:
            errors.append(f'"pipeline_tag" {tag!r} is not a known task')
        if meta.get("library_name") is not None and not isinstance(meta["library_name"], str):
            errors.append('"library_name" must be a string')
        errors.extend(_validate_model_index(meta.get("model-index")))
    return errors


def _entries(value: Any) -> list[Any]:
    return [value] if isinstance(value, str) else list(value or [])


def _validate_ids(meta: dict[str, Any]) -> list[str]:
    """Repo ids in datasets/base_model and ISO 639 codes in language."""
    errors: list[str] = []
    for key in ("datasets", "base_model"):
        for one in _entries(meta.get(key)):
            if isinstance(one, str) and not _REPO_ID.match(one) and not re.match(r"^[A-Za-z0-9._-]+$", one):
                errors.append(f'"{key}" entry {one!r} is not a Hub repo id')
    for one in _entries(meta.get("language")):
        if isinstance(one, str) and not re.match(r"^([a-z]{2,3}(-[A-Za-z0-9]+)*|code|multilingual)$", one):
            errors.append(f'"language" entry {one!r} is not an ISO 639 code')
    return errors


def _validate_model_index(index: Any) -> list[str]:
    if index is None:
        return []
    errors: list[str] = []
    if not isinstance(index, list) or not index:
        return ['"model-index" must be a non-empty list']
    for i, model in enumerate(index):
        if not isinstance(model, dict) or not isinstance(model.get("name"), str):
            errors.append(f'"model-index[{i}].name" is required')
            continue
        for j, result in enumerate(model.get("results") or []):
            where = f"model-index[{i}].results[{j}]"
            if not isinstance(result, dict):
                errors.append(f'"{where}" must be a mapping')
                continue
            if not isinstance((result.get("task") or {}).get("type"), str):
                errors.append(f'"{where}.task.type" is required')
            ds = result.get("dataset") or {}
            if not (isinstance(ds.get("type"), str) and isinstance(ds.get("name"), str)):
                errors.append(f'"{where}.dataset" needs "type" and "name"')
            metrics = result.get("metrics")
            if not isinstance(metrics, list) or not metrics:
                errors.append(f'"{where}.metrics" must be a non-empty list')
                continue
            for k, metric in enumerate(metrics):
                if not isinstance(metric, dict) or not isinstance(metric.get("type"), str) or "value" not in metric:
                    errors.append(f'"{where}.metrics[{k}]" needs "type" and "value"')
                elif not isinstance(metric["value"], (int, float, str)) or isinstance(metric["value"], bool):
                    errors.append(f'"{where}.metrics[{k}].value" must be a number or a string')
    return errors


# ---------------------------------------------------------------------- HTTP
_API_REPO = re.compile(r"^/api/(models|datasets)/([^/]+/[^/]+?)(?:/(revision|tree|preupload|commit)/([^/]+)(/.*)?)?$")
_LFS_BATCH = re.compile(r"^/(datasets/)?([^/]+/[^/]+)\.git/info/lfs/objects/batch$")
_RESOLVE = re.compile(r"^/(datasets/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
_LFS_PUT = re.compile(r"^/__lfs/([0-9a-f]{64})(/verify)?$")


class _Handler(BaseHTTPRequestHandler):
    fake: FakeHub
    protocol_version = "HTTP/1.1"
    server_version = "FakeHub/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read hub.requests
        pass

    # --------------------------------------------------------------- plumbing
    def _body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, payload: Any = None, *, headers: dict[str, str] | None = None,
              raw: bytes | None = None, content_type: str = "application/json", head: bool = False) -> None:
        body = raw if raw is not None else (json.dumps(payload).encode() if payload is not None else b"")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Request-Id", secrets.token_hex(8))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        path, query = unquote(url.path), parse_qs(url.query)
        body = self._body() if method in ("POST", "PUT") else b""
        auth = self.headers.get("Authorization")
        hub = self.fake
        with hub._lock:
            hub.requests.append((method, path, bool(auth)))
            try:
                who = hub._auth(auth) if not path.startswith("/__lfs/") or path.endswith("/verify") else None
                self._route(method, path, query, body, who)
            except HubError as exc:
                headers = {"X-Error-Message": exc.message}
                if exc.code:
                    headers["X-Error-Code"] = exc.code
                self._send(exc.status, {"error": exc.message}, headers=headers, head=method == "HEAD")
            except (ValueError, KeyError, json.JSONDecodeError) as exc:
                self._send(400, {"error": f"Bad request: {exc}"}, head=method == "HEAD")

    def _route(self, method: str, path: str, query: dict[str, list[str]], body: bytes,
               who: TokenInfo | None) -> None:
        hub = self.fake
        if path == "/api/whoami-v2" and method == "GET":
            return self._send(200, hub.whoami(who))
        if path == "/api/repos/create" and method == "POST":
            status, payload = hub.create_repo(who, json.loads(body or b"{}"))
            return self._send(status, payload)
        if path == "/api/validate-yaml" and method == "POST":
            req = json.loads(body or b"{}")
            errors = validate_card_yaml(str(req.get("content") or ""), str(req.get("repoType") or "model"))
            if errors:
                return self._send(400, {"errors": [{"message": e} for e in errors]})
            return self._send(200, {"errors": [], "warnings": []})
        m = _API_REPO.match(path)
        if m:
            repo_type, repo_id, action, rev, rest = m.group(1)[:-1], m.group(2), m.group(3), m.group(4), m.group(5)
            if action in (None, "revision") and method == "GET":
                return self._send(200, hub.repo_info(who, repo_type, repo_id, rev or "main"))
            if action == "tree" and method == "GET":
                recursive = (query.get("recursive") or ["false"])[0].lower() in ("1", "true")
                return self._send(200, hub.tree(who, repo_type, repo_id, rev, (rest or "").lstrip("/"), recursive))
            if action == "preupload" and method == "POST":
                return self._send(200, hub.preupload(who, repo_type, repo_id, rev, json.loads(body)))
            if action == "commit" and method == "POST":
                lines = [json.loads(line) for line in body.splitlines() if line.strip()]
                return self._send(200, hub.commit(who, repo_type, repo_id, rev, lines))
        m = _LFS_BATCH.match(path)
        if m and method == "POST":
            repo_type = "dataset" if m.group(1) else "model"
            return self._send(200, hub.lfs_batch(who, repo_type, m.group(2), json.loads(body)),
                              content_type="application/vnd.git-lfs+json")
        m = _LFS_PUT.match(path)
        if m and method == "PUT" and not m.group(2):
            hub.lfs_put(m.group(1), (query.get("sig") or [""])[0], body)
            return self._send(200, raw=b"", headers={"ETag": f'"{m.group(1)}"'})
        if m and method == "POST" and m.group(2):
            return self._send(200, hub.lfs_verify(who, m.group(1), json.loads(body or b"{}")))
        m = _RESOLVE.match(path)
        if m and method in ("GET", "HEAD"):
            return self._send_file(method, m, who)
        raise HubError(404, f"Not implemented by the fake Hub: {method} {path}")

    def _send_file(self, method: str, m: re.Match[str], who: TokenInfo | None) -> None:
        """A file download (`/resolve/`), honouring a byte Range as the Hub's CDN does."""
        repo_type = "dataset" if m.group(1) else "model"
        sha, f = self.fake.resolve(who, repo_type, m.group(2), m.group(3), m.group(4))
        etag = f.lfs_sha256 or f.oid
        headers = {"X-Repo-Commit": sha, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
        if f.lfs_sha256:
            headers.update({"X-Linked-Etag": f'"{f.lfs_sha256}"', "X-Linked-Size": str(len(f.content))})
        data = f.content
        rng = re.match(r"bytes=(\d+)-(\d*)$", self.headers.get("Range") or "")
        if rng and method == "GET":
            start = int(rng.group(1))
            end = int(rng.group(2)) if rng.group(2) else len(data) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return self._send(206, raw=data[start:end + 1], headers=headers, content_type="application/octet-stream")
        return self._send(200, raw=data, headers=headers, content_type="application/octet-stream",
                          head=method == "HEAD")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")
