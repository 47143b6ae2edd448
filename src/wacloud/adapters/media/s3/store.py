"""S3MediaStore: the media store port on S3 with boto3, whose blocking calls run in the store's
own small thread pool so that the event loop never waits on the network.

- Uploads stream the file from disk (a multipart upload above `part_size`, through one
  s3transfer manager shared by every upload of the store, which reads each part from the file
  as it sends it): never a whole file in memory, whatever its size.
- Keys name their content (see `wacloud.adapters.media.base`): a key already in the bucket is
  not uploaded again (one HEAD first), so a retried copy overwrites nothing.
- Reads stream the object's body in bounded chunks.
- A missing bucket is `MediaStoreMissing`, whose message says which and how to create it (one
  HEAD of the bucket per process tells it apart from a missing object).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import boto3
from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.config import Config
from botocore.exceptions import ClientError
from s3transfer.subscribers import BaseSubscriber

from wacloud.adapters.media.base import MediaNotFound, MediaStore, MediaStoreMissing, check_key

T = TypeVar("T")

CHUNK = 256 * 1024
# S3 refuses parts under 5 MiB (except the last); 8 MiB is boto3's default.
MIN_PART_SIZE = 5 * 1024 * 1024
PART_SIZE = 8 * 1024 * 1024
# Requests in flight across all uploads of one store (a small file is one request, a big one
# a part each): bounds connections; parts are read from the file as they are sent.
UPLOAD_CONCURRENCY = 10
# Threads for single requests (HEAD, GET, body reads, DELETE, presigning).
THREADS = 8
MAX_PRESIGN_S = 7 * 24 * 3600  # SigV4's limit


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


class _Done(BaseSubscriber):  # type: ignore[misc]
    """Settles an asyncio future when an s3transfer upload ends (done, failed or cancelled),
    so that no thread sits blocked waiting for it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, waiter: asyncio.Future[None]) -> None:
        self.loop = loop
        self.waiter = waiter

    def on_done(self, future: Any, **kwargs: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
            self.loop.call_soon_threadsafe(self._settle)

    def _settle(self) -> None:
        if not self.waiter.done():
            self.waiter.set_result(None)


class S3MediaStore(MediaStore):
    def __init__(self, bucket: str, prefix: str = "", *, part_size: int = PART_SIZE,
                 client: Any = None) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"S3 parts must be at least {MIN_PART_SIZE} bytes")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._threads = ThreadPoolExecutor(THREADS, thread_name_prefix="wacloud-s3")
        # s3v4 signs presigned URLs in every region; the pool holds a connection for each
        # thread and each part in flight.
        self.client: Any = client or boto3.session.Session().client("s3", config=Config(
            signature_version="s3v4", max_pool_connections=THREADS + UPLOAD_CONCURRENCY,
            retries={"mode": "standard"}))
        self._transfers = create_transfer_manager(self.client, TransferConfig(
            multipart_threshold=part_size, multipart_chunksize=part_size,
            max_concurrency=UPLOAD_CONCURRENCY, use_threads=True,
            preferred_transfer_client="classic"))
        self._bucket_seen = False

    # -- helpers ---------------------------------------------------------------------------

    def object_key(self, key: str) -> str:
        """The S3 key of a media key: under the prefix."""
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    async def _run(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._threads, functools.partial(call, *args, **kwargs))

    def missing(self) -> MediaStoreMissing:
        self._bucket_seen = False
        region = self.client.meta.region_name
        where = f" --region {region}" if region else ""
        return MediaStoreMissing(
            f"S3 bucket {self.bucket!r} (WACLOUD_MEDIA_URL) does not exist: create it with "
            f"`wacloud queues create`, which provisions the media bucket too, or "
            f"`aws s3 mb s3://{self.bucket}{where}`")

    async def _require_bucket(self) -> None:
        """One HEAD of the bucket per process: a HEAD of a missing object in a missing bucket
        answers a bare 404, which would read as 'no such object'."""
        if self._bucket_seen:
            return
        try:
            await self._run(self.client.head_bucket, Bucket=self.bucket)
        except ClientError as exc:
            if _status(exc) == 404:
                raise self.missing() from None
            raise
        self._bucket_seen = True

    async def _head(self, s3_key: str) -> dict[str, Any] | None:
        try:
            head: dict[str, Any] = await self._run(self.client.head_object, Bucket=self.bucket,
                                                   Key=s3_key)
        except ClientError as exc:
            if _status(exc) == 404:
                return None
            raise
        return head

    # -- the port ----------------------------------------------------------------------------

    async def put_file(self, key: str, path: Path, content_type: str | None = None) -> None:
        s3_key = self.object_key(key)
        await self._require_bucket()
        if await self._head(s3_key) is None:
            extra = {"ContentType": content_type} if content_type else {}
            loop = asyncio.get_running_loop()
            done: asyncio.Future[None] = loop.create_future()
            future = self._transfers.upload(str(path), self.bucket, s3_key, extra_args=extra,
                                            subscribers=[_Done(loop, done)])
            try:
                await done
                future.result()  # done: raises the upload's error, if any, without waiting
            except ClientError as exc:
                if _code(exc) == "NoSuchBucket":
                    raise self.missing() from None
                raise
            except BaseException:
                # Cancelled (or failed): stop sending parts; an unfinished multipart upload
                # is aborted by s3transfer and never becomes an object.
                future.cancel()
                raise
        # S3 answers a PUT (or the multipart completion) once the object is durable.
        await asyncio.to_thread(path.unlink, True)

    async def exists(self, key: str) -> bool:
        s3_key = self.object_key(key)
        await self._require_bucket()
        return await self._head(s3_key) is not None

    async def open(self, key: str) -> AsyncIterator[bytes]:
        s3_key = self.object_key(key)
        await self._require_bucket()
        try:
            answer = await self._run(self.client.get_object, Bucket=self.bucket, Key=s3_key)
        except ClientError as exc:
            if _code(exc) == "NoSuchBucket":
                raise self.missing() from None
            if _code(exc) == "NoSuchKey" or _status(exc) == 404:
                raise MediaNotFound("no media object under this key") from None
            raise
        body = answer["Body"]
        try:
            while chunk := await self._run(body.read, CHUNK):
                yield chunk
        finally:
            body.close()  # a reader that stops early gives the connection back

    async def delete(self, key: str) -> None:
        s3_key = self.object_key(key)
        await self._require_bucket()
        # S3 answers 204 for a key that is not there: deleting twice is fine.
        await self._run(self.client.delete_object, Bucket=self.bucket, Key=s3_key)

    async def presigned_url(self, key: str, expires_s: int) -> str:
        """A presigned GET URL valid for `expires_s` seconds (1 s to 7 days). It is signed
        locally, without asking S3 whether the object exists."""
        if not 1 <= expires_s <= MAX_PRESIGN_S:
            raise ValueError(f"expiry must be 1 to {MAX_PRESIGN_S} seconds")
        s3_key = self.object_key(key)
        # Signing may first resolve credentials (a profile file, an instance role): a thread.
        url: str = await self._run(self.client.generate_presigned_url, "get_object",
                                   Params={"Bucket": self.bucket, "Key": s3_key},
                                   ExpiresIn=expires_s)
        return url

    async def ensure_bucket(self) -> str:
        """Create the bucket in the client's region if it is missing (idempotent)."""
        region = self.client.meta.region_name
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        if region and region != "us-east-1":  # us-east-1 refuses an explicit constraint
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            await self._run(self.client.create_bucket, **kwargs)
        except ClientError as exc:
            if _code(exc) == "BucketAlreadyExists":
                raise MediaStoreMissing(
                    f"S3 bucket name {self.bucket!r} (WACLOUD_MEDIA_URL) belongs to another "
                    "account: choose another bucket name") from None
            if _code(exc) != "BucketAlreadyOwnedByYou":
                raise
        self._bucket_seen = True
        return self.bucket

    async def close(self) -> None:
        await asyncio.to_thread(self._transfers.shutdown)
        self._threads.shutdown(wait=False)
        with contextlib.suppress(AttributeError):  # botocore before 1.33 has no close()
            self.client.close()
