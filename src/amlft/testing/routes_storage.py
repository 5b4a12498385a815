"""Azure Blob Storage, as much as azure-storage-blob uses for uploads and downloads.

Blobs keep their bytes (base64) in the state file: training data for a rehearsal is
small, and keeping the bytes lets a test check that what landed is what was sent.
"""

from __future__ import annotations

import base64
import hashlib
import html
from email.utils import formatdate
from typing import Any

from amlft.testing.http import FakeRequest, Reply, Router

BLOB_HOST = r"\.blob\.core\.windows\.net$"


def _account(req: FakeRequest) -> str:
    return req.host.split(".", 1)[0]


def _bucket(st: dict[str, Any], req: FakeRequest, container: str) -> dict[str, Any]:
    return st["blobs"].setdefault(f"{_account(req)}/{container}", {})


def _storage_error(status: int, code: str, message: str) -> Reply:
    body = (f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code>'
            f"<Message>{html.escape(message)}</Message></Error>")
    return status, {"x-ms-error-code": code, "Content-Type": "application/xml", "x-ms-version": "2025-01-05"}, body


def _blob_headers(blob: dict[str, Any]) -> dict[str, str]:
    headers = {
        "Content-Length": str(blob["size"]),
        "Content-Type": blob.get("content_type", "application/octet-stream"),
        "Content-MD5": blob["md5"],
        "ETag": f'"0x{blob["etag"]}"',
        "Last-Modified": formatdate(blob["modified"], usegmt=True),
        "x-ms-blob-type": "BlockBlob",
        "x-ms-creation-time": formatdate(blob["modified"], usegmt=True),
        "x-ms-lease-status": "unlocked",
        "x-ms-lease-state": "available",
        "x-ms-server-encrypted": "true",
        "x-ms-version": "2025-01-05",
        "Accept-Ranges": "bytes",
    }
    for key, value in blob.get("metadata", {}).items():
        headers[f"x-ms-meta-{key}"] = value
    return headers


def _metadata_from(req: FakeRequest) -> dict[str, str]:
    return {k[len("x-ms-meta-"):]: v for k, v in req.headers.items() if k.startswith("x-ms-meta-")}


def _store_blob(st: dict[str, Any], req: FakeRequest, container: str, blob: str, data: bytes) -> dict[str, Any]:
    record = {
        "data": base64.b64encode(data).decode("ascii"),
        "size": len(data),
        "md5": base64.b64encode(hashlib.md5(data).digest()).decode("ascii"),
        "etag": hashlib.sha1(data + str(st["clock"]).encode()).hexdigest()[:16].upper(),
        "modified": st["clock"],
        "content_type": req.headers.get("x-ms-blob-content-type", "application/octet-stream"),
        "metadata": _metadata_from(req),
    }
    _bucket(st, req, container)[blob] = record
    return record


def head_blob(fake: Any, req: FakeRequest, st: dict[str, Any], container: str, blob: str) -> Reply:
    record = _bucket(st, req, container).get(blob)
    if record is None:
        return 404, {"x-ms-error-code": "BlobNotFound", "x-ms-version": "2025-01-05"}, b""
    return 200, _blob_headers(record), b""


def get_blob(fake: Any, req: FakeRequest, st: dict[str, Any], container: str, blob: str) -> Reply:
    if req.arg("comp") is not None:
        return _storage_error(400, "UnsupportedQueryParameter", f"comp={req.arg('comp')} is not supported by the fake")
    record = _bucket(st, req, container).get(blob)
    if record is None:
        return _storage_error(404, "BlobNotFound", "The specified blob does not exist.")
    data = base64.b64decode(record["data"])
    headers = _blob_headers(record)
    rng = req.headers.get("x-ms-range") or req.headers.get("range")
    if rng and rng.startswith("bytes="):
        start_s, _, end_s = rng[len("bytes="):].partition("-")
        start = int(start_s or 0)
        end = min(int(end_s) if end_s else len(data) - 1, len(data) - 1)
        if start >= len(data) and len(data) > 0:
            return _storage_error(416, "InvalidRange", "The range specified is invalid for the current size.")
        chunk = data[start : end + 1]
        headers["Content-Range"] = f"bytes {start}-{max(end, start)}/{len(data)}"
        headers["Content-Length"] = str(len(chunk))
        return 206, headers, chunk
    return 200, headers, data


