"""The production origin: an S3-compatible bucket through one long-lived aiobotocore client.

botocore's errors are translated here, once, into the project's error types.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
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
log = logging.getLogger("mediacdn.origin.s3")
PART_BYTES = 8 * 1024 * 1024
NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}
# A missing bucket or refused credentials is a broken origin, never a missing object: as a
# 404 it would be negative-cached by every edge as if each image were gone.
BROKEN_ORIGIN_CODES = {"NoSuchBucket", "AccessDenied", "InvalidAccessKeyId",
                       "SignatureDoesNotMatch", "AllAccessDisabled", "AccountProblem",
                       "InvalidBucketName", "403"}
THROTTLE_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded",
                  "ServiceUnavailable", "503", "InternalError", "500"}


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):  # never fail a shutdown
        await task


def translate(exc: BaseException, key: str) -> MediaCDNError:
    """botocore/aiohttp error -> domain error. Matches on codes and types, never on text."""
    if isinstance(exc, MediaCDNError):
        return exc
    if isinstance(exc, ClientError):
        code = _code(exc)
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in BROKEN_ORIGIN_CODES or status in (401, 403):
            return OriginUnavailable(f"S3 bucket unusable ({code or status}) for {key}")
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
        self._call_timeout = cfg.call_timeout

    async def _call(self, key: str, fn: Callable[..., Awaitable[T]], **kwargs: Any) -> T:
        """One S3 call, retries included, under one deadline: botocore's timeouts are per
        attempt, so a hung server would otherwise hold it for attempts x read_timeout."""
        try:
            async with asyncio.timeout(self._call_timeout):
                return await fn(**kwargs)
        except (TimeoutError, ClientError, BotoCoreError, OSError) as exc:
            raise translate(exc, key) from exc

    @classmethod
    @asynccontextmanager
    async def connect(cls, cfg: OriginConfig) -> AsyncIterator[S3Origin]:
        """Never fails because S3 is down: a service must start, serve what it can and
        report not-ready. A bucket that could not be made yet is retried in the background."""
        session = get_session()
        aio_cfg = AioConfig(
            connect_timeout=cfg.connect_timeout,
            read_timeout=cfg.read_timeout,
            # botocore's `max_attempts` counts retries (3 -> 4 tries); ours counts attempts.
            retries={"total_max_attempts": cfg.max_attempts, "mode": "standard"},
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
                task = asyncio.create_task(origin._ensure_bucket_forever())
                stack.push_async_callback(_cancel, task)
                # Made before the first request when S3 answers; when it is down or hung the
                # service starts anyway and the task keeps trying.
                await asyncio.wait({task}, timeout=cfg.connect_timeout + 1.0)
            yield origin

    async def _ensure_bucket_forever(self) -> None:
        pause = 1.0
        while True:
            try:
                await self._ensure_bucket()
                return
            except (OriginUnavailable, OriginTimeout) as exc:
                log.warning("S3 bucket %s not checked yet (%s); retrying in %g s",
                            self._bucket, exc, pause)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 30.0)

    async def _bucket_missing(self) -> bool:
        """True if the bucket does not exist; raises if S3 cannot say."""
        try:
            await self._call(self._bucket, self._s3.head_bucket, Bucket=self._bucket)
        except NotFound:  # HEAD answers carry no error code: a bare 404 here is the bucket
            return True
        except OriginUnavailable as exc:
            cause = exc.__cause__
            if isinstance(cause, ClientError) and _code(cause) == "NoSuchBucket":
                return True
            raise
        return False

    async def _ensure_bucket(self) -> None:
        if not await self._bucket_missing():
            return
        with contextlib.suppress(OriginUnavailable):  # a racing process may have made it
            await self._call(self._bucket, self._s3.create_bucket, Bucket=self._bucket)
        if await self._bucket_missing():
            raise OriginUnavailable(f"S3 bucket {self._bucket} could not be created")

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
            await self._call(key, self._s3.put_object, Body=body, **args)
            return
        first = await asyncio.to_thread(body.read, PART_BYTES)
        if len(first) < PART_BYTES:
            await self._call(key, self._s3.put_object, Body=first, **args)
        else:
            await self._put_multipart(key, body, first, args)

    async def create(self, key: str, body: bytes, content_type: str) -> bool:
        self._check(key)
        try:
            await self._s3.put_object(Bucket=self._bucket, Key=key, Body=body,
                                      ContentType=content_type, IfNoneMatch="*")
        except ClientError as exc:
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            # 412: someone created it first: the name is not ours. (409, a concurrent
            # conditional write in progress on AWS, is not a "no": it is raised, and the
            # caller asks for the same name again.)
            if status == 412:
                return False
            raise translate(exc, key) from exc
        except (TimeoutError, BotoCoreError, OSError) as exc:
            raise translate(exc, key) from exc
        return True

    async def _put_multipart(
        self, key: str, body: BinaryIO, first: bytes, args: dict[str, Any]
    ) -> None:
        # Parts are read from the spooled file one at a time: memory stays at one part.
        up = await self._call(key, self._s3.create_multipart_upload, **args)
        upload_id, parts, number, chunk = up["UploadId"], [], 1, first
        try:
            while chunk:
                r = await self._call(key, self._s3.upload_part, Bucket=self._bucket, Key=key,
                                UploadId=upload_id, PartNumber=number, Body=chunk)
                parts.append({"ETag": r["ETag"], "PartNumber": number})
                number += 1
                chunk = await asyncio.to_thread(body.read, PART_BYTES)
            await self._call(key, self._s3.complete_multipart_upload, Bucket=self._bucket, Key=key,
                        UploadId=upload_id, MultipartUpload={"Parts": parts})
        except BaseException:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self._call_timeout):
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
        resp = await self._call(key, self._s3.get_object, **kwargs)
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
        try:
            resp = await self._call(key, self._s3.head_object, Bucket=self._bucket, Key=key)
        except NotFound:
            # A HEAD's 404 has no body, so no code: it is the same for a missing key and a
            # missing bucket. Only the second is an outage; ask (misses only pay this).
            if await self._bucket_missing():
                raise OriginUnavailable(f"S3 bucket {self._bucket} does not exist") from None
            raise
        return _info(key, resp, int(resp.get("ContentLength", 0)))

    async def delete(self, key: str) -> None:
        self._check(key)
        await self._call(key, self._s3.delete_object, Bucket=self._bucket, Key=key)

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
            resp = await self._call(prefix, self._s3.list_objects_v2, **kwargs)
            keys += [o["Key"] for o in resp.get("Contents", [])]
            if not resp.get("IsTruncated"):
                break
            token = resp.get("NextContinuationToken")
        return keys[:limit]

    async def ping(self) -> None:
        if await self._bucket_missing():
            raise OriginUnavailable(f"S3 bucket {self._bucket} does not exist")
