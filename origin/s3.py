"""The production origin: an S3-compatible bucket through one long-lived aiobotocore client.

botocore's errors are translated here, once, into the project's error types.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO, TypeVar

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    ReadTimeoutError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from common.errors import (
    MediaCDNError,
    NotFound,
    OriginTimeout,
    OriginUnavailable,
    RangeNotSatisfiable,
)
from config.schema import OriginConfig
from origin.base import CHUNK, ObjectInfo, range_header
from origin.keys import is_valid_key

T = TypeVar("T")
PART_BYTES = 8 * 1024 * 1024
NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound", "NoSuchBucket"}
THROTTLE_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded",
                  "ServiceUnavailable", "503", "InternalError", "500"}


def translate(exc: BaseException, key: str) -> MediaCDNError:
    """botocore/aiohttp error -> domain error. Matches on codes and types, never on text."""
    if isinstance(exc, MediaCDNError):
        return exc
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in NOT_FOUND_CODES or status == 404:
            return NotFound(f"no object {key}")
        if code == "InvalidRange" or status == 416:
            return RangeNotSatisfiable(f"range not satisfiable for {key}")
        if code in THROTTLE_CODES or status >= 500:
            return OriginUnavailable(f"S3 answered {code or status} for {key}")
        return OriginUnavailable(f"S3 refused {key}: {code or status}")
    if isinstance(exc, ConnectTimeoutError | ReadTimeoutError | asyncio.TimeoutError):
        return OriginTimeout(f"S3 timed out on {key}")
    if isinstance(exc, BotoConnectionError | BotoCoreError | OSError):
        return OriginUnavailable(f"S3 unreachable for {key}: {type(exc).__name__}")
    return OriginUnavailable(f"S3 failed on {key}: {type(exc).__name__}")


async def _call(key: str, fn: Callable[..., Awaitable[T]], **kwargs: Any) -> T:
    try:
        return await fn(**kwargs)
    except (TimeoutError, ClientError, BotoCoreError, OSError) as exc:
        raise translate(exc, key) from exc


def _info(key: str, resp: dict[str, Any], size: int) -> ObjectInfo:
    return ObjectInfo(
        key=key,
        size=size,
        content_type=str(resp.get("ContentType") or "application/octet-stream"),
        metadata={str(k).lower(): str(v) for k, v in (resp.get("Metadata") or {}).items()},
    )


@dataclass
class S3Reader:
    info: ObjectInfo
    start: int
    end: int
    _body: Any

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._body.iter_chunks(CHUNK):
                yield chunk
        except (TimeoutError, ClientError, BotoCoreError, OSError) as exc:
            raise translate(exc, self.info.key) from exc


class S3Origin:
    def __init__(self, client: Any, cfg: OriginConfig) -> None:
        self._s3 = client
        self._bucket = cfg.bucket

    @classmethod
    @asynccontextmanager
    async def connect(cls, cfg: OriginConfig) -> AsyncIterator[S3Origin]:
        session = get_session()
        aio_cfg = AioConfig(
            connect_timeout=cfg.connect_timeout,
            read_timeout=cfg.read_timeout,
            retries={"max_attempts": cfg.max_attempts, "mode": "standard"},
            max_pool_connections=cfg.max_pool_connections,
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        async with AsyncExitStack() as stack:
            client = await stack.enter_async_context(
                session.create_client(
                    "s3",
                    endpoint_url=cfg.endpoint_url,
                    region_name=cfg.region,
                    aws_access_key_id=cfg.access_key,
                    aws_secret_access_key=cfg.secret_key,
                    config=aio_cfg,
                )
            )
            origin = cls(client, cfg)
            if cfg.create_bucket:
                await origin._ensure_bucket()
            yield origin

    async def _ensure_bucket(self) -> None:
        try:
            await self._s3.head_bucket(Bucket=self._bucket)
        except ClientError as exc:
            if translate(exc, self._bucket).status != 404:
                raise translate(exc, self._bucket) from exc
            with contextlib.suppress(ClientError):  # a racing process may have made it
                await self._s3.create_bucket(Bucket=self._bucket)
        except (TimeoutError, BotoCoreError, OSError) as exc:
            raise translate(exc, self._bucket) from exc

    def _check(self, key: str) -> str:
        if not is_valid_key(key):
            raise ValueError(f"invalid origin key {key!r}")
        return key

    async def put(
        self, key: str, body: bytes | BinaryIO, content_type: str, metadata: dict[str, str]
    ) -> None:
        self._check(key)
        args = {"Bucket": self._bucket, "Key": key, "ContentType": content_type,
                "Metadata": metadata}
        if isinstance(body, bytes):
            await _call(key, self._s3.put_object, Body=body, **args)
            return
        first = await asyncio.to_thread(body.read, PART_BYTES)
        if len(first) < PART_BYTES:
            await _call(key, self._s3.put_object, Body=first, **args)
        else:
            await self._put_multipart(key, body, first, args)

    async def create(self, key: str, body: bytes, content_type: str) -> bool:
        self._check(key)
        try:
            await self._s3.put_object(Bucket=self._bucket, Key=key, Body=body,
                                      ContentType=content_type, IfNoneMatch="*")
        except ClientError as exc:
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            # 412: someone created it first; 409: a concurrent conditional write is in
            # progress (AWS). Either way the name is not ours: the caller re-reads.
            if status in (409, 412):
                return False
            raise translate(exc, key) from exc
        except (TimeoutError, BotoCoreError, OSError) as exc:
            raise translate(exc, key) from exc
        return True

    async def _put_multipart(
        self, key: str, body: BinaryIO, first: bytes, args: dict[str, Any]
    ) -> None:
        # Parts are read from the spooled file one at a time: memory stays at one part.
        up = await _call(key, self._s3.create_multipart_upload, **args)
        upload_id, parts, number, chunk = up["UploadId"], [], 1, first
        try:
            while chunk:
                r = await _call(key, self._s3.upload_part, Bucket=self._bucket, Key=key,
                                UploadId=upload_id, PartNumber=number, Body=chunk)
                parts.append({"ETag": r["ETag"], "PartNumber": number})
                number += 1
                chunk = await asyncio.to_thread(body.read, PART_BYTES)
            await _call(key, self._s3.complete_multipart_upload, Bucket=self._bucket, Key=key,
                        UploadId=upload_id, MultipartUpload={"Parts": parts})
        except BaseException:
            with contextlib.suppress(Exception):
                await self._s3.abort_multipart_upload(Bucket=self._bucket, Key=key,
                                                      UploadId=upload_id)
            raise

    @asynccontextmanager
    async def open(self, key: str, byte_range: slice | None = None) -> AsyncIterator[S3Reader]:
        self._check(key)
        kwargs: dict[str, Any] = {"Bucket": self._bucket, "Key": key}
        if byte_range is not None and not (byte_range.start is None and byte_range.stop is None):
            if byte_range.stop is not None and byte_range.stop <= (byte_range.start or 0):
                head = await self.head(key)
                raise RangeNotSatisfiable(f"empty range for {key}",
                                          headers={"Content-Range": f"bytes */{head.size}"})
            kwargs["Range"] = range_header(byte_range)
        resp = await _call(key, self._s3.get_object, **kwargs)
        body = resp["Body"]
        try:
            length = int(resp.get("ContentLength", 0))
            content_range = resp.get("ContentRange")
            if content_range:  # "bytes a-b/total"
                span, total = content_range.split(" ", 1)[1].split("/")
                start = int(span.split("-")[0])
                size = int(total)
            else:
                start, size = 0, length
            yield S3Reader(_info(key, resp, size), start, start + length, body)
        finally:
            body.close()

    async def read(self, key: str) -> tuple[ObjectInfo, bytes]:
        async with self.open(key) as reader:
            data = b"".join([c async for c in reader.iter_chunks()])
            return reader.info, data

    async def head(self, key: str) -> ObjectInfo:
        self._check(key)
        resp = await _call(key, self._s3.head_object, Bucket=self._bucket, Key=key)
        return _info(key, resp, int(resp.get("ContentLength", 0)))

    async def delete(self, key: str) -> None:
        self._check(key)
        await _call(key, self._s3.delete_object, Bucket=self._bucket, Key=key)

    async def list(self, prefix: str, start_after: str = "", limit: int = 1000) -> list[str]:
        keys: list[str] = []
        token: str | None = None
        while len(keys) < limit:
            kwargs: dict[str, Any] = {"Bucket": self._bucket, "Prefix": prefix,
                                      "MaxKeys": min(1000, limit - len(keys))}
            if token:
                kwargs["ContinuationToken"] = token
            elif start_after:
                kwargs["StartAfter"] = start_after
            resp = await _call(prefix, self._s3.list_objects_v2, **kwargs)
            keys += [o["Key"] for o in resp.get("Contents", [])]
            if not resp.get("IsTruncated"):
                break
            token = resp.get("NextContinuationToken")
        return keys[:limit]

    async def ping(self) -> None:
        await _call(self._bucket, self._s3.head_bucket, Bucket=self._bucket)
