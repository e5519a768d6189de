"""Local folders and S3 prefixes: locations, listing the input files, reading and writing bytes."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import ConfigError
from .errors import BatchJobError


@dataclass(frozen=True)
class ImageLocation:
    """A local folder/file or an S3 `s3://bucket/prefix` location."""

    bucket: str | None
    key: str  # local path, or S3 key (prefix)

    @classmethod
    def parse(cls, text: str) -> ImageLocation:
        if not isinstance(text, str) or not text.strip():
            raise ConfigError("a location must be a non-empty path or s3:// URL")
        if text.startswith("s3://"):
            bucket, _, key = text[5:].partition("/")
            if not bucket or "/" in bucket or bucket != bucket.strip():
                raise ConfigError(f"not an s3://bucket/prefix URL: {text!r}")
            return cls(bucket, key)
        if "://" in text:
            raise ConfigError(f"unsupported location {text!r}: a local path or s3://bucket/prefix")
        return cls(None, text)

    @property
    def is_s3(self) -> bool:
        return self.bucket is not None

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}" if self.is_s3 else self.key


_CLIENTS: dict[str | None, Any] = {}


def s3_client(endpoint_url: str | None) -> Any:
    """One boto3 client per process and endpoint (clients are thread-safe, creating one is not
    cheap); reused by every batch a worker reads."""
    client = _CLIENTS.get(endpoint_url)
    if client is None:
        from ...aws_stores import make_client

        client = _CLIENTS[endpoint_url] = make_client("s3", endpoint_url=endpoint_url)
    return client


def list_inputs(
    location: str, endpoint_url: str | None = None, extensions: Sequence[str] | None = None
) -> list[str]:
    """Every file under a folder (recursive, hidden files and folders excluded) or an S3 prefix,
    as paths / s3:// URLs, sorted. `extensions` (".jpg", "png") keeps only those suffixes; by
    default every file is listed, so that a stray non-image is reported rather than ignored."""
    loc = ImageLocation.parse(location)
    suffixes = None
    if extensions:
        suffixes = tuple("." + e.lower().lstrip(".") for e in extensions)

    def wanted(name: str) -> bool:
        return suffixes is None or name.lower().endswith(suffixes)

    if not loc.is_s3:
        root = Path(loc.key).expanduser()
        if root.is_file():
            return [str(root)]
        if not root.is_dir():
            raise ConfigError(f"input folder not found: {root}")
        out = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            out += [os.path.join(dirpath, f) for f in filenames if not f.startswith(".") and wanted(f)]
        return sorted(out)
    from botocore.exceptions import BotoCoreError, ClientError

    out = []
    try:
        pages = (
            s3_client(endpoint_url)
            .get_paginator("list_objects_v2")
            .paginate(Bucket=loc.bucket, Prefix=loc.key)
        )
        for page in pages:
            for obj in page.get("Contents", []):
                key = obj["Key"]
                name = key.rsplit("/", 1)[-1]
                if key.endswith("/") or name.startswith(".") or not wanted(name):
                    continue
                out.append(f"s3://{loc.bucket}/{key}")
    except (ClientError, BotoCoreError) as exc:
        raise BatchJobError(f"cannot list {loc}: {exc}") from exc
    return sorted(out)


def read_file(path: str, endpoint_url: str | None, max_bytes: int) -> bytes:
    """A file's bytes; OSError (local) or a botocore error (S3) when it cannot be read."""
    loc = ImageLocation.parse(path)
    if loc.is_s3:
        obj = s3_client(endpoint_url).get_object(Bucket=loc.bucket, Key=loc.key)
        if obj.get("ContentLength", 0) > max_bytes:
            obj["Body"].close()
            raise ValueError(f"{obj['ContentLength']} bytes, over the {max_bytes}-byte limit")
        return obj["Body"].read()
    size = os.path.getsize(path)
    if size > max_bytes:
        raise ValueError(f"{size} bytes, over the {max_bytes}-byte limit")
    return Path(path).read_bytes()


def upload_file(local: Path, url: str, endpoint_url: str | None) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    loc = ImageLocation.parse(url)
    try:
        s3_client(endpoint_url).upload_file(str(local), loc.bucket, loc.key)
    except (ClientError, BotoCoreError) as exc:
        raise BatchJobError(f"cannot write {url}: {exc}") from exc


def put_bytes(url: str, data: bytes, endpoint_url: str | None) -> None:
    """Bytes to a local path or an s3:// URL."""
    loc = ImageLocation.parse(url)
    if not loc.is_s3:
        path = Path(loc.key).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        s3_client(endpoint_url).put_object(Bucket=loc.bucket, Key=loc.key, Body=data)
    except (ClientError, BotoCoreError) as exc:
        raise BatchJobError(f"cannot write {url}: {exc}") from exc