def put_blob(fake: Any, req: FakeRequest, st: dict[str, Any], container: str, blob: str) -> Reply:
    comp = req.arg("comp")
    bucket = _bucket(st, req, container)
    if comp == "metadata":
        record = bucket.get(blob)
        if record is None:
            return _storage_error(404, "BlobNotFound", "The specified blob does not exist.")
        record["metadata"] = _metadata_from(req)
        return 200, {"ETag": f'"0x{record["etag"]}"', "x-ms-version": "2025-01-05",
                     "Last-Modified": formatdate(record["modified"], usegmt=True)}, b""
    if comp == "block":
        staged = st.setdefault("staged_blocks", {}).setdefault(f"{_account(req)}/{container}/{blob}", {})
        staged[req.arg("blockid") or ""] = base64.b64encode(req.body).decode("ascii")
        return 201, {"x-ms-version": "2025-01-05", "x-ms-request-server-encrypted": "true"}, b""
    if comp == "blocklist":
        import re

        staged = st.setdefault("staged_blocks", {}).pop(f"{_account(req)}/{container}/{blob}", {})
        ids = re.findall(r"<(?:Latest|Uncommitted|Committed)>([^<]*)</", req.body.decode("utf-8"))
        data = b"".join(base64.b64decode(staged[i]) for i in ids if i in staged)
        record = _store_blob(st, req, container, blob, data)
        return 201, {"ETag": f'"0x{record["etag"]}"', "x-ms-version": "2025-01-05",
                     "Last-Modified": formatdate(record["modified"], usegmt=True)}, b""
    if comp is not None:
        return _storage_error(400, "UnsupportedQueryParameter", f"comp={comp} is not supported by the fake")
    record = _store_blob(st, req, container, blob, req.body)
    return 201, {"ETag": f'"0x{record["etag"]}"', "Content-MD5": record["md5"], "x-ms-version": "2025-01-05",
                 "Last-Modified": formatdate(record["modified"], usegmt=True),
                 "x-ms-request-server-encrypted": "true"}, b""


def delete_blob(fake: Any, req: FakeRequest, st: dict[str, Any], container: str, blob: str) -> Reply:
    if _bucket(st, req, container).pop(blob, None) is None:
        return _storage_error(404, "BlobNotFound", "The specified blob does not exist.")
    return 202, {"x-ms-version": "2025-01-05"}, b""


def container_op(fake: Any, req: FakeRequest, st: dict[str, Any], container: str) -> Reply:
    if req.arg("restype") != "container":
        return _storage_error(400, "InvalidQueryParameterValue", "restype=container is required")
    if req.arg("comp") != "list":  # container properties: every workspace container exists
        return 200, {"ETag": '"0x1"', "Last-Modified": formatdate(0, usegmt=True), "x-ms-version": "2025-01-05",
                     "x-ms-lease-status": "unlocked", "x-ms-lease-state": "available"}, b""
    prefix = req.arg("prefix") or ""
    delimiter = req.arg("delimiter")
    bucket = _bucket(st, req, container)
    blobs_xml: list[str] = []
    prefixes: set[str] = set()
    for name in sorted(bucket):
        if not name.startswith(prefix):
            continue
        if delimiter:
            rest = name[len(prefix):]
            if delimiter in rest:
                prefixes.add(prefix + rest.split(delimiter, 1)[0] + delimiter)
                continue
        rec = bucket[name]
        meta = "".join(f"<{k}>{html.escape(v)}</{k}>" for k, v in rec.get("metadata", {}).items())
        blobs_xml.append(
            f"<Blob><Name>{html.escape(name)}</Name><Properties>"
            f"<Creation-Time>{formatdate(rec['modified'], usegmt=True)}</Creation-Time>"
            f"<Last-Modified>{formatdate(rec['modified'], usegmt=True)}</Last-Modified>"
            f"<Etag>0x{rec['etag']}</Etag><Content-Length>{rec['size']}</Content-Length>"
            f"<Content-Type>{rec.get('content_type', 'application/octet-stream')}</Content-Type>"
            f"<Content-MD5>{rec['md5']}</Content-MD5><BlobType>BlockBlob</BlobType>"
            f"<LeaseStatus>unlocked</LeaseStatus><LeaseState>available</LeaseState>"
            f"<ServerEncrypted>true</ServerEncrypted></Properties><Metadata>{meta}</Metadata></Blob>"
        )
    prefix_xml = "".join(f"<BlobPrefix><Name>{html.escape(p)}</Name></BlobPrefix>" for p in sorted(prefixes))
    body = (
        '<?xml version="1.0" encoding="utf-8"?>'
        f'<EnumerationResults ServiceEndpoint="https://{req.host}/" ContainerName="{container}">'
        f"<Prefix>{html.escape(prefix)}</Prefix><Blobs>{''.join(blobs_xml)}{prefix_xml}</Blobs>"
        "<NextMarker /></EnumerationResults>"
    )
    return 200, {"Content-Type": "application/xml", "x-ms-version": "2025-01-05"}, body


def register(router: Router) -> None:
    blob = r"/(?P<container>[^/]+)/(?P<blob>.+)"
    router.add("HEAD", blob, head_blob, host=BLOB_HOST)
    router.add("GET", blob, get_blob, host=BLOB_HOST)
    router.add("PUT", blob, put_blob, host=BLOB_HOST)
    router.add("DELETE", blob, delete_blob, host=BLOB_HOST)
    router.add("GET", r"/(?P<container>[^/]+)", container_op, host=BLOB_HOST)
    router.add("HEAD", r"/(?P<container>[^/]+)", container_op, host=BLOB_HOST)
